"""Pseudo-labels of one set of features: DBSCAN (or HDBSCAN) on the k-reciprocal Jaccard distance."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from itkm_lightning.clustering.dbscan import dbscan
from itkm_lightning.clustering.hdbscan import _hdbscan
from itkm_lightning.clustering.inputs import FeatureArray
from itkm_lightning.clustering.jaccard import jaccard_distance
from itkm_lightning.clustering.knn_search import KnnBackend
from itkm_lightning.clustering.overlaps import RowShare


def _check_cluster_arguments(method: str, eps: float, min_samples: int) -> None:
    if method not in ("dbscan", "hdbscan"):
        raise ValueError(f"method must be 'dbscan' or 'hdbscan'; got {method!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}.")
    if method == "dbscan" and eps >= 1:
        raise ValueError(
            f"eps must be < 1 for DBSCAN on the sparse Jaccard distance; got {eps}. Every pair absent from "
            "the sparse matrix has distance 1, so eps >= 1 would make all those pairs neighbours; lower eps."
        )
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1; got {min_samples}.")
    if method == "hdbscan" and min_samples < 2:
        raise ValueError(f"HDBSCAN needs min_samples (its min_cluster_size) >= 2; got {min_samples}.")


def _dbscan(distances: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    # Exact: stored entries hold every distance <= eps (explicit zeros included); absent ones exceed it.
    # Connected components of the core points: scikit-learn's labels (border rule included), whole-array.
    return dbscan(distances, eps, min_samples)


def cluster(
    features: FeatureArray,
    method: Literal["dbscan", "hdbscan"] = "dbscan",
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    *,
    backend: KnnBackend = "auto",
    ranks: np.ndarray | None = None,
    knn_options: dict | None = None,
    share: RowShare | None = None,
) -> np.ndarray:
    """Pseudo-labels: DBSCAN (or HDBSCAN) on the k-reciprocal Jaccard distance.

    Args:
        features: (N, D) L2-normalised features, numpy or torch (any device).
        method: "dbscan" (exact on the sparse distance; needs 0 < eps < 1) or "hdbscan"
            (``sklearn.cluster.HDBSCAN`` with ``min_cluster_size=min_samples``, pairs absent from the
            sparse distance read as unrelated; see ``_fit_hdbscan``; ``eps`` unused).
        eps: DBSCAN neighbourhood radius on the Jaccard distance.
        min_samples: DBSCAN core-point size (the point included) / HDBSCAN minimum cluster size.
        k1, k2: Jaccard distance neighbourhood sizes, see :func:`jaccard_distance`.
        backend: kNN backend, see :func:`knn`.
        ranks: precomputed (N, k1) neighbour indices, see :func:`jaccard_distance`.
        knn_options: approximate search settings, see :func:`jaccard_distance`.
        share: DDP share of the Jaccard rows, see :func:`jaccard_distance` (all processes get the labels).

    Returns:
        (N,) int64 labels, 0..C-1 for clusters and -1 for outliers. Empty input gives an empty array.
    """
    _check_cluster_arguments(method, eps, min_samples)
    # DBSCAN only looks at pairs within eps: dropping the others early is exact and saves memory.
    max_distance = eps if method == "dbscan" else 1.0
    distances = jaccard_distance(features, k1, k2, backend=backend, max_distance=max_distance, ranks=ranks,
                                 knn_options=knn_options, share=share)
    if distances.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "dbscan":
        labels = _dbscan(distances, eps, min_samples)
    else:
        labels = _hdbscan(distances, min_samples)
    return np.asarray(labels, dtype=np.int64)
