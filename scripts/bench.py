"""The benchmark suite: every figure next to a baseline measured in the same run (``make bench``).

Usage: PYTHONPATH=src python scripts/bench.py [--sizes 10000,30000,100000] [--only pseudo,ddp,evaluate,train,extract]
       [--out benchmarks/results.json] [--reference DIR]

Measurements (benchmarks/README.md explains each):
  pseudo    pseudo-labels (kNN + sparse k-reciprocal Jaccard + DBSCAN) on N synthetic 512-d features against a
            straightforward dense implementation (N x N distances, dense Jaccard, DBSCAN on the dense matrix):
            time, peak memory, adjusted Rand index between the two label sets. Also, from the same exact kNN
            ranks: the graph part (Jaccard + DBSCAN) of ours against the code before issue 18 (clustering.py
            at BEFORE_REV, loaded from git: all-pairs Jaccard + scikit-learn DBSCAN) and against the pruned
            path as first written (PREVIOUS_REV), the approximate searches (IVF; bfloat16 candidates re-scored
            in float32) with ARI against exact, and, with --reference DIR (a folder holding Cluster-Contrast's
            faiss_rerank.py and faiss_utils.py, from a clone outside this repository) at N <= 20k, the
            reference pipeline: compute_jaccard_distance (CPU faiss) + scikit-learn DBSCAN.
  ddp       the sharded kNN behind the pseudo-labels with 1 vs 2 gloo processes (one thread each).
  evaluate  evaluate_rank at Market-1501 test scale against a per-query loop (scripts/bench_evaluate.py).
  train     Stage I training steps/s with the tiny backbone: Trainer.fit on the LightningModule against a
            plain PyTorch loop doing the same forward, loss, backward, Adam step and memory update.
  extract   feature-extraction images/s of the demo-size encoder, fp32 against bf16 autocast.

Each measurement runs in its own child process, so that its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIM = 512
CLUSTERING = {"eps": 0.6, "min_samples": 4, "k1": 30, "k2": 6}  # the Market-1501 settings of conf/ums.yaml
DENSE_MAX_N = 30_000
REFERENCE_MAX_N = 20_000  # Cluster-Contrast's code holds two dense N x N float32 matrices (3.2 GB at 20k)
# The code before issue 18 (graph part: all-pairs Jaccard, scikit-learn DBSCAN), measured from git.
BEFORE_REV = "03d605d"
# The first pruned path of issue 18 (two candidate products, scipy's minimum over every candidate).
PREVIOUS_REV = "78eb567"
APPROXIMATE = {"index": "ivf", "nprobe": 16}
BFLOAT16 = {"index": "bf16"}  # one N x N float32 matrix is 3.6 GB here; 100k would need 40 GB per matrix
THREADS = 2
REFERENCE_DIR: str | None = None  # --reference


# ------------------------------------------------------------------ shared helpers


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def synthetic_features(n: int, seed: int = 0):
    """Identities of 2-16 images (mean ~9) around random centres, 5% unrelated images; L2-normalised float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    outliers = n // 20
    sizes = []
    while sum(sizes) < n - outliers:
        sizes.append(int(rng.integers(2, 17)))
    sizes[-1] -= sum(sizes) - (n - outliers)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.standard_normal((len(sizes), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Same-identity cosine ~0.65, different identities ~0: a separable but not trivial neighbourhood graph.
    noise = rng.standard_normal((n - outliers, DIM), dtype=np.float32) * np.float32(0.032)
    features = np.concatenate([centres[owner] + noise, rng.standard_normal((outliers, DIM), dtype=np.float32)])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    order = rng.permutation(n)
    return np.ascontiguousarray(features[order]), np.concatenate([owner, -1 - np.arange(outliers)])[order]


# ------------------------------------------------------------------ (a) pseudo-labels


def dense_pseudo_labels(features, k1: int, k2: int, eps: float, min_samples: int):
    """The straightforward dense implementation (the usual reference code's shape): N x N matrices throughout."""
    import numpy as np
    from sklearn.cluster import DBSCAN

    n = len(features)
    dist = features @ features.T  # squared distance of unit vectors, built in place: 2 - 2 cos
    dist *= -2.0
    dist += 2.0
    ranks = np.argpartition(dist, k1, axis=1)[:, :k1]
    ranks = np.take_along_axis(ranks, np.argsort(np.take_along_axis(dist, ranks, axis=1), axis=1), axis=1)

    def reciprocal(i: int, k: int):
        forward = ranks[i, : k + 1]
        return forward[(ranks[forward, : k + 1] == i).any(axis=1)]

    weights = np.zeros((n, n), dtype=np.float32)
    half = int(np.around(k1 / 2))
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = [r]
        for c in r:
            h = reciprocal(c, half)
            if len(np.intersect1d(h, r)) > 2.0 / 3.0 * len(h):
                expansion.append(h)
        expansion = np.unique(np.concatenate(expansion))
        w = np.exp(-dist[i, expansion])
        weights[i, expansion] = w / w.sum()
    del dist
    if k2 > 1:
        expanded = np.zeros_like(weights)
        for i in range(n):
            expanded[i] = weights[ranks[i, :k2]].mean(axis=0)
        weights = expanded
        del expanded
    rows, columns = np.nonzero(weights)
    by_column = np.argsort(columns, kind="stable")
    starts = np.searchsorted(columns[by_column], np.arange(n + 1))
    holders = [rows[by_column[starts[j] : starts[j + 1]]] for j in range(n)]  # rows with weight in column j
    jaccard = np.empty((n, n), dtype=np.float32)
    for i in range(n):
        overlap = np.zeros(n, dtype=np.float32)
        for j in np.flatnonzero(weights[i]):
            overlap[holders[j]] += np.minimum(weights[i, j], weights[holders[j], j])
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    np.clip(jaccard, 0.0, None, out=jaccard)
    del weights
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(jaccard)


def _clustering_before(rev: str = BEFORE_REV):
    """clustering.py as it was at ``rev``, imported from a temporary file (git show)."""
    import importlib.util

    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/itkm_lightning/clustering.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"clustering_{rev}.py"
    path.write_text(source)
    # That file imported DBSCAN from its sibling module of the time, now clustering/dbscan.py (unchanged since).
    from itkm_lightning.clustering import dbscan

    sys.modules.setdefault("itkm_lightning.sparse_dbscan", dbscan)
    spec = importlib.util.spec_from_file_location(f"clustering_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def child_pseudo(n: int, method: str, labels_out: str, ranks_path: str | None = None) -> dict:
    """One pseudo-label pipeline on the synthetic features; the graph part timed from saved exact ranks.

    method: "sparse" (ours: exact kNN, saved to ranks_path, then the graph part), "before" / "previous" (the
    graph part of the code at BEFORE_REV / PREVIOUS_REV from the saved ranks), "approximate" / "bf16" (ours with
    the IVF index / bfloat16 candidates re-scored in float32), "dense", "reference" (Cluster-Contrast, with its
    own CPU faiss search). Every child records the machine's load average as it starts.
    """
    import numpy as np

    from itkm_lightning.clustering import cluster, knn

    set_threads(THREADS)
    features, _ = synthetic_features(n)
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    knn_s = graph_cpu_start = None
    if method == "sparse":
        knn_start = time.perf_counter()
        _, ranks = knn(features, features, CLUSTERING["k1"])
        knn_s = time.perf_counter() - knn_start
        np.save(ranks_path, ranks)
        graph_start, graph_cpu_start = time.perf_counter(), time.process_time()
        labels = cluster(features, ranks=ranks, **CLUSTERING)
    elif method in ("before", "previous"):
        before = _clustering_before(BEFORE_REV if method == "before" else PREVIOUS_REV)
        ranks = np.load(ranks_path)
        start, cpu_start = time.perf_counter(), time.process_time()
        graph_start, graph_cpu_start = start, cpu_start
        labels = before.cluster(features, ranks=ranks, **CLUSTERING)
    elif method in ("approximate", "bf16"):
        knn_start = time.perf_counter()
        _, ranks = knn(features, features, CLUSTERING["k1"], **(APPROXIMATE if method == "approximate" else BFLOAT16))
        knn_s = time.perf_counter() - knn_start
        graph_start, graph_cpu_start = time.perf_counter(), time.process_time()
        labels = cluster(features, ranks=ranks, **CLUSTERING)
    elif method == "reference":
        graph_start = None
        labels = reference_pseudo_labels(features, **CLUSTERING)
    else:
        graph_start = None
        labels = dense_pseudo_labels(features, **CLUSTERING)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    np.save(labels_out, labels)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "knn_seconds": knn_s,
            "graph_seconds": None if graph_start is None else time.perf_counter() - graph_start,
            "graph_cpu_seconds": None if graph_cpu_start is None else time.process_time() - graph_cpu_start,
            "load_average": load, "peak_gib": peak_rss_gib(), "clusters": int(labels.max() + 1),
            "outliers": int((labels < 0).sum())}


def reference_pseudo_labels(features, k1: int, k2: int, eps: float, min_samples: int):
    """Cluster-Contrast's pipeline: compute_jaccard_distance (search_option=3: CPU faiss) + sklearn DBSCAN."""
    import importlib
    import shutil

    import torch
    from sklearn.cluster import DBSCAN

    folder = Path(os.environ["ITKM_BENCH_REFERENCE"])
    package = Path(tempfile.mkdtemp()) / "cc_reference"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("faiss_rerank.py", "faiss_utils.py"):
        shutil.copy(folder / name, package / name)
    sys.path.insert(0, str(package.parent))
    compute_jaccard_distance = importlib.import_module("cc_reference.faiss_rerank").compute_jaccard_distance
    distances = compute_jaccard_distance(torch.from_numpy(features), k1=k1, k2=k2, print_flag=False,
                                         search_option=3)
    # As in Cluster-Contrast's examples/cluster_contrast_train_usl.py.
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(distances)


# ------------------------------------------------------------------ (a') sharded kNN, 1 vs 2 processes


def _ddp_worker(rank: int, world_size: int, n: int, init_file: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from itkm_lightning.clustering.blocks import cluster_blocks_distributed
    from itkm_lightning.config import ClusteringConfig
    from itkm_lightning.distributed import sharded_knn

    set_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    features = torch.from_numpy(synthetic_features(n)[0])
    blocks = torch.zeros(n, dtype=torch.long).numpy()
    dist.barrier()
    start = time.perf_counter()
    sharded_knn(features, CLUSTERING["k1"])
    dist.barrier()
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    labels = cluster_blocks_distributed(features, blocks, ClusteringConfig(**CLUSTERING))
    dist.barrier()
    total_s = time.perf_counter() - start
    if rank == 0:
        from itkm_lightning.fileio import atomic_write_text

        atomic_write_text(out, json.dumps({"knn_seconds": knn_s, "pseudo_label_seconds": total_s,
                                           "clusters": int(labels.max() + 1)}))
    dist.destroy_process_group()


def child_ddp(n: int, world_size: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.json"
        mp.spawn(_ddp_worker, args=(world_size, n, f"{tmp}/pg", out), nprocs=world_size, join=True)
        return json.loads(Path(out).read_text())


# ------------------------------------------------------------------ (b) evaluate_rank


def child_evaluate(loop_queries: int = 300) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_evaluate import NUM_QUERY, best_time, loop_market, make_market_scale

    from itkm_lightning.evaluation import evaluate_rank

    set_threads(1)
    data = make_market_scale(0)
    vector_s, result = best_time(lambda: evaluate_rank(**data, protocol="market"), 3)
    subset = {k: (v[:loop_queries] if k in ("distmat", "q_pids", "q_camids") else v) for k, v in data.items()}
    loop_subset_s, loop_result = best_time(lambda: loop_market(**subset), 1)
    check = evaluate_rank(**subset, protocol="market")
    agree = bool(np.allclose(check["cmc"], loop_result["cmc"]) and abs(check["mAP"] - loop_result["mAP"]) < 1e-9)
    return {"seconds": vector_s, "loop_seconds": loop_subset_s * NUM_QUERY / loop_queries,
            "loop_measured_queries": loop_queries, "metrics_agree_with_loop": agree, "peak_gib": peak_rss_gib()}


# ------------------------------------------------------------------ (c) training step


def _smoke_backbone():
    import yaml

    from itkm_lightning.models.backbone_config import BackboneConfig

    return BackboneConfig(**yaml.safe_load((REPO / "conf/smoke.yaml").read_text())["model"]["backbone"])


def _demo_backbone():
    import yaml

    from itkm_lightning.models.backbone_config import BackboneConfig

    return BackboneConfig(**yaml.safe_load((REPO / "conf/demo.yaml").read_text())["model"]["backbone"])


def child_train(steps: int = 40, warmup: int = 5, rounds: int = 4) -> dict:
    import lightning as L
    import torch
    import torch.nn.functional as F

    from itkm_lightning.config import OptimConfig
    from itkm_lightning.models.losses import cluster_nce
    from itkm_lightning.stages.stage1 import Stage1

    set_threads(THREADS)
    backbone = _smoke_backbone()
    clusters, per_cluster, batch_clusters = 64, 8, 16  # P x K = 16 x 4 = 64 images per step
    h, w = backbone.image_size

    class BenchStage1(Stage1):
        def configure_callbacks(self):
            return []  # the memory is filled below: no clustering in a throughput figure

    def make_model():
        torch.manual_seed(0)
        model = BenchStage1(backbone=backbone, optim=OptimConfig(lr=1e-4, lr_new=1e-4, warmup_epochs=0))
        n = clusters * per_cluster
        model.memory.reset(F.normalize(torch.randn(n, model.encoder.feature_dim), dim=1),
                           torch.arange(n) // per_cluster, torch.arange(n) // per_cluster % 3)
        return model

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(warmup + steps):
        labels = torch.randperm(clusters, generator=generator)[:batch_clusters].repeat_interleave(4)
        batches.append({"image": torch.randn(len(labels), 3, h, w, generator=generator), "pseudo_label": labels,
                        "scenario": labels % 3, "group": torch.zeros_like(labels)})

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_end(self, trainer, module):
            self.seconds = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])

    def lightning_run() -> tuple[float, float]:
        model, clock = make_model(), Clock()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, max_epochs=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(model, train_dataloaders=loader)
        return clock.seconds

    def plain_run() -> tuple[float, float]:
        model = make_model()
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                     weight_decay=5e-4)
        start = (0.0, 0.0)
        for i, batch in enumerate(batches):
            if i == warmup:
                start = (time.perf_counter(), time.process_time())
            out = model.encoder(batch["image"], batch["scenario"], batch["group"])
            f = F.normalize(out.f, dim=1)
            logits = model.memory.logits(f, model.memory.blocks[batch["pseudo_label"]], model.temperature)
            loss = cluster_nce(logits, batch["pseudo_label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.memory.update(f.detach(), batch["pseudo_label"])
        return time.perf_counter() - start[0], time.process_time() - start[1]

    plain, lightning = [], []
    for _ in range(rounds):  # interleaved, best of each: the machine is shared
        plain.append(plain_run())
        lightning.append(lightning_run())
    # CPU seconds (process_time) are the figure compared: wall time on this shared machine swings by 2x with the
    # other processes' load, CPU time much less; both are kept.
    return {"steps_per_second": steps / min(t[1] for t in lightning),
            "plain_steps_per_second": steps / min(t[1] for t in plain),
            "wall_steps_per_second": steps / min(t[0] for t in lightning),
            "plain_wall_steps_per_second": steps / min(t[0] for t in plain),
            "clock": "CPU time (process_time), best of interleaved rounds", "rounds": rounds,
            "images_per_step": batch_clusters * 4, "steps": steps, "peak_gib": peak_rss_gib()}


# ------------------------------------------------------------------ (d) feature extraction


def child_extract(batches: int = 8, batch_size: int = 64, rounds: int = 2) -> dict:
    import torch
    import torch.nn.functional as F

    from itkm_lightning.models.clip_image import CLIPImageEncoder

    set_threads(THREADS)
    backbone = _demo_backbone()
    torch.manual_seed(0)
    encoder = CLIPImageEncoder(backbone).eval()
    h, w = backbone.image_size
    images = torch.randn(batch_size, 3, h, w)
    scenario, group = torch.arange(batch_size) % 3, torch.zeros(batch_size, dtype=torch.long)

    @torch.no_grad()
    def run(bf16: bool) -> tuple[float, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoder(images, scenario, group)  # warm-up
            start = time.perf_counter()
            for _ in range(batches):
                f = encoder(images, scenario, group).f
        return time.perf_counter() - start, F.normalize(f.float(), dim=1)

    fp32, bf16 = [], []
    for _ in range(rounds):
        seconds, f32 = run(False)
        fp32.append(seconds)
        seconds, fb = run(True)
        bf16.append(seconds)
    images_total = batches * batch_size
    return {"images_per_second_bf16": images_total / min(bf16), "images_per_second_fp32": images_total / min(fp32),
            "min_cosine_fp32_vs_bf16": float((f32 * fb).sum(dim=1).min()), "image_size": [h, w],
            "peak_gib": peak_rss_gib()}


CHILDREN = {"pseudo": child_pseudo, "ddp": child_ddp, "evaluate": child_evaluate, "train": child_train,
            "extract": child_extract}


# ------------------------------------------------------------------ parent: run, compare, report


def run_child(name: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--child-args", json.dumps(kwargs)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_WAIT_POLICY="PASSIVE")
    if REFERENCE_DIR:
        env["ITKM_BENCH_REFERENCE"] = REFERENCE_DIR
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_seconds": time.perf_counter() - start}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_pseudo(sizes: list[int], reference: str | None) -> list[dict]:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def labels(name: str, n: int):
            return np.load(f"{tmp}/{name}{n}.npy")

        for n in sizes:
            print(f"pseudo-labels N={n}: sparse (ours) ...", flush=True)
            ranks_path = f"{tmp}/ranks{n}.npy"
            sparse = run_child("pseudo", n=n, method="sparse", labels_out=f"{tmp}/sparse{n}.npy", ranks_path=ranks_path)
            row = {"n": n, "dim": DIM, **CLUSTERING, "sparse": sparse}
            if "error" not in sparse:
                for method, rev in (("previous", PREVIOUS_REV), ("before", BEFORE_REV)):
                    print(f"pseudo-labels N={n}: graph part of the code at {rev} ...", flush=True)
                    row[method] = run_child("pseudo", n=n, method=method, labels_out=f"{tmp}/{method}{n}.npy",
                                            ranks_path=ranks_path)
                    if "error" not in row[method]:
                        row[f"ari_sparse_vs_{method}"] = float(adjusted_rand_score(labels(method, n),
                                                                                   labels("sparse", n)))
                        row[f"points_differing_from_{method}"] = int((labels(method, n) != labels("sparse", n)).sum())
                for method, options in (("approximate", APPROXIMATE), ("bf16", BFLOAT16)):
                    print(f"pseudo-labels N={n}: approximate kNN {options} ...", flush=True)
                    row[method] = run_child("pseudo", n=n, method=method, labels_out=f"{tmp}/{method}{n}.npy")
                    if "error" not in row[method]:
                        row[f"ari_{method}_vs_exact"] = float(adjusted_rand_score(labels("sparse", n),
                                                                                  labels(method, n)))
                        row[f"points_differing_{method}_vs_exact"] = int((labels(method, n) != labels("sparse", n)).sum())
            if reference and n <= REFERENCE_MAX_N:
                print(f"pseudo-labels N={n}: Cluster-Contrast reference ...", flush=True)
                row["reference"] = run_child("pseudo", n=n, method="reference", labels_out=f"{tmp}/reference{n}.npy")
                if "error" not in sparse and "error" not in row["reference"]:
                    row["ari_sparse_vs_reference"] = float(adjusted_rand_score(labels("reference", n),
                                                                               labels("sparse", n)))
            if n > DENSE_MAX_N:
                row["dense"] = {"not_run": f"needs ~{n * n * 12 / 1e9:.0f} GB: the N x N float32 distances "
                                           f"({n * n * 4 / 1e9:.0f} GB) and argpartition's N x N int64 indices; "
                                           f"this machine has 23 GB"}
            else:
                print(f"pseudo-labels N={n}: dense baseline ...", flush=True)
                row["dense"] = run_child("pseudo", n=n, method="dense", labels_out=f"{tmp}/dense{n}.npy")
                if "error" not in sparse and "error" not in row["dense"]:
                    row["ari_sparse_vs_dense"] = float(adjusted_rand_score(labels("sparse", n), labels("dense", n)))
                    row["speedup"] = row["dense"]["seconds"] / sparse["seconds"]
            if "error" not in sparse:  # labels against the generating identities, for orientation
                _, truth = synthetic_features(n)
                row["ari_sparse_vs_truth"] = float(adjusted_rand_score(truth, labels("sparse", n)))
            rows.append(row)
    return rows


def bench_ddp(n: int) -> dict:
    print(f"sharded kNN N={n}: 1 and 2 processes ...", flush=True)
    return {"n": n, "threads_per_process": 1, "1": run_child("ddp", n=n, world_size=1),
            "2": run_child("ddp", n=n, world_size=2)}


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _exactness_rows(row: dict):
    """(title, ours, baseline, note) of one size's graph-part and approximate-search comparisons (ours None: error)."""
    s, n = row["sparse"], row["n"]
    for method, rev in (("previous", PREVIOUS_REV), ("before", BEFORE_REV)):
        other = row.get(method)
        if other and "seconds" in other:
            yield (f"graph part N={n} (s) vs code at {rev}", s["graph_seconds"], other["seconds"],
                   f"ARI {row[f'ari_sparse_vs_{method}']:.4f}, {row[f'points_differing_from_{method}']} labels differ; "
                   f"CPU {s['graph_cpu_seconds']:.1f} vs {other['cpu_seconds']:.1f} s; load "
                   f"{s['load_average']:.1f} / {other['load_average']:.1f}")
        elif other:
            yield f"graph part N={n} vs code at {rev}", None, None, other.get("error", "")
    for method, name in (("approximate", "IVF"), ("bf16", "bf16 + f32")):
        other = row.get(method)
        if other and "seconds" in other:
            yield (f"pseudo-labels N={n} (s): {name} vs exact kNN", other["seconds"], s["seconds"],
                   f"ARI vs exact {row[f'ari_{method}_vs_exact']:.4f} ({row[f'points_differing_{method}_vs_exact']} "
                   f"labels differ); kNN {other['knn_seconds']:.1f} vs {s['knn_seconds']:.1f} s")
        elif other:
            yield f"pseudo-labels N={n}: {name}", None, None, other.get("error", "")


def print_table(results: dict) -> None:
    lines = [f"{'measurement':<50} {'ours':>10} {'baseline':>10} {'ratio':>8}", "-" * 81]

    def line(name, ours, base, r, extra=""):
        lines.append(f"{name:<50} {ours:>10} {base:>10} {r:>8}  {extra}")

    for row in results.get("pseudo_labels", []):
        s, d, n = row["sparse"], row["dense"], row["n"]
        if "error" in s:
            line(f"pseudo-labels N={n} time", "error", "", "", s["error"])
            continue
        if "seconds" in d:
            line(f"pseudo-labels N={n} time (s) vs dense", f"{s['seconds']:.1f}", f"{d['seconds']:.1f}",
                 ratio(d["seconds"], s["seconds"]), f"ARI vs dense {row['ari_sparse_vs_dense']:.4f}")
            line(f"pseudo-labels N={n} peak memory (GiB)", f"{s['peak_gib']:.2f}", f"{d['peak_gib']:.2f}",
                 ratio(d["peak_gib"], s["peak_gib"]))
        else:
            line(f"pseudo-labels N={n} time (s)", f"{s['seconds']:.1f}", "not run", "-",
                 d.get("not_run", d.get("error", "")))
            line(f"pseudo-labels N={n} peak memory (GiB)", f"{s['peak_gib']:.2f}", "-", "-")
        ref = row.get("reference")
        if ref and "seconds" in ref:
            line(f"pseudo-labels N={n} time (s) vs Cluster-Contrast", f"{s['seconds']:.1f}", f"{ref['seconds']:.1f}",
                 ratio(ref["seconds"], s["seconds"]), f"ARI vs reference {row['ari_sparse_vs_reference']:.4f}")
        elif ref:
            line(f"pseudo-labels N={n} vs Cluster-Contrast", "error", "", "", ref.get("error", ""))
        for title, ours, base, note in _exactness_rows(row):
            if ours is None:
                line(title, "error", "", "", note)
            else:
                line(title, f"{ours:.1f}", f"{base:.1f}", ratio(base, ours), note)
    ddp = results.get("sharded_knn")
    if ddp and "knn_seconds" in ddp["1"] and "knn_seconds" in ddp["2"]:
        line(f"sharded kNN N={ddp['n']} (s), 2 vs 1 process", f"{ddp['2']['knn_seconds']:.1f}",
             f"{ddp['1']['knn_seconds']:.1f}", ratio(ddp["1"]["knn_seconds"], ddp["2"]["knn_seconds"]))
        line(f"pseudo-label step N={ddp['n']} (s), 2 vs 1", f"{ddp['2']['pseudo_label_seconds']:.1f}",
             f"{ddp['1']['pseudo_label_seconds']:.1f}",
             ratio(ddp["1"]["pseudo_label_seconds"], ddp["2"]["pseudo_label_seconds"]))
    ev = results.get("evaluate_rank")
    if ev and "seconds" in ev:
        line("evaluate_rank Market scale (s) vs loop", f"{ev['seconds']:.2f}", f"{ev['loop_seconds']:.2f}",
             ratio(ev["loop_seconds"], ev["seconds"]), f"metrics agree: {ev['metrics_agree_with_loop']}")
    tr = results.get("train_step")
    if tr and "steps_per_second" in tr:
        line("Stage I steps/s: Lightning vs plain loop", f"{tr['steps_per_second']:.2f}",
             f"{tr['plain_steps_per_second']:.2f}", ratio(tr["steps_per_second"], tr["plain_steps_per_second"]),
             f"overhead {100 * (tr['plain_steps_per_second'] / tr['steps_per_second'] - 1):.1f}% (CPU time; "
             f"wall: {tr['wall_steps_per_second']:.2f} vs {tr['plain_wall_steps_per_second']:.2f})")
    ex = results.get("extraction")
    if ex and "images_per_second_bf16" in ex:
        line("extraction images/s: bf16 vs fp32", f"{ex['images_per_second_bf16']:.0f}",
             f"{ex['images_per_second_fp32']:.0f}", ratio(ex["images_per_second_bf16"], ex["images_per_second_fp32"]),
             f"min cosine {ex['min_cosine_fp32_vs_bf16']:.4f}")
    for name in ("sharded_knn", "evaluate_rank", "train_step", "extraction"):
        part = results.get(name) or {}
        for value in (part, *(v for v in part.values() if isinstance(v, dict))):
            if "error" in value:
                line(name, "error", "", "", value["error"])
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "10000,30000,100000"),
                        help="feature counts for the pseudo-label figures (env BENCH_SIZES)")
    parser.add_argument("--ddp-size", type=int, default=None, help="N for 1 vs 2 processes (default: min(30000, max size))")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", "pseudo,ddp,evaluate,train,extract"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
    parser.add_argument("--reference", default=os.environ.get("BENCH_REFERENCE"),
                        help="folder with Cluster-Contrast's faiss_rerank.py + faiss_utils.py (env BENCH_REFERENCE)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global REFERENCE_DIR
    REFERENCE_DIR = args.reference
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.child_args))))
        return

    import torch

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    only = set(args.only.split(","))
    results: dict = {"machine": {"cpus": os.cpu_count(), "threads": THREADS, "processor": platform.processor(),
                                 "python": platform.python_version(), "torch": torch.__version__,
                                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if "pseudo" in only:
        results["pseudo_labels"] = bench_pseudo(sizes, args.reference)
    if "ddp" in only:
        results["sharded_knn"] = bench_ddp(args.ddp_size or min(30_000, max(sizes)))
    if "evaluate" in only:
        print("evaluate_rank at Market scale ...", flush=True)
        results["evaluate_rank"] = run_child("evaluate")
    if "train" in only:
        print("Stage I training steps ...", flush=True)
        results["train_step"] = run_child("train")
    if "extract" in only:
        print("feature extraction fp32 / bf16 ...", flush=True)
        results["extraction"] = run_child("extract")
    from itkm_lightning.fileio import atomic_write_json

    out = Path(args.out)
    atomic_write_json(out, results)
    print_table(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
