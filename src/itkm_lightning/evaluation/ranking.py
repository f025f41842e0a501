"""Rank-based re-identification metrics (CMC, mAP, mINP) under the protocols of docs/protocols.md section 5.

How the ranking is computed, and why it is fast
-----------------------------------------------
The definitions (docs/protocols.md 5.1) sort every query row with a stable sort, drop the gallery entries
the protocol removes, and read off the 0-based positions of the true matches in what is left (the
*kept list*). Sorting whole rows with ``np.argsort(kind="stable")`` costs about 5 s at Market-1501
scale on one core, so this module never builds the ranked list. It only needs the kept positions of
the matches, which are few per query:

* the stable-sort position of gallery entry ``j`` in row ``i`` is the number of entries with a smaller
  distance plus the number of *equal* distances at a smaller gallery index; the first count comes from
  a batched binary search in the row sorted by value (``np.sort``, several times faster than a stable
  argsort), the second is only evaluated where a tie actually occurs;
* every entry a protocol removes shares the query's identity (market, llcm and the clothes
  protocols), so the kept position of a match is its stable position minus the removed same-identity
  entries ranked before it; SYSU's rule (drop camera 2 for camera-3 queries, whatever the identity) is
  applied instead by scoring the camera-3 queries against the gallery without camera 2, which keeps the
  gallery order and therefore the tie-breaking.

Query rows are processed in blocks so that memory stays bounded whatever the matrix size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from itkm_lightning.evaluation.distances import _distance_matrix
from itkm_lightning.evaluation.protocols import (
    _DISTINCT_IDENTITY_CMC,
    Protocol,
    _Labels,
    _query_groups,
    _removed_pairs,
)

_BLOCK_ELEMENTS = 1 << 22
"""Upper bound on the elements of a query-block × gallery array (4 Mi: 16 MiB of float32)."""


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    q_clothes: Any = None,
    g_clothes: Any = None,
    protocol: Protocol = "market",
    max_rank: int = 50,
) -> dict[str, Any]:
    """Score a query × gallery distance matrix (smaller = closer) under one protocol.

    Returns ``{"cmc": array (max_rank,), "mAP": float, "mINP": float, "num_valid": int}``, all metrics
    as fractions in [0, 1], averaged over the valid queries (those with at least one match left after
    the protocol's removal; the others are skipped and not counted in ``num_valid``).

    ``cmc[k - 1]`` is the fraction of valid queries whose first match lies within the top k of the
    kept list (top k distinct identities for ``sysu`` and ``llcm``). It is defined for every k up to
    ``max_rank``: when a query's kept list is shorter than ``max_rank``, its curve is padded with its
    last value (1, since a valid query's match is in its list).

    Protocols (docs/protocols.md section 5): ``market`` removes same identity and same camera; ``sysu``
    removes every camera-2 gallery entry for camera-3 queries and counts distinct identities in the CMC;
    ``llcm`` removes same identity and same camera and counts distinct identities; ``regdb`` removes
    nothing; ``cloth_changing`` and ``same_clothes`` remove same identity and same camera, and also same
    identity with the same (resp. different) clothes, which need ``q_clothes`` and ``g_clothes``
    (compared as strings). Inputs may be numpy arrays, torch tensors or sequences.
    """
    distances = _distance_matrix(distmat)
    labels = _Labels.build(
        distances.shape, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol
    )
    if not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}.")

    totals = _Totals(max_rank=int(max_rank))
    for query_rows, gallery_cols in _query_groups(protocol, labels):
        for block_rows in _row_blocks(query_rows, len(gallery_cols)):
            block = _take_block(distances, block_rows, gallery_cols)
            totals.add(_score_block(block, block_rows, gallery_cols, labels, protocol))
    return totals.result()


def summarize(result: dict[str, Any], ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Flatten an ``evaluate_rank`` result to ``{"mAP", "R1", "R5", "R10", "mINP"}`` (fractions)."""
    cmc = np.asarray(result["cmc"], dtype=np.float64)
    summary = {"mAP": float(result["mAP"])}
    for rank in ranks:
        if not 1 <= rank <= cmc.size:
            raise ValueError(
                f"rank {rank} is outside the CMC curve (length {cmc.size}); evaluate with "
                f"max_rank >= {rank}."
            )
        summary[f"R{rank}"] = float(cmc[rank - 1])
    summary["mINP"] = float(result["mINP"])
    return summary


def _take_block(distances: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """distances[rows][:, cols], as a view when rows are consecutive and cols the whole gallery."""
    consecutive = rows.size > 0 and rows[-1] - rows[0] + 1 == rows.size
    row_part = distances[rows[0] : rows[-1] + 1] if consecutive else distances[rows]
    return row_part if cols.size == distances.shape[1] else row_part[:, cols]


def _row_blocks(rows: np.ndarray, num_cols: int) -> Iterator[np.ndarray]:
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(num_cols, 1))
    for start in range(0, rows.size, rows_per_block):
        yield rows[start : start + rows_per_block]


@dataclass
class _BlockScores:
    """Per valid query of one block: AP, INP and the 0-based rank of its first hit in the CMC sense."""

    average_precision: np.ndarray
    inverse_negative_penalty: np.ndarray
    first_hit_rank: np.ndarray


@dataclass
class _Totals:
    max_rank: int
    num_valid: int = 0
    ap_sum: float = 0.0
    inp_sum: float = 0.0
    hit_histogram: np.ndarray = field(init=False)
    """hit_histogram[k]: valid queries whose first hit has rank k; the last bin: rank ≥ max_rank."""

    def __post_init__(self) -> None:
        self.hit_histogram = np.zeros(self.max_rank + 1, dtype=np.int64)

    def add(self, scores: _BlockScores) -> None:
        self.num_valid += scores.first_hit_rank.size
        self.ap_sum += float(scores.average_precision.sum())
        self.inp_sum += float(scores.inverse_negative_penalty.sum())
        clipped = np.minimum(scores.first_hit_rank, self.max_rank)
        self.hit_histogram += np.bincount(clipped, minlength=self.max_rank + 1)

    def result(self) -> dict[str, Any]:
        if self.num_valid == 0:
            raise ValueError(
                "No query has a true match in the gallery after the protocol's removal; check that "
                "query and gallery share identities and that the protocol fits the dataset."
            )
        cmc = np.cumsum(self.hit_histogram)[: self.max_rank] / self.num_valid
        return {
            "cmc": cmc.astype(np.float64),
            "mAP": self.ap_sum / self.num_valid,
            "mINP": self.inp_sum / self.num_valid,
            "num_valid": self.num_valid,
        }


def _score_block(
    block: np.ndarray,
    query_rows: np.ndarray,
    gallery_cols: np.ndarray,
    labels: _Labels,
    protocol: str,
) -> _BlockScores:
    """Score the queries ``query_rows`` against ``gallery_cols``; ``block`` is their distance block."""
    query_pid = labels.q_pid[query_rows]
    gallery_pid = labels.g_pid[gallery_cols]
    # Every same-identity pair; all later work is on these few pairs.
    pair_row, pair_col = _same_identity_pairs(query_pid, gallery_pid)
    stable_rank = _stable_sort_positions(block, pair_row, pair_col)
    removed = _removed_pairs(protocol, labels, query_rows[pair_row], gallery_cols[pair_col])

    order = np.lexsort((stable_rank, pair_row))
    pair_row, pair_col = pair_row[order], pair_col[order]
    stable_rank, removed = stable_rank[order], removed[order]
    removed_before = _exclusive_count_per_row(removed, pair_row, block.shape[0])

    kept = ~removed
    hit_row, hit_col = pair_row[kept], pair_col[kept]
    hit_position = stable_rank[kept] - removed_before[kept]  # 0-based position in the kept list

    num_hits = np.bincount(hit_row, minlength=block.shape[0])
    first_hit = np.searchsorted(hit_row, np.arange(block.shape[0]))
    valid = num_hits > 0
    hit_number = np.arange(hit_row.size) - first_hit[hit_row] + 1  # j in AP = (1/P) Σ j / (p_j + 1)

    precision_sums = np.bincount(
        hit_row, weights=hit_number / (hit_position + 1), minlength=block.shape[0]
    )
    average_precision = precision_sums[valid] / num_hits[valid]
    last_position = hit_position[first_hit[valid] + num_hits[valid] - 1]
    inverse_negative_penalty = num_hits[valid] / (last_position + 1)

    first_position = hit_position[first_hit[valid]]
    if protocol in _DISTINCT_IDENTITY_CMC:
        first_position = _distinct_identities_before(
            block[valid], gallery_pid, query_pid[valid], hit_col[first_hit[valid]]
        )
    return _BlockScores(average_precision, inverse_negative_penalty, first_position)


def _same_identity_pairs(
    query_pid: np.ndarray, gallery_pid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every query/gallery pair sharing an identity, grouped by row.

    Built from the gallery grouped by identity, in time proportional to the number of pairs rather
    than to the size of the block.
    """
    by_identity = np.argsort(gallery_pid, kind="stable")
    num_codes = int(max(query_pid.max(initial=0), gallery_pid.max(initial=0))) + 1
    identity_size = np.bincount(gallery_pid, minlength=num_codes)
    identity_start = np.cumsum(identity_size) - identity_size
    pairs_per_row = identity_size[query_pid]
    pair_row = np.repeat(np.arange(query_pid.size), pairs_per_row)
    row_first_pair = np.cumsum(pairs_per_row) - pairs_per_row
    offset_in_row = np.arange(pair_row.size) - np.repeat(row_first_pair, pairs_per_row)
    pair_col = by_identity[identity_start[query_pid[pair_row]] + offset_in_row]
    return pair_row, pair_col


def _exclusive_count_per_row(flags: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """For entries grouped by row (rows sorted), count the True flags before each entry in its row."""
    running = np.cumsum(flags) - flags
    row_start = np.searchsorted(rows, np.arange(num_rows))
    return running - running[row_start[rows]] if rows.size else running


def _stable_sort_positions(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Position of ``block[rows, cols]`` in its row after a stable ascending sort (ties: gallery order).

    Equals ``#{k : d_k < d_j} + #{k < j : d_k == d_j}``; the second term only matters on exact ties,
    so it is computed for tied entries alone.
    """
    values = block[rows, cols]
    sorted_block = np.sort(block, axis=1)
    below = _count_in_sorted_rows(sorted_block, rows, values, inclusive=False)
    tied = np.flatnonzero(_count_in_sorted_rows(sorted_block, rows, values, inclusive=True) - below > 1)
    width = block.shape[1]
    tie_chunk = max(1, _BLOCK_ELEMENTS // max(width, 1))
    column_index = np.arange(width)
    for start in range(0, tied.size, tie_chunk):
        chunk = tied[start : start + tie_chunk]
        equal_before = (block[rows[chunk]] == values[chunk, None]) & (column_index < cols[chunk, None])
        below[chunk] += equal_before.sum(axis=1)
    return below


def _count_in_sorted_rows(
    sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, *, inclusive: bool
) -> np.ndarray:
    """For each i, count entries of ``sorted_rows[rows[i]]`` below ``values[i]`` (or ≤ if inclusive).

    This is ``np.searchsorted`` on many rows at once: numpy's version takes a single sorted array, so
    calling it per row would mean a Python loop over queries. The binary search runs on all entries in
    lock-step for ⌈log2(width + 1)⌉ steps.
    """
    width = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    row_start = rows.astype(np.int64) * width
    low = np.zeros(rows.size, dtype=np.int64)
    high = np.full(rows.size, width, dtype=np.int64)
    goes_right = np.less_equal if inclusive else np.less
    for _ in range(int(width).bit_length()):
        middle = (low + high) // 2
        active = low < high
        # Finished searches may point one past their row; clamp so the read stays in bounds.
        probe = flat[row_start + np.minimum(middle, width - 1)]
        right = goes_right(probe, values) & active
        low = np.where(right, middle + 1, low)
        high = np.where(active & ~right, middle, high)
    return low


def _distinct_identities_before(
    rows: np.ndarray, gallery_pid: np.ndarray, query_pid: np.ndarray, first_hit_col: np.ndarray
) -> np.ndarray:
    """Rank of each query's identity on its ranked list with repeated identities collapsed.

    That is the number of other identities with an entry ranked before the first kept match. Removed
    entries all carry the query's identity, so excluding that identity also excludes them.
    """
    first_value = rows[np.arange(rows.shape[0]), first_hit_col][:, None]
    column_index = np.arange(rows.shape[1])
    tied_earlier = (rows == first_value) & (column_index < first_hit_col[:, None])
    ranked_before = (rows < first_value) | tied_earlier
    ranked_before &= gallery_pid[None, :] != query_pid[:, None]
    by_identity = np.argsort(gallery_pid, kind="stable")
    sorted_pid = gallery_pid[by_identity]
    identity_start = np.flatnonzero(np.r_[True, sorted_pid[1:] != sorted_pid[:-1]])
    identity_seen = np.logical_or.reduceat(ranked_before[:, by_identity], identity_start, axis=1)
    return identity_seen.sum(axis=1)
