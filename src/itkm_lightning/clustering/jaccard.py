"""The k-reciprocal Jaccard distance that pseudo-labels cluster on (unsupervised ReID).

The Jaccard distance follows the Cluster Contrast definition (``compute_jaccard_distance`` in
alibaba/cluster-contrast-reid, itself after Zhong et al., CVPR 2017, "Re-ranking with k-reciprocal
encoding"):

1. ``ranks``: the ``k1`` nearest neighbours of every feature, the feature itself included (it is
   normally its own first neighbour). As in Cluster Contrast, the forward neighbourhood for "k"
   is ``ranks[i, :k + 1]`` truncated to the ``k1`` columns that were searched, so the k1 set has
   ``k1`` members and the half set ``round(k1 / 2) + 1``.
2. k-reciprocal set ``R(i, k)``: the forward neighbours ``j`` of ``i`` that also have ``i`` among
   their own forward neighbours.
3. Expansion: for every candidate ``c`` in ``R(i, k1)``, its half set ``R(c, round(k1/2))`` is added
   when more than 2/3 of it already lies in ``R(i, k1)``.
4. Weights over the expanded set: ``exp(-d(i, j))`` with the original squared Euclidean distance of
   L2-normalised features ``d = 2 - 2 <f_i, f_j>``, normalised to sum to 1 per row.
5. Local query expansion: every weight row is replaced by the mean of the rows of its ``k2`` nearest
   neighbours (skipped when ``k2 == 1``).
6. ``J(i, j) = 1 - s / (2 - s)`` with ``s = sum_k min(V_ik, V_jk)`` (rows sum to 1, so the sum of
   maxima is ``2 - s``), clipped at 0.

Unlike the reference, nothing here is N x N: every step is sparse-matrix algebra whose size grows as
O(N * k), and the min-overlap step runs over an inverted index in bounded row blocks.

Representation of the result: a symmetric ``scipy.sparse.csr_matrix`` whose stored entries are the
pairs that share any neighbourhood weight (``s > 0``), the diagonal always stored as an explicit 0.
Every absent pair has Jaccard distance exactly 1 (``s = 0``), the largest possible value.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from itkm_lightning.clustering.inputs import (
    FeatureArray,
    _check_2d_finite,
    _check_enough_features,
    _check_neighbourhood_sizes,
    _check_normalised,
    _check_ranks,
    _to_cpu_float32,
)
from itkm_lightning.clustering.knn_search import KnnBackend, knn
from itkm_lightning.clustering.neighbourhoods import (
    _expanded_neighbourhoods,
    _gaussian_weights,
    _local_query_expansion,
    _reciprocal_neighbours,
)
from itkm_lightning.clustering.overlaps import PREFIX_SLACK, RowShare, _all_pairs_jaccard, _overlap_threshold
from itkm_lightning.clustering.pruned import _pruned_jaccard


def jaccard_distance(
    features: FeatureArray,
    k1: int = 30,
    k2: int = 6,
    *,
    backend: KnnBackend = "auto",
    max_distance: float = 1.0,
    ranks: np.ndarray | None = None,
    knn_options: dict | None = None,
    share: RowShare | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance (Cluster Contrast definition; see the module docstring).

    Args:
        features: (N, D) L2-normalised features, numpy or torch (any device; the kNN search may run
            on the tensor's GPU, the rest runs on CPU in float32).
        k1: k-reciprocal neighbourhood size (needs N > k1).
        k2: local query expansion size (1 <= k2 <= k1).
        backend: kNN backend, see :func:`knn`.
        max_distance: keep only pairs at distance <= max_distance (default 1: every pair that shares
            weight). DBSCAN only needs pairs within eps, which makes the matrix far smaller.
        ranks: precomputed ``knn(features, features, k1)[1]`` (N, k1), the feature itself included;
            lets a caller run the search elsewhere (e.g. sharded over DDP ranks, see
            ``itkm_lightning.distributed.sharded_knn``). Searched here when None.
        knn_options: extra keywords of :func:`knn` for that search (``index``, ``nprobe``, ``ef_search``).
        share: under DDP, this process's share of the rows (:class:`RowShare`); every process must call
            with the same features and ranks and gets the same matrix.

    Returns:
        Symmetric (N, N) ``csr_matrix`` of float32 distances in [0, 1]. Stored entries are the pairs
        that share any neighbourhood weight (and are within ``max_distance``), including the explicit
        0 diagonal; every absent pair has distance exactly 1 (with ``max_distance < 1``: more than
        ``max_distance``). Memory is O(N * k); no dense N x N array is ever built.
    """
    _check_neighbourhood_sizes(k1, k2)
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0 (1 keeps every pair that shares weight); got {max_distance}.")
    cpu_features = _to_cpu_float32(features)
    _check_2d_finite(cpu_features, "features")
    n = cpu_features.shape[0]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    _check_enough_features(n, k1)
    _check_normalised(cpu_features)
    if ranks is None:
        _, ranks = knn(features, features, k1, backend=backend, **(knn_options or {}))
    else:
        ranks = _check_ranks(ranks, n, k1)
    reciprocal = _reciprocal_neighbours(ranks, k1)
    half_reciprocal = _reciprocal_neighbours(ranks, int(np.around(k1 / 2)))
    neighbourhoods = _expanded_neighbourhoods(reciprocal, half_reciprocal)
    del reciprocal, half_reciprocal
    weights = _gaussian_weights(neighbourhoods, cpu_features)
    weights = _local_query_expansion(weights, ranks, k2)
    return _jaccard_from_weights(weights, max_distance, share)


def _jaccard_from_weights(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    if max_distance < 1.0 and _overlap_threshold(max_distance) > PREFIX_SLACK:
        return _pruned_jaccard(weights, max_distance, share)
    return _all_pairs_jaccard(weights, max_distance)  # every process computes all rows (HDBSCAN: max_distance 1)
