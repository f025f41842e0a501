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
