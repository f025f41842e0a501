"""Losses of the ITKM stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cluster_nce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Homogeneous contrastive loss: cross-entropy over the (block-masked) memory logits.

    ``-log(exp(f.m_y/tau) / sum_k exp(f.m_k/tau))`` with k over the clusters of the sample's block; masked
    logits are -inf and drop out of the sum.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)


def supervised_contrastive(
    anchors: torch.Tensor, candidates: torch.Tensor, anchor_labels: torch.Tensor, candidate_labels: torch.Tensor,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """Multi-positive contrastive loss of each anchor against every candidate of the batch (CLIP-ReID stage 1).

    ``mean_i [ -1/|P_i| sum_{p in P_i} log softmax_j(scale * a_i . c_j)_p ]`` with ``P_i`` the candidates
    whose label equals anchor i's. Features are used as given (normalise them first for cosine logits).
    Image-to-text: anchors = image features, candidates = the text feature of each image's label;
    text-to-image: the same with the roles swapped. Anchors without any positive are skipped.
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    logits = scale * anchors @ candidates.T
    log_prob = F.log_softmax(logits, dim=1)
    positive = (anchor_labels[:, None] == candidate_labels[None, :]).to(log_prob.dtype)
    counts = positive.sum(dim=1)
    has_positive = counts > 0
    per_anchor = -(positive * log_prob).sum(dim=1)[has_positive] / counts[has_positive]
    if per_anchor.numel() == 0:
        return logits.sum() * 0.0
    return per_anchor.mean()


def scenario_separation(features: torch.Tensor, scenarios: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Multi-scenario separation hinge: mean over pairs (a, b) from different scenarios of max(0, cos - margin).

    ``features`` (C, P) are the text features of distinct clusters; each unordered pair counts once.
    Zero (still differentiable) when every feature belongs to one scenario.
    """
    normed = F.normalize(features, dim=1)
    cosine = normed @ normed.T
    different = scenarios[:, None] != scenarios[None, :]
    pairs = torch.triu(different, diagonal=1)
    if not bool(pairs.any()):
        return features.sum() * 0.0
    return F.relu(cosine[pairs] - margin).mean()
