"""The single-gallery-shot CMC of the cross-resolution literature (docs/protocols.md 5.7)."""

from __future__ import annotations

from typing import Any

import numpy as np

from itkm_lightning.evaluation.distances import _distance_matrix
from itkm_lightning.evaluation.protocols import _Labels
from itkm_lightning.evaluation.ranking import _row_blocks, evaluate_rank

SINGLE_GALLERY_SHOT_DRAWS = 10
"""Gallery draws of the single-gallery-shot protocol (open-reid's ``single_gallery_shot=True`` repeats 10)."""


def evaluate_single_gallery_shot(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    draws: int = SINGLE_GALLERY_SHOT_DRAWS,
    max_rank: int = 50,
) -> dict[str, Any]:
    """The single-gallery-shot protocol of the cross-resolution literature (docs/protocols.md 5.7).

    For draw ``d = 0 .. draws - 1``, ``numpy.random.default_rng(d)`` draws, for every query, one gallery
    image per identity among the entries the Market rule keeps (same identity and same camera removed):
    the generator fills one uniform key per (query, gallery entry), query by query in gallery order, and
    each identity's kept entry with the largest key is drawn. The CMC of that one-image-per-identity
    gallery (stable ranking, ties in gallery order) is averaged over the draws; mAP and mINP are those of
    the full gallery (``evaluate_rank`` with ``protocol="market"``). Queries without a kept match are
    skipped, as in ``evaluate_rank``.

    Returns ``{"cmc", "cmc_draws" (draws x max_rank), "mAP", "mINP", "num_valid"}``.
    """
    full = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol="market", max_rank=max_rank)
    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}.")
    distances = _distance_matrix(distmat)
    labels = _Labels.build(distances.shape, q_pids, g_pids, q_camids, g_camids, None, None, "market")
    num_gallery = distances.shape[1]
    by_identity = np.argsort(labels.g_pid, kind="stable")
    sorted_pid = labels.g_pid[by_identity]
    identity_start = np.flatnonzero(np.r_[True, sorted_pid[1:] != sorted_pid[:-1]])
    identity_of_column = np.empty(num_gallery, dtype=np.int64)
    identity_of_column[by_identity] = np.cumsum(np.r_[True, sorted_pid[1:] != sorted_pid[:-1]]) - 1
    column_index = np.arange(num_gallery)
    curves = np.zeros((draws, max_rank))
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        histogram = np.zeros(max_rank + 1, dtype=np.int64)
        num_valid = 0
        for rows in _row_blocks(np.arange(distances.shape[0]), num_gallery):
            block = np.asarray(distances[rows[0] : rows[-1] + 1], dtype=np.float64)
            keys = rng.random(block.shape)
            same_pid = labels.q_pid[rows][:, None] == labels.g_pid[None, :]
            kept = ~(same_pid & (labels.q_cam[rows][:, None] == labels.g_cam[None, :]))
            keys[~kept] = -1.0
            best = np.maximum.reduceat(keys[:, by_identity], identity_start, axis=1)
            drawn = kept & (keys == best[:, identity_of_column])
            match = drawn & same_pid
            valid = match.any(axis=1)
            match_col = match.argmax(axis=1)[valid]
            block, drawn, same_pid = block[valid], drawn[valid], same_pid[valid]
            match_value = block[np.arange(block.shape[0]), match_col][:, None]
            before = (block < match_value) | ((block == match_value) & (column_index < match_col[:, None]))
            rank = (before & drawn & ~same_pid).sum(axis=1)
            histogram += np.bincount(np.minimum(rank, max_rank), minlength=max_rank + 1)
            num_valid += int(valid.sum())
        curves[draw] = np.cumsum(histogram)[:max_rank] / max(num_valid, 1)
    return {"cmc": curves.mean(axis=0), "cmc_draws": curves, "mAP": full["mAP"], "mINP": full["mINP"],
            "num_valid": full["num_valid"]}
