"""Heterogeneous matching between the two groups of a scenario (docs/method.md sections 6.3 and 6.4).

* CHM (cluster level): Hungarian assignment of group-0 to group-1 clusters on the cost ``exp(-sim)``,
  extra rounds for the clusters of the larger side left over (many-to-one), unreliable pairs dropped
  (``match_clusters``'s ``reliability``).
* IHM (instance level): the intersection of an instance's top-k neighbours in the other group in image
  space and in text space (the text top-k keeps every candidate tied with the k-th).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# Bounds the (row chunk x other group) similarity matrix of the IHM search (float32 entries).
IHM_BLOCK_ELEMENTS = 1 << 25
# Dot products of equal unit vectors with one query may differ in the last bits (blocked matrix products).
TEXT_TIE_TOLERANCE = 1e-5


CHM_RELIABILITY = ("threshold", "none", "mutual", "mutual_many", "quantile")


def match_clusters(sim: np.ndarray, threshold: float = 0.5, rounds: int = 2, reliability: str = "threshold",
                   quantile: float = 0.5) -> np.ndarray:
    """Reliable cluster pairs ``(row, col)`` of a [A, B] similarity matrix, shape [M, 2], sorted by row.

    Round 1 is a one-to-one Hungarian assignment (``min(A, B)`` pairs). Each further round assigns the
    still unmatched clusters of the larger side once more against every cluster of the smaller side, so a
    cluster of the smaller side can take several partners (many-to-one). Which assigned pairs are kept
    (dropped pairs are not re-assigned) is ``reliability``:

    * ``threshold``: similarity >= ``threshold`` (docs/method.md's 0.5 on cosine);
    * ``none``: every pair (PGM keeps every Hungarian pair);
    * ``mutual``: the two clusters are each other's most similar cluster of the other side (so at most
      one partner per cluster: the many-to-one rounds keep a pair only where the round-1 pair was dropped);
    * ``mutual_many``: mutual nearest neighbours counted as many-to-one allows: the larger side's cluster
      has its partner as its most similar cluster of the other side and is among that partner's ``n`` most
      similar clusters, ``n`` being how many partners the partner was assigned (equal to ``mutual`` where
      every assigned pair is one-to-one; one person's two outfits can both keep one clothes-free view);
    * ``quantile``: similarity >= the ``quantile`` of the assigned pairs' similarities (the least similar
      fraction ``quantile`` is dropped).

    All but ``threshold`` are unchanged by adding a constant to every similarity, as a gap between the
    two groups' features does.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a 2-D matrix; got shape {sim.shape}")
    if rounds < 1:
        raise ValueError(f"CHM rounds must be >= 1; got {rounds}")
    if reliability not in CHM_RELIABILITY:
        raise ValueError(f"CHM reliability must be one of {CHM_RELIABILITY}; got {reliability!r}")
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"CHM quantile must be in [0, 1); got {quantile}")
    if 0 in sim.shape:
        return np.zeros((0, 2), dtype=np.int64)
    # exp(-sim) / exp(-max): the same assignment, without overflow for similarities far below 0
    cost = np.exp(sim.max() - sim)
    rows, cols = linear_sum_assignment(cost)
    pairs = [np.stack([rows, cols], axis=1)]
    rows_larger = sim.shape[0] > sim.shape[1]
    matched = set((rows if rows_larger else cols).tolist())
    larger = sim.shape[0] if rows_larger else sim.shape[1]
    for _ in range(rounds - 1):
        left = np.array(sorted(set(range(larger)) - matched), dtype=np.int64)
        if left.size == 0:
            break
        sub = cost[left] if rows_larger else cost[:, left].T  # [left, smaller side]
        r, c = linear_sum_assignment(sub)
        new = np.stack([left[r], c], axis=1) if rows_larger else np.stack([c, left[r]], axis=1)
        pairs.append(new)
        matched.update(left[r].tolist())
    pairs = np.concatenate(pairs).astype(np.int64)
    pair_sim = sim[pairs[:, 0], pairs[:, 1]]
    if reliability == "threshold":
        pairs = pairs[pair_sim >= threshold]
    elif reliability == "mutual":
        pairs = pairs[(sim.argmax(axis=1)[pairs[:, 0]] == pairs[:, 1]) & (sim.argmax(axis=0)[pairs[:, 1]] == pairs[:, 0])]
    elif reliability == "mutual_many":
        pairs = pairs[_mutual_many(sim, pairs, rows_larger)]
    elif reliability == "quantile":
        pairs = pairs[pair_sim >= np.quantile(pair_sim, quantile)]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _mutual_many(sim: np.ndarray, pairs: np.ndarray, rows_larger: bool) -> np.ndarray:
    """``match_clusters``'s ``mutual_many`` test, a bool per assigned pair (see there)."""
    by_larger = sim if rows_larger else sim.T  # [larger side, smaller side]
    large, small = (pairs[:, 0], pairs[:, 1]) if rows_larger else (pairs[:, 1], pairs[:, 0])
    partners = np.bincount(small, minlength=by_larger.shape[1])
    nearest = by_larger.argmax(axis=1)[large] == small
    rank = (by_larger[:, small] > by_larger[large, small]).sum(axis=0)  # 0 = the partner's most similar
    return nearest & (rank < partners[small])


def group_centred_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [A, B] of two groups' cluster centroids after removing each group's mean centroid.

    A direction shared by all of one group's features (a modality gap) drops out, so similarities say which
    clusters are close relative to the rest of their group. A group of one cluster is left as it is
    (centred, it would be the zero vector).
    """
    def centred(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x - x.mean(dim=0, keepdim=True) if len(x) > 1 else x, dim=1)

    return centred(a) @ centred(b).t()


def partner_table(pairs: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's L_chm target on the other side: its most similar kept partner, -1 when unmatched.

    Returns ``(partner_of_row [A], partner_of_col [B])``.
    """
    a, b = sim.shape
    best_row, best_col = np.full(a, -1, dtype=np.int64), np.full(b, -1, dtype=np.int64)
    score_row, score_col = np.full(a, -np.inf), np.full(b, -np.inf)
    for r, c in pairs:
        s = sim[r, c]
        if s > score_row[r]:
            best_row[r], score_row[r] = c, s
        if s > score_col[c]:
            best_col[c], score_col[c] = r, s
    return best_row, best_col


def topk_other(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (into ``candidates``) of each query's ``k`` most similar candidates (dot product), [Nq, k].

    Rows are processed in chunks so memory stays bounded by ``IHM_BLOCK_ELEMENTS`` whatever the size.
    """
    return _topk_chunked(queries, candidates, k)[1]


def kth_similarity(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Each query's ``k``-th largest similarity (dot product) to the candidates, [Nq] (k capped at their number)."""
    return _topk_chunked(queries, candidates, k)[0][:, -1]


def _topk_chunked(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, candidates.shape[0])
    values = torch.empty(queries.shape[0], k, dtype=queries.dtype, device=queries.device)
    indices = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
    chunk = max(1, IHM_BLOCK_ELEMENTS // max(1, candidates.shape[0]))
    for start in range(0, queries.shape[0], chunk):
        top = (queries[start:start + chunk] @ candidates.t()).topk(k, dim=1)
        values[start:start + chunk], indices[start:start + chunk] = top.values, top.indices
    return values, indices


def instance_positives(
    image_features: torch.Tensor,
    text_features: torch.Tensor | None,
    blocks: torch.Tensor,
    other_block: torch.Tensor,
    k: int = 10,
    tie_tolerance: float = TEXT_TIE_TOLERANCE,
) -> torch.Tensor:
    """IHM positive sets, [N, k] of global instance indices padded with -1 (an empty set is all -1).

    For instance i of block b, the candidates are the instances of ``other_block[b]`` (the other group of
    the same scenario; -1 = none); positives are the candidates among both its image-space top-k and its
    text-space top-k. The text top-k holds every candidate tied with the k-th: the instance text ``u`` is
    the same for every member of a cluster (Stage II's initialisation, DRU), so a whole cluster of the
    other group ties, and cutting through the tie by index would keep an arbitrary part of it. Without text
    (``text_features`` None: the ``no_text`` ablation) the positives are the image-space top-k alone.

    Args:
        image_features: [N, D] L2-normalised image features.
        text_features: [N, P] L2-normalised instance-level text ``u``, or None for image neighbours alone.
        blocks: [N] block of each instance.
        other_block: [num_blocks] the paired block of each block, -1 if the scenario lacks it.
        k: neighbours searched in each space.
        tie_tolerance: text similarities within this of the k-th count as tied with it (rounding of equal
            vectors' dot products).
    """
    if k < 1:
        raise ValueError(f"IHM k must be >= 1; got {k}")
    out = torch.full((len(blocks), k), -1, dtype=torch.long, device=image_features.device)
    for b in torch.unique(blocks).tolist():
        o = int(other_block[b])
        if o < 0:
            continue
        rows = torch.nonzero(blocks == b).flatten()
        cand = torch.nonzero(blocks == o).flatten()
        if cand.numel() == 0:
            continue
        by_image = topk_other(image_features[rows], image_features[cand], k)
        if text_features is None:
            out[rows, : by_image.shape[1]] = cand[by_image]
            continue
        query_text = text_features[rows]
        kth = kth_similarity(query_text, text_features[cand], k)
        text_sim = torch.empty(by_image.shape, dtype=query_text.dtype, device=query_text.device)
        chunk = max(1, IHM_BLOCK_ELEMENTS // max(1, by_image.shape[1] * query_text.shape[1]))
        for start in range(0, len(rows), chunk):  # text similarity of the image neighbours only
            neighbours = text_features[cand[by_image[start:start + chunk]]]  # [chunk, k, P]
            text_sim[start:start + chunk] = torch.bmm(neighbours, query_text[start:start + chunk, :, None])[..., 0]
        in_both = text_sim >= kth[:, None] - tie_tolerance
        found = torch.where(in_both, cand[by_image], torch.full_like(by_image, -1))
        # Positives first, padding last, so the table reads naturally.
        found = found.gather(1, (~in_both).to(torch.int8).argsort(dim=1, stable=True))
        out[rows, : found.shape[1]] = found
    return out
