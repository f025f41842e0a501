"""The Jaccard graph's pairs within eps, without enumerating every pair that shares a weight.

Prefix filtering gives candidate pairs (an upper bound on each pair's overlap from one sparse product), a
second bound from each candidate's heaviest entries drops most of them, and the survivors' overlaps are
computed exactly, bit for bit those of the all-pairs path (``overlaps.py``). Under DDP each process bounds
and computes a share of the rows (:class:`~itkm_lightning.clustering.overlaps.RowShare`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from itkm_lightning.clustering.overlaps import (
    PREFIX_SLACK,
    RowShare,
    _exact_overlaps,
    _mirror_upper,
    _overlap_threshold,
    _row_blocks,
)

# Pruned Jaccard path (max_distance < 1): row blocks of the candidate products hold about this many
# entries (estimated as prefix entries x CANDIDATE_COLUMN_ESTIMATE), and the exact overlaps are computed
# this many pairs at a time.
CANDIDATE_BLOCK_ENTRIES = 1 << 23
CANDIDATE_COLUMN_ESTIMATE = 100
# Second filter of the pruned path: each candidate j's heaviest entries looked up in row i (more: tighter, slower),
# from a dense float64 copy of a block of rows of about this many entries (32 MiB; one per thread).
TOP_ENTRIES = 32
SCATTER_BLOCK_ENTRIES = 1 << 22


def _heaviest_first(weights: sp.csr_matrix) -> np.ndarray:
    """CSR positions of ``weights`` ordered row by row, heaviest entry first within each row."""
    rows = np.repeat(np.arange(weights.shape[0]), np.diff(weights.indptr))
    # Rows kept apart, heaviest first: one float64 key (weights lie in [0, 1]).
    key = rows.astype(np.float64)
    key -= weights.data * 0.5
    return np.argsort(key, kind="stable")


def _prefix_split(weights: sp.csr_matrix, threshold: float,
                  order: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every row's heaviest entries up to the point where the rest weighs less than ``threshold``.

    Returns the prefix (a CSR matrix holding those entries' weights, in the row's column order) and each
    row's suffix mass (the summed weight of the entries left out, < threshold). ``order``: the
    :func:`_heaviest_first` order of ``weights``, when the caller already has it.
    """
    n = weights.shape[0]
    rows = np.repeat(np.arange(n), np.diff(weights.indptr))
    order = _heaviest_first(weights) if order is None else order
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


def _candidate_pairs(weights: sp.csr_matrix, threshold: float, share: RowShare | None = None,
                     order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j that may overlap by s_ij >= threshold: every such pair is among them (prefix filtering).

    With P_i the heaviest entries of row i whose remainder (suffix) weighs less than the threshold, a pair
    sharing no column of P_i overlaps by less than the threshold. For a pair that does, with X the sum of
    V_jc over the columns c of P_i, s_ij <= X + min(suffix_i, |V_j| - X), an upper bound that one sparse
    product gives for all pairs at once. A pair is kept when the bound reaches the threshold from both
    sides (i's and j's). (A second product that also bounded by i's own prefix weights, min(X, X'), kept
    almost the same pairs: 24.9 against 25.1 per row on the 20k benchmark.) With a ``share``, this process
    bounds the rows of ``share.rows`` only and the directed candidates of every process are gathered before
    the two sides are matched. ``order``: the :func:`_heaviest_first` order of ``weights``, if known.
    """
    n = weights.shape[0]
    first = 0 if share is None else share.rows.start
    if share is None:
        prefix, suffix_mass = _prefix_split(weights, threshold, order)
    else:
        # The order keeps rows apart, so a row slice's order is a slice of it, shifted to the slice's positions.
        offsets = weights.indptr[share.rows.start], weights.indptr[share.rows.stop]
        local = None if order is None else order[offsets[0]:offsets[1]] - offsets[0]
        prefix, suffix_mass = _prefix_split(weights[share.rows], threshold, local)
    prefix_support = sp.csr_matrix((np.ones(prefix.nnz, np.float32), prefix.indices, prefix.indptr), shape=prefix.shape)
    # X + min(suffix_i, |V_j| - X) >= threshold exactly when X >= threshold - suffix_i and |V_j| >= threshold:
    # rows lighter than the threshold reach it with no one and are left out of the product.
    row_mass = np.asarray(weights.sum(axis=1, dtype=np.float64)).ravel()
    light = np.repeat(row_mass < threshold, np.diff(weights.indptr))
    weights_t = sp.csr_matrix((np.where(light, 0, weights.data).astype(np.float32), weights.indices, weights.indptr),
                              shape=weights.shape)
    if light.any():
        weights_t.eliminate_zeros()
    weights_t = weights_t.T.tocsr()
    needed = (threshold - suffix_mass).astype(np.float32)
    blocks = _row_blocks(np.diff(prefix.indptr) * CANDIDATE_COLUMN_ESTIMATE, CANDIDATE_BLOCK_ENTRIES)
    found: list = [None] * len(blocks)

    def run(numbers: range) -> None:
        for number in numbers:
            start, stop = blocks[number]
            mass = prefix_support[start:stop] @ weights_t  # X for every j sharing a column of P_i (scipy, C++)
            kept = np.flatnonzero(mass.data >= np.repeat(needed[start:stop], np.diff(mass.indptr)))
            rows = np.searchsorted(mass.indptr, kept, side="right") - 1 + (start + first)
            columns = mass.indices[kept].astype(np.int64)
            found[number] = [(rows[where], columns[where]) for where in (rows < columns, rows > columns)]

    _in_threads(run, len(blocks))
    empty = [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * 2
    (upper_rows, upper_columns), (lower_rows, lower_columns) = [
        [np.concatenate([part[side][axis] for part in found + [empty]]) for axis in (0, 1)] for side in (0, 1)]
    if share is not None:
        upper_rows, upper_columns = share.gather(upper_rows), share.gather(upper_columns)
        lower_rows, lower_columns = share.gather(lower_rows), share.gather(lower_columns)
    # Kept from both sides: (i, j), i < j, bounded from row i (upper) and from row j (lower, transposed).
    from_i = sp.csr_matrix((np.ones(len(upper_rows), np.int8), (upper_rows, upper_columns)), shape=(n, n))
    from_j = sp.csr_matrix((np.ones(len(lower_rows), np.int8), (lower_columns, lower_rows)), shape=(n, n))
    both = from_i.multiply(from_j).tocsr()
    both.eliminate_zeros()
    return np.repeat(np.arange(n), np.diff(both.indptr)), both.indices.astype(np.int64)


def _top_entries(weights: sp.csr_matrix, order: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's ``count`` heaviest entries, (N, count) columns and weights padded with column N and weight 0,
    and the summed weight of the row's other entries (float64)."""
    n = weights.shape[0]
    lengths = np.diff(weights.indptr)
    rank = np.arange(weights.nnz) - np.repeat(weights.indptr[:-1], lengths)  # place in the heaviest-first order
    rows = np.repeat(np.arange(n), lengths)
    top = rank < count
    columns = np.full((n, count), n, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    values = np.zeros((n, count), dtype=np.float64)
    columns[rows[top], rank[top]] = weights.indices[order[top]]
    values[rows[top], rank[top]] = weights.data[order[top]]
    rest = np.bincount(rows, weights=weights.data, minlength=n) - values.sum(axis=1)
    return columns, values, rest


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges starts[p] .. starts[p] + lengths[p] - 1 (CSR positions of gathered rows)."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


def _bounded_overlaps(weights: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray, threshold: float,
                      order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, overlaps): a tighter bound's mask of the candidate pairs (i, j) and the exact s_ij of the kept.

    Bound: with T_j the TOP_ENTRIES heaviest entries of row j and rest_j the weight of the others,
    s_ij <= sum_{c in T_j} min(V_jc, V_ic) + min(rest_j, |V_i| - sum_{c in T_j} V_ic). The prefix bound of
    :func:`_candidate_pairs` assumes that the light remainders of both rows overlap fully; on the benchmark
    three quarters of its candidates overlap by less than 0.2, and this bound drops most of them at |T_j|
    lookups each. Every pair with s_ij >= threshold is kept (float rounding is far below PREFIX_SLACK,
    which the caller subtracts). The V_ic are read from a dense copy of a block of rows i.

    Exact overlaps of the kept pairs, bit for bit those of :func:`_exact_overlaps`: the minima over the
    columns both rows hold, in ascending column order, summed by the same ``np.add.reduceat`` that
    scipy's row sum uses, so each pair's float64 sum sees the same numbers in the same order.
    """
    n = weights.shape[0]
    kept = np.zeros(len(rows), dtype=bool)
    overlaps = np.zeros(len(rows), dtype=np.float64)
    if len(rows) == 0:
        return kept, overlaps
    top_columns, top_values, rest = _top_entries(weights, order, TOP_ENTRIES)
    row_mass = rest + top_values.sum(axis=1)
    by_row = np.argsort(rows, kind="stable")
    width = n + 1  # column n: the zero column that padded entries read
    block = max(1, SCATTER_BLOCK_ENTRIES // width)
    lengths = np.diff(weights.indptr)
    bounds = np.searchsorted(rows[by_row], np.arange(0, n + block, block))

    def run(numbers: range) -> None:  # consecutive row blocks; each thread its own dense block
        dense = np.zeros(block * width, dtype=np.float64)
        for number in numbers:
            pairs = by_row[bounds[number]:bounds[number + 1]]
            if len(pairs) == 0:
                continue
            start, stop = number * block, min((number + 1) * block, n)
            entries = slice(weights.indptr[start], weights.indptr[stop])
            slots = np.repeat(np.arange(stop - start) * width, lengths[start:stop]) + weights.indices[entries]
            dense[slots] = weights.data[entries]
            base, other = ((rows[pairs] - start) * width).astype(top_columns.dtype), columns[pairs]
            looked_up = dense[base[:, None] + top_columns[other]]
            bound = np.minimum(top_values[other], looked_up).sum(axis=1)
            bound += np.minimum(rest[other], row_mass[rows[pairs]] - looked_up.sum(axis=1))
            survivors = bound >= threshold
            pairs, base, other = pairs[survivors], base[survivors], other[survivors]
            positions = _ragged_positions(weights.indptr[other], lengths[other])
            minima = np.minimum(weights.data[positions],
                                dense[np.repeat(base, lengths[other]) + weights.indices[positions]])
            shared = minima != 0  # scipy's minimum stores only the non-zero results: the shared columns
            counts = np.bincount(np.repeat(np.arange(len(pairs)), lengths[other])[shared], minlength=len(pairs))
            nonempty = counts > 0
            if nonempty.any():
                overlaps[pairs[nonempty]] = np.add.reduceat(minima[shared], (np.cumsum(counts) - counts)[nonempty])
            kept[pairs] = True
            dense[slots] = 0.0

    _in_threads(run, len(bounds) - 1)
    return kept, overlaps


def _in_threads(run: Callable[[range], None], count: int) -> None:
    """run(part) over ``count`` items split into consecutive parts, one per torch thread (numpy and scipy release
    the GIL in their array loops). Parts write disjoint outputs, so the result does not depend on the threads."""
    workers = max(1, min(torch.get_num_threads(), count))
    parts = [range(count * w // workers, count * (w + 1) // workers) for w in range(workers)]
    if workers == 1:
        run(parts[0])
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(run, parts):  # re-raises a worker's exception here
            pass


def _pruned_jaccard(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    """Only the pairs within max_distance (< 1): candidates by prefix filtering, a tighter bound from each
    candidate's heaviest entries, then the exact overlap of those left (:func:`_bounded_overlaps`).

    The same distances as the all-pairs path for every pair within ``max_distance`` (the overlaps are
    summed in float64 instead of float32, so a pair within a float32 rounding of ``max_distance`` may
    fall on the other side), without enumerating the O(N * (N k / N)^2) pairs that share some weight.
    With a ``share`` the rows are split over the processes and every process returns the whole matrix.
    """
    n = weights.shape[0]
    threshold = _overlap_threshold(max_distance)
    order = _heaviest_first(weights)
    rows, columns = _candidate_pairs(weights, threshold - PREFIX_SLACK, share, order)
    if share is not None:
        mine = (rows >= share.rows.start) & (rows < share.rows.stop)
        rows, columns = rows[mine], columns[mine]
    if weights.has_canonical_format:  # sorted columns: the exact sums below follow scipy's order
        kept, overlaps = _bounded_overlaps(weights, rows, columns, threshold - PREFIX_SLACK, order)
        rows, columns, overlaps = rows[kept], columns[kept], overlaps[kept]
    else:
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
