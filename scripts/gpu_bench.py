"""GPU measurements for the cost model of conf/ums.yaml (benchmarks/README.md, "Cost model"); one run, < 8 min.

Usage (on a GPU machine, repository root):
    PYTHONPATH=src python scripts/gpu_bench.py [--out gpu_results.json] [--sizes 50000,100000]
    PYTHONPATH=src python scripts/gpu_bench.py --smoke      # tiny, on CPU: checks that the script runs

Every figure is printed beside its baseline from the same run:
  train    Stage I steps of the ViT-B/16 encoder (random init, the architecture of
           openai/clip-vit-base-patch16, 256x128, P x K = 16 x 4 = 64 images), images/s:
           Lightning Trainer.fit against a plain PyTorch loop doing the same work, each in bf16 autocast
           and in fp32.
  extract  feature extraction images/s (batches of 256, eval, no grad): bf16 autocast against fp32.
  pseudo   the whole pseudo-label step on N synthetic 512-d features (scripts/bench.py's workload):
           exact kNN on the GPU (torch, or faiss-gpu when installed), then the sparse Jaccard graph +
           DBSCAN on the CPU, against the same kNN on the CPU (faiss IndexFlatIP) for the smallest N.
No network access is needed (no pretrained weights: throughput does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench import CLUSTERING, synthetic_features  # noqa: E402

VIT_B16 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
           "patch_size": 16}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_config(smoke: bool):
    from itkm_lightning.models.backbone_config import BackboneConfig

    if smoke:
        return BackboneConfig(pretrained=False, image_size=(64, 32), projection_dim=16, vision=TINY,
                              text={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "intermediate_size": 64})
    return BackboneConfig(pretrained=False, image_size=(256, 128), projection_dim=512, vision=VIT_B16)


def bench_train(device: torch.device, smoke: bool, steps: int, warmup: int) -> dict:
    import lightning as L

    from itkm_lightning.config import OptimConfig
    from itkm_lightning.models.losses import cluster_nce
    from itkm_lightning.stages.stage1 import Stage1

    backbone = backbone_config(smoke)
    clusters, per_cluster, batch_clusters, instances = 256, 8, 16, 4
    h, w = backbone.image_size

    class BenchStage1(Stage1):
        def configure_callbacks(self):
            return []  # memory filled below: no clustering inside a throughput figure

    def make_model():
        torch.manual_seed(0)
        model = BenchStage1(backbone=backbone, optim=OptimConfig(lr=1e-5, lr_new=1e-4, warmup_epochs=0))
        n = clusters * per_cluster
        model.memory.reset(F.normalize(torch.randn(n, model.encoder.feature_dim), dim=1),
                           torch.arange(n) // per_cluster, torch.arange(n) // per_cluster % 3)
        return model

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(warmup + steps):
        labels = torch.randperm(clusters, generator=generator)[:batch_clusters].repeat_interleave(instances)
        batches.append({"image": torch.randn(len(labels), 3, h, w, generator=generator), "pseudo_label": labels,
                        "scenario": labels % 3, "group": torch.zeros_like(labels)})
    images_per_step = batch_clusters * instances

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            sync(device)
            self.seconds = time.perf_counter() - self.start

    def lightning_run(bf16: bool) -> float:
        model, clock = make_model(), Clock()
        trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=warmup + steps, max_epochs=1,
                            precision="bf16-mixed" if bf16 else "32-true", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[clock])
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, pin_memory=device.type == "cuda")
        trainer.fit(model, train_dataloaders=loader)
        return clock.seconds

    def plain_run(bf16: bool) -> float:
        model = make_model().to(device)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=5e-4)
        start = 0.0
        for i, batch in enumerate(batches):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model.encoder(batch["image"], batch["scenario"], batch["group"])
                f = F.normalize(out.f.float(), dim=1)
                logits = model.memory.logits(f, model.memory.blocks[batch["pseudo_label"]], model.temperature)
                loss = cluster_nce(logits, batch["pseudo_label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.memory.update(f.detach(), batch["pseudo_label"])
        sync(device)
        return time.perf_counter() - start

    result = {"images_per_step": images_per_step, "steps": steps}
    for bf16 in (True, False):
        name = "bf16" if bf16 else "fp32"
        plain, lightning = plain_run(bf16), lightning_run(bf16)
        result[f"plain_{name}_images_per_second"] = steps * images_per_step / plain
        result[f"lightning_{name}_images_per_second"] = steps * images_per_step / lightning
        print(f"train {name}: Lightning {result[f'lightning_{name}_images_per_second']:.0f} images/s, "
              f"plain loop {result[f'plain_{name}_images_per_second']:.0f}", flush=True)
    return result


def bench_extract(device: torch.device, smoke: bool, batches: int) -> dict:
    from itkm_lightning.models.clip_image import CLIPImageEncoder

    backbone = backbone_config(smoke)
    torch.manual_seed(0)
    encoder = CLIPImageEncoder(backbone).to(device).eval()
    h, w = backbone.image_size
    batch = 256
    images = torch.randn(batch, 3, h, w, device=device)
    scenario, group = torch.arange(batch, device=device) % 3, torch.zeros(batch, dtype=torch.long, device=device)
    result = {"batch": batch}
    with torch.no_grad():
        for bf16 in (True, False):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                encoder(images, scenario, group)
                sync(device)
                start = time.perf_counter()
                for _ in range(batches):
                    encoder(images, scenario, group)
                sync(device)
            result[f"{'bf16' if bf16 else 'fp32'}_images_per_second"] = batches * batch / (time.perf_counter() - start)
    print(f"extract: bf16 {result['bf16_images_per_second']:.0f} images/s, fp32 {result['fp32_images_per_second']:.0f}",
          flush=True)
    return result


def bench_pseudo(device: torch.device, sizes: list[int]) -> list[dict]:
    from itkm_lightning.clustering import cluster, knn
    from itkm_lightning.clustering.knn_search import _faiss_available

    rows = []
    for n in sizes:
        features, _ = synthetic_features(n)
        on_device = torch.from_numpy(features).to(device)
        sync(device)
        start = time.perf_counter()
        backend = "auto" if device.type == "cuda" else "torch"  # faiss-gpu when present, else torch on the GPU
        _, ranks = knn(on_device, on_device, CLUSTERING["k1"], backend=backend)
        knn_s = time.perf_counter() - start
        start = time.perf_counter()
        labels = cluster(features, ranks=ranks, **CLUSTERING)
        row = {"n": n, "knn_device_seconds": knn_s, "graph_cpu_seconds": time.perf_counter() - start,
               "clusters": int(labels.max() + 1), "cpu_threads": torch.get_num_threads()}
        if n == sizes[0] and _faiss_available():
            start = time.perf_counter()
            _, cpu_ranks = knn(features, features, CLUSTERING["k1"], backend="faiss")
            row["knn_cpu_faiss_seconds"] = time.perf_counter() - start
            row["ranks_equal_fraction"] = float((cpu_ranks == ranks).mean())
        print(f"pseudo N={n}: kNN {knn_s:.1f} s on {device.type}"
              + (f" (CPU faiss {row['knn_cpu_faiss_seconds']:.1f} s)" if "knn_cpu_faiss_seconds" in row else "")
              + f", graph + DBSCAN {row['graph_cpu_seconds']:.1f} s on CPU", flush=True)
        rows.append(row)
        del on_device
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.json"))
    parser.add_argument("--sizes", default="50000,100000")
    parser.add_argument("--only", default="train,extract,pseudo")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes on CPU: checks the script runs")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    only = set(args.only.split(","))
    sizes = [2000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    results: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "cpus": os.cpu_count(), "smoke": args.smoke,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    started = time.perf_counter()
    if "train" in only:
        results["train"] = bench_train(device, args.smoke, steps=3 if args.smoke else 30, warmup=1 if args.smoke else 5)
    if "extract" in only:
        results["extract"] = bench_extract(device, args.smoke, batches=2 if args.smoke else 20)
    if "pseudo" in only:
        results["pseudo"] = bench_pseudo(device, sizes)
    results["wall_seconds"] = time.perf_counter() - started
    from itkm_lightning.fileio import atomic_write_json

    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
