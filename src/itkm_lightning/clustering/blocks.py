"""Pseudo-labels per (scenario, group) block (docs/method.md section 3): one clustering per block, labels made
globally unique, blocks without two clusters set aside, the DDP variant, and what each block's clustering found."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score

from itkm_lightning.clustering.labels import cluster
from itkm_lightning.config import ClusteringConfig
from itkm_lightning.distributed import broadcast_tensor, jaccard_row_share, rank_and_world_size, sharded_knn
from itkm_lightning.errors import ConfigError, ITKMError


class EmptyClusteringError(ITKMError, RuntimeError):
    """No block produced two clusters or more: there is nothing to train on."""


def drop_degenerate_blocks(labels: np.ndarray, block_of_index: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Labels with every block of fewer than two clusters set to -1 (outliers), and those blocks' cluster counts.

    ClusterNCE contrasts a sample's cluster against the other clusters of its block: with one cluster the
    softmax is 1 and the loss and gradient are 0, so such a block would only take batch slots.
    """
    labels = labels.copy()
    dropped: dict[int, int] = {}
    for block in np.unique(block_of_index):
        idx = np.flatnonzero(block_of_index == block)
        count = len(np.unique(labels[idx][labels[idx] >= 0]))
        if count < 2:
            labels[idx] = -1
            dropped[int(block)] = count
    if dropped and (labels >= 0).any():  # keep ids dense (0..C-1) for the memory and the sampler
        found = labels >= 0
        labels[found] = np.unique(labels[found], return_inverse=True)[1]
    return labels, dropped


def block_quality(labels: np.ndarray, identities: list[str]) -> dict[str, float]:
    """Clusters, outliers and agreement with the hidden identities (outliers count as singletons)."""
    singletons = labels.copy()
    outliers = singletons < 0
    singletons[outliers] = singletons.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    # torchmetrics computes both scores (equal to scikit-learn's within 1e-6; tests/test_timm_tower.py).
    preds = torch.from_numpy(singletons.astype(np.int64))
    target = torch.from_numpy(np.unique(np.asarray(identities), return_inverse=True)[1].astype(np.int64).reshape(-1))
    with warnings.catch_warnings():  # torchmetrics' contingency table: a sparse-tensor notice, not a problem
        warnings.simplefilter("ignore", UserWarning)
        ari = float(adjusted_rand_score(preds, target))
        nmi = float(normalized_mutual_info_score(preds, target))
    return {
        "num_clusters": int(len(set(labels[labels >= 0].tolist()))),
        "num_outliers": int(outliers.sum()),
        "ari": ari,
        "nmi": nmi,
    }


def cluster_statistics(labels: np.ndarray) -> dict[str, float]:
    """What clustering found in a block without ground truth: clusters, outliers, cluster sizes."""
    kept = labels[labels >= 0]
    sizes = np.bincount(kept) if len(kept) else np.zeros(0, dtype=np.int64)
    sizes = sizes[sizes > 0]
    return {
        "num_clusters": int(len(sizes)),
        "num_outliers": int((labels < 0).sum()),
        "outlier_fraction": float((labels < 0).mean()) if len(labels) else 0.0,
        "mean_cluster_size": float(sizes.mean()) if len(sizes) else 0.0,
        "max_cluster_size": int(sizes.max()) if len(sizes) else 0,
    }


def _block_indices(block_of_index: np.ndarray, k1: int) -> list[np.ndarray]:
    """Sample indices of every block, checked to hold more than k1 images (raised on every rank alike)."""
    blocks = [np.flatnonzero(block_of_index == block) for block in np.unique(block_of_index)]
    for idx in blocks:
        if len(idx) <= k1:
            raise ConfigError(
                f"a (scenario, group) block has {len(idx)} training images but clustering k1={k1} needs more; "
                "lower clustering.k1 (and k2) of the stage that clusters: model.clustering for Stage I, "
                "stage3.clustering for Stage III"
            )
    return blocks


def cluster_blocks(features: np.ndarray, block_of_index: np.ndarray, cfg: ClusteringConfig,
                   neighbours: list[np.ndarray] | None = None, share_rows=None) -> np.ndarray:
    """Cluster each block separately; labels made globally unique (block after block), -1 = outlier.

    ``neighbours``: precomputed k1-nearest-neighbour indices of every block (block order, indices local to
    the block), as :func:`block_neighbours` returns; searched here when None. ``share_rows``: under DDP,
    ``distributed.jaccard_row_share``-like callable (block size -> this rank's ``RowShare``); every rank
    must then call with the same arguments.
    """
    labels = np.full(len(features), -1, dtype=np.int64)
    offset = 0
    for b, idx in enumerate(_block_indices(block_of_index, cfg.k1)):
        local = cluster(features[idx], method=cfg.method, eps=cfg.eps, min_samples=cfg.min_samples,
                        k1=cfg.k1, k2=cfg.k2, backend=cfg.backend,
                        ranks=None if neighbours is None else neighbours[b], knn_options=cfg.knn_options(),
                        share=None if share_rows is None else share_rows(len(idx)))
        found = local >= 0
        if found.any():
            _, dense = np.unique(local[found], return_inverse=True)
            labels[idx[found]] = dense + offset
            offset += int(dense.max()) + 1
    return labels


def block_neighbours(features: torch.Tensor, block_of_index: np.ndarray, cfg: ClusteringConfig,
                     device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The k1 nearest neighbours inside every block, the search sharded over the DDP ranks (all ranks call)."""
    return [sharded_knn(features[torch.from_numpy(idx)], cfg.k1, backend=cfg.backend, device=device,
                        knn_options=cfg.knn_options())[1]
            for idx in _block_indices(block_of_index, cfg.k1)]


def cluster_blocks_distributed(features: torch.Tensor, block_of_index: np.ndarray, cfg: ClusteringConfig,
                               device: torch.device | str = "cpu") -> np.ndarray:
    """:func:`cluster_blocks` for every rank: kNN and the Jaccard graph's rows sharded over the ranks.

    Every rank passes the same (gathered) ``features`` and gets the same labels, equal to the
    single-process ``cluster_blocks``. The kNN search, the O(N^2 d) part, is split over the ranks, and so
    are the candidate pairs and exact overlaps of the DBSCAN path's Jaccard graph (each rank a slice of
    rows, the pairs gathered); the O(N k) neighbourhood weights and DBSCAN run on every rank alike, and
    rank 0's labels are broadcast (HDBSCAN's all-pairs graph is not split: every rank computes it).
    """
    neighbours = block_neighbours(features, block_of_index, cfg, device=device)
    labels = torch.from_numpy(cluster_blocks(features.numpy(), block_of_index, cfg, neighbours,
                                             lambda n: jaccard_row_share(n, device)))
    return broadcast_tensor(labels if rank_and_world_size()[0] == 0 else None).numpy()
