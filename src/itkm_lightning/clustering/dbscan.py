"""DBSCAN on a sparse precomputed distance graph, as connected components: labels equal to scikit-learn's.

scikit-learn's ``DBSCAN(metric="precomputed")`` on a sparse matrix builds one Python-level neighbour
array per point and then walks them point by point (``dbscan_inner``); at 100k points and a few million
stored pairs that costs tens of seconds. The same labels follow from whole-array operations:

1. Neighbours of ``i``: the stored entries of row ``i`` with distance ``<= eps`` (ties at ``eps``
   included, as in scikit-learn), plus ``i`` itself. scikit-learn stores the diagonal before searching
   (``X.setdiag(X.diagonal())``), so ``i`` is its own neighbour exactly when ``D[i, i] <= eps`` (an absent
   diagonal reads 0).
2. Core points: at least ``min_samples`` neighbours, the point included.
3. Clusters: connected components of the core points over their within-``eps`` pairs
   (``scipy.sparse.csgraph.connected_components``).
4. Cluster numbers: scikit-learn scans points in index order and grows a whole cluster from the first
   core point not yet labelled, so clusters are numbered by their smallest core index.
5. Border points (not core, within ``eps`` of a core point ``c``, i.e. in ``c``'s row): scikit-learn gives
   a border point the label of the first cluster that reaches it, which by 4 is the adjacent cluster
   with the smallest number. This is the one order-dependent part of DBSCAN: a border point between two
   clusters belongs to the one whose lowest core index is smaller. Everything else is noise (-1).

The input must be symmetric (the Jaccard graph is): scikit-learn follows row ``c`` of a core point, and
for an asymmetric matrix its clusters would depend on direction; ``dbscan`` checks this only by shape.
Written by hand (scipy has components but no DBSCAN; scikit-learn's is the per-point walk above) and
pinned against scikit-learn's labels in tests/test_sparse_dbscan.py.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def core_points(distances: sp.csr_matrix, eps: float, min_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_core, rows, columns): the core mask and the off-diagonal pairs within ``eps``, row-major."""
    n = distances.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(distances.indptr))
    columns = distances.indices.astype(np.int64, copy=False)
    near = (distances.data <= eps) & (columns != rows)
    rows, columns = rows[near], columns[near]
    self_counts = (distances.diagonal() <= eps).astype(np.int64)
    counts = np.bincount(rows, minlength=n) + self_counts
    return counts >= min_samples, rows, columns


def dbscan(distances: sp.spmatrix, eps: float, min_samples: int) -> np.ndarray:
    """Labels of ``sklearn.cluster.DBSCAN(eps, min_samples=min_samples, metric="precomputed")`` on a
    symmetric sparse distance matrix (absent pairs are farther than ``eps``): 0..C-1, noise -1, int64."""
    if distances.shape[0] != distances.shape[1]:
        raise ValueError(f"distances must be square; got shape {distances.shape}.")
    distances = sp.csr_matrix(distances)
    n = distances.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    is_core, rows, columns = core_points(distances, eps, min_samples)
    if not is_core.any():
        return labels
    core_pair = is_core[rows] & is_core[columns]
    graph = sp.csr_matrix((np.ones(int(core_pair.sum()), np.int8), (rows[core_pair], columns[core_pair])),
                          shape=(n, n))
    _, component = connected_components(graph, directed=False)
    core_index = np.flatnonzero(is_core)
    # Number the components by their smallest core index (core_index is ascending: first hit = smallest).
    core_components, first = np.unique(component[core_index], return_index=True)
    order = np.argsort(core_index[first], kind="stable")
    number = np.empty(int(component.max()) + 1, dtype=np.int64)
    number[core_components[order]] = np.arange(len(order))
    labels[core_index] = number[component[core_index]]
    # Border points: the smallest cluster number among the core points whose rows hold them.
    border_pair = is_core[rows] & ~is_core[columns]
    if border_pair.any():
        border, candidate = columns[border_pair], labels[rows[border_pair]]
        best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, border, candidate)
        reached = best < np.iinfo(np.int64).max
        labels[reached] = best[reached]
    return labels
