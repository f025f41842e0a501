"""HDBSCAN on the sparse Jaccard distance (scikit-learn's, with absent pairs read as unrelated)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# HDBSCAN only: smallest off-diagonal distance, so that no spanning-tree edge has weight 0 (see below).
HDBSCAN_MIN_DISTANCE = 1e-6
# HDBSCAN only: distance standing for "unrelated" (absent) pairs that must be stored; above any Jaccard distance.
HDBSCAN_FAR_DISTANCE = 2.0


def _with_far_pairs(distances: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> sp.csr_matrix:
    """Store HDBSCAN_FAR_DISTANCE for the given absent pairs, in both directions."""
    coo = distances.tocoo()
    far = np.full(2 * len(rows), HDBSCAN_FAR_DISTANCE)
    return sp.coo_matrix(
        (
            np.concatenate((coo.data, far)),
            (np.concatenate((coo.row, rows, columns)), np.concatenate((coo.col, columns, rows))),
        ),
        shape=distances.shape,
    ).tocsr()


def _pad_short_rows(distances: sp.csr_matrix, min_samples: int) -> sp.csr_matrix:
    """Give every row >= min_samples stored entries (sklearn's sparse HDBSCAN requires it) with far pairs."""
    n = distances.shape[0]
    pad_rows, pad_columns = [], []
    for row in np.flatnonzero(np.diff(distances.indptr) < min_samples):  # rare: a few isolated features
        stored = set(distances.indices[distances.indptr[row] : distances.indptr[row + 1]].tolist())
        for column in range(n):
            if len(stored) >= min_samples:
                break
            if column not in stored:
                pad_rows.append(row)
                pad_columns.append(column)
                stored.add(column)
    if not pad_rows:
        return distances
    return _with_far_pairs(distances, np.asarray(pad_rows), np.asarray(pad_columns))


def _join_components(distances: sp.csr_matrix, component: np.ndarray) -> sp.csr_matrix:
    """Join every component to the first with one far pair, so the graph is connected."""
    representatives = np.unique(component, return_index=True)[1]
    if len(representatives) < 2:
        return distances
    return _with_far_pairs(distances, np.full(len(representatives) - 1, representatives[0]), representatives[1:])


def _fit_hdbscan(distances: sp.csr_matrix, min_samples: int):
    """Fit sklearn's HDBSCAN on the sparse Jaccard distance; returns (model, rows it was fitted on).

    Absent pairs share no neighbourhood weight, so they are treated as unrelated ("missing = far", the
    usual sparse-graph HDBSCAN reading) rather than as a dense matrix full of exact 1s: with many pairs
    tied at 1, dense HDBSCAN's binary single-linkage tree would attach small unrelated groups to
    whichever cluster the tie-break happens to pick. Concretely:
    - connected components of the stored pairs smaller than min_samples are noise and left out of
      the fit (they have no stored pair with the rest, so no other row changes);
    - the remaining components are joined at HDBSCAN_FAR_DISTANCE (above any Jaccard distance), so each
      one is a child of the tree's root, and rows with fewer than min_samples stored entries are
      padded with far pairs (sklearn's sparse path needs min_samples entries per row);
    - off-diagonal zeros (duplicate features) are raised to HDBSCAN_MIN_DISTANCE, because sklearn reads
      the spanning tree back with ``.nonzero()``, which would drop zero-weight edges.
    Inside a component the result is sklearn's HDBSCAN on the same distances, up to how it breaks
    ties between equal mutual-reachability distances (dense HDBSCAN is itself tie-order dependent).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import HDBSCAN

    _, component = connected_components(distances, directed=False)
    component_sizes = np.bincount(component)
    kept = np.flatnonzero(component_sizes[component] >= min_samples)
    if len(kept) == 0:
        return None, kept
    graph = distances if len(kept) == distances.shape[0] else distances[kept][:, kept]
    graph = graph.astype(np.float64).tocsr()  # a copy: the padding below must not touch the caller's matrix
    graph = _join_components(graph, component[kept])
    graph = _pad_short_rows(graph, min_samples)
    graph_rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    graph.data[(graph.indices != graph_rows) & (graph.data < HDBSCAN_MIN_DISTANCE)] = HDBSCAN_MIN_DISTANCE
    # copy=False: ``graph`` is already this function's own float64 copy, sklearn may overwrite it.
    model = HDBSCAN(min_cluster_size=min_samples, metric="precomputed", copy=False)
    return model.fit(graph), kept


def _hdbscan(distances: sp.csr_matrix, min_samples: int) -> np.ndarray:
    labels = np.full(distances.shape[0], -1, dtype=np.int64)
    model, kept = _fit_hdbscan(distances, min_samples)
    if model is not None:
        labels[kept] = model.labels_
    # Fewer than min_samples related features: mutual reachability is "far" to everything, so the
    # point only joins at the root level and is never part of a real cluster.
    labels[np.diff(distances.indptr) < min_samples] = -1
    return _relabel_consecutive(labels)


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    clustered = labels >= 0
    relabelled = np.full_like(labels, -1)
    relabelled[clustered] = np.unique(labels[clustered], return_inverse=True)[1]
    return relabelled
