"""Two gloo processes on CPU: sharded kNN and Jaccard rows give the single-process pseudo-labels; the P x K sampler
splits whole identities over the ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from itkm_lightning.clustering.blocks import cluster_blocks, cluster_blocks_distributed
from itkm_lightning.config import ClusteringConfig
from itkm_lightning.distributed import query_slice, sharded_knn

CFG = ClusteringConfig(eps=0.6, min_samples=3, k1=8, k2=3)
WORLD_SIZE = 2


def clustered_features(seed: int = 0, identities: int = 40, per_identity: int = 6, dim: int = 32):
    """Noisy copies of random identity centres in two blocks; identity order shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    owner = np.repeat(np.arange(identities), per_identity)
    features = centres[owner] + 0.35 * rng.normal(size=(len(owner), dim))
    order = rng.permutation(len(owner))
    features, owner = features[order], owner[order]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return torch.from_numpy(features.astype(np.float32)), (owner % 2).astype(np.int64)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from itkm_lightning.data.sampler import PseudoIdentityBatchSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        features, blocks = clustered_features()
        labels = cluster_blocks_distributed(features, blocks, CFG)
        _, ranks = sharded_knn(features, CFG.k1)
        sampler = PseudoIdentityBatchSampler(labels, blocks, num_clusters=3, num_instances=2, iters_per_epoch=5,
                                             seed=1, rank=rank, world_size=WORLD_SIZE)
        out = {"labels": labels.tolist(), "ranks": ranks.tolist(), "batches": list(sampler)}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_query_slices_cover_every_row_once():
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            rows = [i for r in range(world) for i in range(n)[query_slice(n, r, world)]]
            assert rows == list(range(n))
            sizes = [len(range(n)[query_slice(n, r, world)]) for r in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_sharded_path_equals_cluster_blocks():
    features, blocks = clustered_features(seed=3)
    expected = cluster_blocks(features.numpy(), blocks, CFG)
    assert (expected >= 0).sum() > len(expected) // 2  # the data do cluster, so the comparison means something
    np.testing.assert_array_equal(cluster_blocks_distributed(features, blocks, CFG), expected)


@pytest.mark.slow  # two interpreters start and import torch: 30-100 s on the shared 2 cores
def test_two_gloo_processes_label_like_one_and_sample_whole_identities(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(str(tmp_path / "pg_init"), str(tmp_path)), nprocs=WORLD_SIZE,
                                join=True)
    outputs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    features, blocks = clustered_features()

    # Pseudo-labels: identical on both ranks and to the single-process path (same features).
    single = cluster_blocks(features.numpy(), blocks, CFG)
    assert len(set(single[single >= 0].tolist())) >= 10
    for out in outputs:
        np.testing.assert_array_equal(np.asarray(out["labels"]), single)
    # The gathered sharded search equals the search of all queries at once.
    from itkm_lightning.clustering import knn

    np.testing.assert_array_equal(np.asarray(outputs[0]["ranks"]), knn(features, features, CFG.k1)[1])

    # P x K sampler: equal batch counts, whole identities per rank, no index twice in a step.
    batches = [out["batches"] for out in outputs]
    assert len(batches[0]) == len(batches[1]) == 5
    for step in zip(*batches):
        owners = [{int(single[i]) for i in batch} for batch in step]
        assert owners[0].isdisjoint(owners[1])  # an identity lives on one rank only in a step
        indices = [i for batch in step for i in batch]
        assert len(indices) == len(set(indices))
        assert all(len(o) == 3 for o in owners) and all(len(b) == 6 for b in step)


@pytest.mark.parametrize(("top_entries", "scatter_entries"), [(32, 1 << 22), (2, 300)])
def test_jaccard_rows_shared_over_three_workers_give_the_single_process_matrix(monkeypatch, top_entries,
                                                                                  scatter_entries):
    """RowShare with a thread-barrier gather stands in for three DDP ranks: each computes a slice of rows.

    Also with a weak second filter and tiny scatter blocks, so that each rank's slice spans several blocks."""
    import threading

    import scipy.sparse as sp

    from itkm_lightning.clustering import pruned
    from itkm_lightning.clustering import RowShare, jaccard_distance

    monkeypatch.setattr(pruned, "TOP_ENTRIES", top_entries)
    monkeypatch.setattr(pruned, "SCATTER_BLOCK_ENTRIES", scatter_entries)

    features, _ = clustered_features(seed=5)
    expected = jaccard_distance(features.numpy(), CFG.k1, CFG.k2, max_distance=CFG.eps, backend="torch")
    world = 3
    barrier = threading.Barrier(world)
    slots: list = [None] * world
    results: list = [None] * world

    def gather_for(rank: int):
        def gather(array: np.ndarray) -> np.ndarray:
            slots[rank] = array
            barrier.wait()
            joined = np.concatenate(slots)
            barrier.wait()  # everyone has read the slots before they are reused
            return joined
        return gather

    def worker(rank: int) -> None:
        share = RowShare(rows=query_slice(len(features), rank, world), gather=gather_for(rank))
        results[rank] = jaccard_distance(features.numpy(), CFG.k1, CFG.k2, max_distance=CFG.eps, backend="torch",
                                         share=share)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert expected.nnz > 2 * len(features)
    for matrix in results:
        assert isinstance(matrix, sp.csr_matrix)
        assert (matrix != expected).nnz == 0
