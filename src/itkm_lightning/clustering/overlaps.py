"""Jaccard distances from neighbourhood weights (step 6 of ``jaccard.py``): the min-overlap sums
``s_ij = sum_k min(V_ik, V_jk)``, all pairs through an inverted index or only the pairs within a distance by
prefix filtering, in bounded row blocks, optionally split over DDP processes (``RowShare``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

# Bounds the (row, column, value) triples materialised at once in the min-overlap step.
OVERLAP_BLOCK_ENTRIES = 1 << 23
# Pruned Jaccard path (max_distance < 1): row blocks of the candidate products hold about this many
# entries (estimated as prefix entries x CANDIDATE_COLUMN_ESTIMATE), and the exact overlaps are computed
# this many pairs at a time.
CANDIDATE_BLOCK_ENTRIES = 1 << 23
CANDIDATE_COLUMN_ESTIMATE = 100
EXACT_PAIR_BLOCK = 1 << 17
# The candidate filter keeps pairs whose overlap bound reaches the threshold minus this (float rounding).
PREFIX_SLACK = 1e-3


def _row_blocks(entries_per_row: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Split rows into consecutive blocks whose summed entries stay near the budget."""
    cumulative = np.concatenate(([0], np.cumsum(entries_per_row, dtype=np.int64)))
    blocks, start = [], 0
    while start < len(entries_per_row):
        stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)  # a single huge row still forms its own block
        blocks.append((start, stop))
        start = stop
    return blocks


def _column_positions(weights: sp.csr_matrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """The CSC copy of ``weights`` (rows sorted per column) and the CSC slot of every CSR entry."""
    entry_ids = sp.csr_matrix(
        (np.arange(weights.nnz, dtype=np.int64), weights.indices, weights.indptr), shape=weights.shape
    ).tocsc()
    entry_ids.sort_indices()
    positions = np.empty(weights.nnz, dtype=np.int64)
    positions[entry_ids.data] = np.arange(weights.nnz)
    by_column = sp.csc_matrix((weights.data[entry_ids.data], entry_ids.indices, entry_ids.indptr), shape=weights.shape)
    return by_column, positions


def _upper_overlap_block(
    weights: sp.csr_matrix, by_column: sp.csc_matrix, positions: np.ndarray, start: int, stop: int
) -> sp.csr_matrix:
    """s_ij = sum_k min(V_ik, V_jk) for rows start <= i < stop and every j >= i sharing a column with i.

    Inverted index: a stored V_ik meets every V_jk of column k. Column rows are sorted, so the pairs
    with j >= i are the column's slots from V_ik's own slot onwards: each pair is computed once, in
    one vectorised ragged gather, and the duplicates of (i, j) over k are summed by the CSR conversion.
    """
    entries = slice(weights.indptr[start], weights.indptr[stop])
    entry_rows = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(weights.indptr[start : stop + 1]))
    first_slot = positions[entries]
    slot_counts = by_column.indptr[weights.indices[entries] + 1] - first_slot
    owner = np.repeat(np.arange(len(first_slot), dtype=np.int32), slot_counts)
    # Slot of the p-th pair of entry e: first_slot[e] + p.
    slots = np.arange(len(owner), dtype=np.int64)
    slots += np.repeat(first_slot - (np.cumsum(slot_counts) - slot_counts), slot_counts)
    minima = np.minimum(weights.data[entries][owner], by_column.data[slots])
    # A zero on every diagonal keeps it stored even for a row without weights (pathological ties).
    block_rows = np.arange(stop - start, dtype=np.int32)
    return sp.coo_matrix(
        (
            np.concatenate((minima, np.zeros(len(block_rows), minima.dtype))),
            (np.concatenate((entry_rows[owner], block_rows)), np.concatenate((by_column.indices[slots], block_rows + start))),
        ),
        shape=(stop - start, weights.shape[1]),
    ).tocsr()


def _overlap_to_distance(block: sp.csr_matrix, start: int, max_distance: float) -> sp.csr_matrix:
    """Jaccard distance 1 - s / (2 - s) (rows sum to 1), clipped at 0, diagonal exactly 0, pruned."""
    overlaps = block.data.astype(np.float64)
    distances = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    distances[block.indices == rows + start] = 0.0
    keep = distances <= max_distance
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows[keep], minlength=block.shape[0]))))
    return sp.csr_matrix((distances[keep].astype(np.float32), block.indices[keep], indptr), shape=block.shape)


def _mirror_upper(upper: sp.csr_matrix) -> sp.csr_matrix:
    """Full symmetric matrix from its upper triangle, keeping explicit zeros.

    Built through COO conversions only: scipy's sparse addition would drop the explicit zeros.
    """
    coo = upper.tocoo()
    strict = coo.row != coo.col
    full = sp.coo_matrix(
        (
            np.concatenate((coo.data, coo.data[strict])),
            (np.concatenate((coo.row, coo.col[strict])), np.concatenate((coo.col, coo.row[strict]))),
        ),
        shape=upper.shape,
    ).tocsr()
    full.sort_indices()
    return full


def _overlap_threshold(max_distance: float) -> float:
    """Smallest overlap s with Jaccard distance 1 - s / (2 - s) <= max_distance."""
    return 2.0 * (1.0 - max_distance) / (2.0 - max_distance)


def _prefix_split(weights: sp.csr_matrix, threshold: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every row's heaviest entries up to the point where the rest weighs less than ``threshold``.

    Returns the prefix (a CSR matrix holding those entries' weights, in the row's column order) and each
    row's suffix mass (the summed weight of the entries left out, < threshold).
    """
    n = weights.shape[0]
    rows = np.repeat(np.arange(n), np.diff(weights.indptr))
    # Heaviest first within each row, rows kept apart: one float64 key (weights lie in [0, 1]).
    key = rows.astype(np.float64)
    key -= weights.data * 0.5
    order = np.argsort(key, kind="stable")
    sorted_weights = weights.data[order].astype(np.float64)
    cumulative = np.cumsum(sorted_weights)
    bounds = np.concatenate(([0.0], cumulative))
    row_end = bounds[weights.indptr[1:]]
    tail = row_end[rows] - cumulative + sorted_weights  # weight from this entry to the row's end
    in_prefix = np.empty(len(order), dtype=bool)
    in_prefix[order] = tail >= threshold  # back in CSR order
    suffix_mass = np.bincount(rows[~in_prefix], weights=weights.data[~in_prefix], minlength=n)
    counts = np.bincount(rows[in_prefix], minlength=n)
    prefix = sp.csr_matrix((weights.data[in_prefix], weights.indices[in_prefix],
                            np.concatenate(([0], np.cumsum(counts)))), shape=weights.shape)
    return prefix, suffix_mass


def _same_pattern(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def _candidate_pairs(weights: sp.csr_matrix, threshold: float,
                     share: RowShare | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j that may overlap by s_ij >= threshold: every such pair is among them (prefix filtering).

    With P_i the heaviest entries of row i whose remainder (suffix) weighs less than the threshold, a pair
    sharing no column of P_i overlaps by less than the threshold. For a pair that does, with
    X1 = sum of V_ic and X2 = sum of V_jc over the shared columns c of P_i,
    s_ij <= min(X1, X2) + min(suffix_i, |V_j| - X2), an upper bound that two sparse products give for all
    pairs at once. A pair is kept when the bound reaches the threshold from both sides (i's and j's).
    With a ``share``, this process bounds the rows of ``share.rows`` only and the directed candidates of
    every process are gathered before the two sides are matched.
    """
    n = weights.shape[0]
    first = 0 if share is None else share.rows.start
    prefix, suffix_mass = _prefix_split(weights if share is None else weights[share.rows], threshold)
    prefix_support = sp.csr_matrix((np.ones(prefix.nnz, np.float32), prefix.indices, prefix.indptr), shape=prefix.shape)
    support_t = sp.csr_matrix((np.ones(weights.nnz, np.float32), weights.indices, weights.indptr),
                              shape=weights.shape).T.tocsr()
    weights_t = weights.T.tocsr()
    row_mass = np.asarray(weights.sum(axis=1, dtype=np.float64)).ravel().astype(np.float32)
    suffix_mass = suffix_mass.astype(np.float32)
    kept_rows, kept_columns = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, stop in _row_blocks(np.diff(prefix.indptr) * CANDIDATE_COLUMN_ESTIMATE, CANDIDATE_BLOCK_ENTRIES):
        # X1 and X2 by scipy's C++ sparse products. Both have the same sparsity pattern, and scipy emits the
        # columns of a product row in an order fixed by the operands' patterns, so the entries line up
        # (checked; sorted only if scipy ever dropped an entry, which needs a zero sum of positive weights).
        own_mass = prefix[start:stop] @ support_t
        other_mass = prefix_support[start:stop] @ weights_t
        if not _same_pattern(own_mass, other_mass):
            own_mass.sort_indices()
            other_mass.sort_indices()
            if not _same_pattern(own_mass, other_mass):  # pragma: no cover - zero sums of positive weights
                other_mass = other_mass.multiply(own_mass.astype(bool)).tocsr()
                own_mass = own_mass.multiply(other_mass.astype(bool)).tocsr()
                own_mass.sort_indices()
                other_mass.sort_indices()
        local_rows = np.repeat(np.arange(start, stop), np.diff(own_mass.indptr))
        rows = local_rows + first
        bound = np.minimum(own_mass.data, other_mass.data)
        np.subtract(row_mass[own_mass.indices], other_mass.data, out=other_mass.data)
        bound += np.minimum(suffix_mass[local_rows], other_mass.data, out=other_mass.data)
        keep = bound >= threshold
        keep &= own_mass.indices != rows
        kept_rows.append(rows[keep])
        kept_columns.append(own_mass.indices[keep])
    rows, columns = np.concatenate(kept_rows).astype(np.int64), np.concatenate(kept_columns).astype(np.int64)
    if share is not None:
        rows, columns = share.gather(rows), share.gather(columns)
    directed = sp.csr_matrix((np.ones(len(rows), np.int8), (rows, columns)), shape=(n, n))
    both = sp.triu(directed.multiply(directed.T), k=1).tocsr()  # kept from both sides, i < j
    return np.repeat(np.arange(n), np.diff(both.indptr)), both.indices.astype(np.int64)


def _exact_overlaps(weights: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """s_ij = sum_k min(V_ik, V_jk) for the given pairs (scipy's sparse elementwise minimum, float64 sum)."""
    overlaps = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), EXACT_PAIR_BLOCK):
        block = slice(start, start + EXACT_PAIR_BLOCK)
        minima = weights[rows[block]].minimum(weights[columns[block]])
        overlaps[block] = np.asarray(minima.sum(axis=1, dtype=np.float64)).ravel()
    return overlaps


@dataclass(frozen=True)
class RowShare:
    """One process's share of the Jaccard graph's rows under DDP (see ``distributed.jaccard_row_share``).

    ``rows``: the rows i this process bounds and whose pairs (i, j > i) it computes; ``gather``: concatenates
    a 1-D array over all processes in rank order (every process calls it the same number of times).
    """

    rows: slice
    gather: Callable[[np.ndarray], np.ndarray]


def _pruned_jaccard(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    """Only the pairs within max_distance (< 1): candidates by prefix filtering, then their exact overlap.

    The same distances as the all-pairs path for every pair within ``max_distance`` (the overlaps are
    summed in float64 instead of float32, so a pair within a float32 rounding of ``max_distance`` may
    fall on the other side), without enumerating the O(N * (N k / N)^2) pairs that share some weight.
    With a ``share`` the rows are split over the processes and every process returns the whole matrix.
    """
    n = weights.shape[0]
    threshold = _overlap_threshold(max_distance)
    rows, columns = _candidate_pairs(weights, threshold - PREFIX_SLACK, share)
    if share is not None:
        mine = (rows >= share.rows.start) & (rows < share.rows.stop)
        rows, columns = rows[mine], columns[mine]
    overlaps = _exact_overlaps(weights, rows, columns)
    distances = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    keep = distances <= max_distance
    rows, columns, distances = rows[keep], columns[keep], distances[keep]
    if share is not None:
        rows, columns, distances = share.gather(rows), share.gather(columns), share.gather(distances)
    diagonal = np.arange(n)
    upper = sp.csr_matrix(
        (np.concatenate((distances, np.zeros(n))).astype(np.float32),
         (np.concatenate((rows, diagonal)), np.concatenate((columns, diagonal)))),
        shape=(n, n),
    )
    return _mirror_upper(upper)


def _jaccard_from_weights(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    if max_distance < 1.0 and _overlap_threshold(max_distance) > PREFIX_SLACK:
        return _pruned_jaccard(weights, max_distance, share)
    return _all_pairs_jaccard(weights, max_distance)  # every process computes all rows (HDBSCAN: max_distance 1)


def _all_pairs_jaccard(weights: sp.csr_matrix, max_distance: float) -> sp.csr_matrix:
    by_column, positions = _column_positions(weights)
    pairs_per_entry = by_column.indptr[weights.indices + 1] - positions
    cumulative = np.concatenate(([0], np.cumsum(pairs_per_entry)))
    pairs_per_row = cumulative[weights.indptr[1:]] - cumulative[weights.indptr[:-1]]
    blocks = [
        _overlap_to_distance(_upper_overlap_block(weights, by_column, positions, start, stop), start, max_distance)
        for start, stop in _row_blocks(pairs_per_row, OVERLAP_BLOCK_ENTRIES)
    ]
    return _mirror_upper(sp.vstack(blocks, format="csr"))
