"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017) on distance matrices, with the signature and the results of the implementation that ReID code
bases ship (``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)``, e.g. torchreid's
``torchreid/utils/rerank.py``), without its dense (query + gallery)^2 working matrices.

What is computed (N = queries + gallery; ``M`` the N x N matrix ``[[q_q, q_g], [q_g^T, g_g]]``, never built):

1. ``R[i, j] = M[j, i]^2 / max_k M[k, i]^2`` in float32: the reference squares ``M``, divides every column by
   its maximum and transposes, so row ``i`` of ``R`` is column ``i`` of ``M`` (for the usual symmetric
   ``q_q`` and ``g_g`` that is row ``i``, scaled to a maximum of 1).
2. ``ranks``: the ``k1 + 1`` (and at least ``k2``) smallest entries of every row of ``R``, in ascending order.
3. k-reciprocal sets ``R(i, k1)``, the expansion by ``R(c, round(k1 / 2))`` of every candidate that overlaps
   by more than 2/3, weights ``exp(-R[i, j])`` normalised per row, and the local query expansion over the
   ``k2`` nearest rows: the same steps as the Jaccard distance used for clustering, so the sparse helpers of
   :mod:`itkm_lightning.clustering.neighbourhoods` do them here too (only the weights differ: they come from ``R``, not
   from features).
4. For every query ``i`` and gallery item ``j``: ``s = sum_k min(V[i, k], V[j, k])`` through an inverted
   index, ``jaccard = 1 - s / (2 - s)`` and the result ``(1 - lambda) * jaccard + lambda * R[i, j]``.

Memory: besides the inputs and the (queries x gallery) float32 result, O(N * k) sparse entries and bounded
blocks (:data:`RANK_BLOCK_ELEMENTS`, :data:`OVERLAP_BLOCK_PAIRS`). Ties: the reference ranks with an
unstable ``np.argsort``; here equal values are ordered by index, so on exactly tied distances the two may
pick different neighbours. On tie-free inputs they agree to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from itkm_lightning.clustering.neighbourhoods import (
    _expanded_neighbourhoods,
    _local_query_expansion,
    _per_row,
    _reciprocal_neighbours,
)

RANK_BLOCK_ELEMENTS = 1 << 24
"""Bounds the (N x column block) float32 arrays of the neighbour search (16 Mi entries: 64 MiB each)."""
OVERLAP_BLOCK_PAIRS = 1 << 23
"""Bounds the (query entry, gallery entry) pairs and the dense (query block x gallery) sums of step 4."""


def _matrix(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D distance matrix, got shape {array.shape}.")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}.")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the features it was computed from.")
    return array


class _Blocks:
    """Read access to ``M = [[q_q, q_g], [q_g^T, g_g]]`` without building it."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.nq, self.ng = q_g.shape
        self.n = self.nq + self.ng
        self.dtype = np.result_type(q_g.dtype, q_q.dtype, g_g.dtype)

    def columns(self, start: int, stop: int) -> np.ndarray:
        """``M[:, start:stop]`` (every row) in the inputs' common dtype."""
        nq = self.nq
        parts = []
        if start < nq:  # query columns: q_q[:, c] over q_g[c, :]
            a, b = start, min(stop, nq)
            parts.append(np.concatenate([self.q_q[:, a:b], self.q_g[a:b, :].T], axis=0).astype(self.dtype, copy=False))
        if stop > nq:  # gallery columns: q_g[:, c] over g_g[:, c]
            a, b = max(start, nq) - nq, stop - nq
            parts.append(np.concatenate([self.q_g[:, a:b], self.g_g[:, a:b]], axis=0).astype(self.dtype, copy=False))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def entries(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``M[rows, cols]`` for index pairs."""
        nq = self.nq
        out = np.empty(rows.size, dtype=self.dtype)
        rq, cq = rows < nq, cols < nq
        for mask, matrix, r, c in (
            (rq & cq, self.q_q, rows, cols),
            (rq & ~cq, self.q_g, rows, cols - nq),
            (~rq & cq, self.q_g, cols, rows - nq),  # M[j, i] = q_g^T[j - nq, i] = q_g[i, j - nq]
            (~rq & ~cq, self.g_g, rows - nq, cols - nq),
        ):
            if mask.any():
                out[mask] = matrix[r[mask], c[mask]]
        return out


def _squared(values: np.ndarray) -> np.ndarray:
    """``np.power(values, 2).astype(float32)``, as the reference squares its concatenated matrix."""
    return np.power(values, 2).astype(np.float32)


def _nearest(blocks: _Blocks, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranks (N, width) of the smallest entries of every row of ``R``, ascending; column maxima of ``M^2``)."""
    n = blocks.n
    ranks = np.empty((n, width), dtype=np.int64)
    column_max = np.empty(n, dtype=np.float32)
    step = max(1, RANK_BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        squared = _squared(blocks.columns(start, stop))  # (N, B): column c of M is row c of R
        maxima = squared.max(axis=0)
        if not (maxima > 0).all():
            raise ValueError("a row of the distance matrices is all zeros; re-ranking needs distinct items")
        column_max[start:stop] = maxima
        scaled = (squared / maxima).T  # rows of R, as the reference computes them (float32)
        if width < n:
            top = np.argpartition(scaled, width - 1, axis=1)[:, :width]
        else:
            top = np.broadcast_to(np.arange(n), scaled.shape)
        values = np.take_along_axis(scaled, top, axis=1)
        order = np.lexsort((top, values), axis=1)  # ascending value, ties by index
        ranks[start:stop] = np.take_along_axis(top, order, axis=1)
    return ranks, column_max


def _weights(neighbourhoods: sp.csr_matrix, blocks: _Blocks, column_max: np.ndarray) -> sp.csr_matrix:
    """``V[i, j] = exp(-R[i, j]) / sum_j' exp(-R[i, j'])`` over every row's expanded neighbourhood."""
    rows = np.repeat(np.arange(neighbourhoods.shape[0]), np.diff(neighbourhoods.indptr))
    columns = neighbourhoods.indices
    distances = _squared(blocks.entries(columns, rows)) / column_max[rows]  # R[i, j] = M[j, i]^2 / max
    weights = np.exp(-distances.astype(np.float64))
    weights /= _per_row(np.add, weights, neighbourhoods.indptr)[rows]
    return sp.csr_matrix((weights.astype(np.float32), columns.copy(), neighbourhoods.indptr.copy()),
                         shape=neighbourhoods.shape)


def _query_gallery_overlap(weights: sp.csr_matrix, nq: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, s)`` with ``s[i - start, j] = sum_k min(V[i, k], V[nq + j, k])`` (float64) for the
    queries ``start <= i < stop`` and every gallery item ``j``, block by block."""
    ng = weights.shape[0] - nq
    queries = weights[:nq].tocsr()
    gallery = weights[nq:].tocsc()  # per column k: the gallery rows that hold weight there
    gallery.sort_indices()
    per_entry = np.concatenate(([0], np.cumsum(np.diff(gallery.indptr)[queries.indices], dtype=np.int64)))
    cumulative = per_entry[queries.indptr]  # pairs before each query row (a row may hold no weight)
    max_rows = max(1, OVERLAP_BLOCK_PAIRS // max(ng, 1))
    start = 0
    while start < nq:
        stop = int(np.searchsorted(cumulative, cumulative[start] + OVERLAP_BLOCK_PAIRS, side="right")) - 1
        stop = min(max(stop, start + 1), start + max_rows, nq)
        entries = slice(queries.indptr[start], queries.indptr[stop])
        entry_row = np.repeat(np.arange(stop - start), np.diff(queries.indptr[start : stop + 1]))
        entry_col, entry_val = queries.indices[entries], queries.data[entries]
        counts = np.diff(gallery.indptr)[entry_col]
        owner = np.repeat(np.arange(entry_col.size), counts)
        slots = np.arange(owner.size) + np.repeat(gallery.indptr[entry_col] - (np.cumsum(counts) - counts), counts)
        minima = np.minimum(entry_val[owner], gallery.data[slots]).astype(np.float64)
        flat = entry_row[owner].astype(np.int64) * ng + gallery.indices[slots]
        yield start, stop, np.bincount(flat, weights=minima, minlength=(stop - start) * ng).reshape(stop - start, ng)
        start = stop


def re_ranking(
    q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranking of a query x gallery distance matrix (smaller = closer).

    Args:
        q_g_dist: (num_query, num_gallery) distances; numpy arrays or torch tensors.
        q_q_dist: (num_query, num_query) distances between the queries.
        g_g_dist: (num_gallery, num_gallery) distances within the gallery.
        k1: size of the k-reciprocal neighbourhoods (the paper's 20).
        k2: size of the local query expansion (the paper's 6; 1 = none).
        lambda_value: weight of the original distance in the result (the paper's 0.3).

    Returns:
        (num_query, num_gallery) float32 numpy array of re-ranked distances, equal (to float32 rounding, on
        tie-free inputs) to what the reference implementation returns for the same arguments. Any distance
        works (``1 - cos``, Euclidean, squared Euclidean); the result does not change when all inputs are
        scaled by the same factor.
    """
    q_g = _matrix(q_g_dist, "q_g_dist")
    q_q = _matrix(q_q_dist, "q_q_dist")
    g_g = _matrix(g_g_dist, "g_g_dist")
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(f"q_q_dist must be {nq} x {nq} and g_g_dist {ng} x {ng} for a {nq} x {ng} q_g_dist; "
                         f"got {q_q.shape} and {g_g.shape}.")
    for name, value in (("k1", k1), ("k2", k2)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value!r}.")
    if nq == 0 or ng == 0:
        return np.zeros((nq, ng), dtype=np.float32)
    blocks = _Blocks(q_g, q_q, g_g)
    n = blocks.n
    if k2 > n:
        raise ValueError(f"k2 ({k2}) exceeds the number of query and gallery items ({n}).")
    ranks, column_max = _nearest(blocks, min(n, max(k1 + 1, k2)))
    reciprocal_ranks = ranks[:, : min(n, k1 + 1)]
    neighbourhoods = _expanded_neighbourhoods(
        _reciprocal_neighbours(reciprocal_ranks, k1), _reciprocal_neighbours(reciprocal_ranks, int(np.around(k1 / 2)))
    )
    weights = _local_query_expansion(_weights(neighbourhoods, blocks, column_max), ranks, k2)
    del neighbourhoods
    result = np.empty((nq, ng), dtype=np.float32)
    for start, stop, overlap in _query_gallery_overlap(weights.tocsr(), nq):
        jaccard = 1.0 - overlap / (2.0 - overlap)
        # R[i, nq + j] = q_g[i, j]^2 / (maximum of column i of M^2)
        original = _squared(q_g[start:stop]) / column_max[start:stop, None]
        result[start:stop] = jaccard * (1.0 - lambda_value) + original * lambda_value
    return result
