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


def masked_logits(
    features: torch.Tensor, bank: torch.Tensor, bank_blocks: torch.Tensor, target_blocks: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scale * features @ bank.T`` with -inf wherever the bank row's block is not the sample's target block."""
    logits = features @ bank.t() * scale
    return logits.masked_fill(bank_blocks[None, :] != target_blocks[:, None], float("-inf"))


def chm_loss(
    features: torch.Tensor,
    centroids: torch.Tensor,
    centroid_blocks: torch.Tensor,
    other_blocks: torch.Tensor,
    partners: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cluster-level heterogeneous loss: ClusterNCE against the *other* group's centroids.

    ``-log(exp(f.m_p/tau) / sum_k exp(f.m_k/tau))``, p = the CHM partner of the sample's cluster, k over
    the clusters of the other group of its scenario; samples whose cluster has no partner (-1) are left out.
    """
    keep = partners >= 0
    logits = masked_logits(features[keep], centroids, centroid_blocks, other_blocks[keep], 1.0 / temperature)
    return cluster_nce(logits, partners[keep])


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``-log(sum_{p in P} exp(s_p) / sum_j exp(s_j))`` per row, averaged over rows with a positive.

    ``logits`` may hold -inf (excluded candidates); ``positive`` is a boolean mask of the same shape.
    Rows without any positive are left out; with none at all the loss is a graph-connected zero.
    """
    rows = positive.any(dim=1)
    if not rows.any():
        # -inf * 0 is NaN: zero out the masked entries, then multiply by 0 to keep the graph connected.
        return torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits)).sum() * 0.0
    logits, positive = logits[rows], positive[rows]
    pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def ihm_loss(
    features: torch.Tensor,
    bank: torch.Tensor,
    bank_blocks: torch.Tensor,
    other_blocks: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Instance-level heterogeneous loss: multi-positive InfoNCE against the other group's instance memory.

    Candidates of sample i are the bank rows of ``other_blocks[i]`` (the other group of its scenario);
    ``positives`` [B, k] holds bank indices of its IHM set, padded with -1 (an empty set leaves it out).
    """
    logits = masked_logits(features, bank, bank_blocks, other_blocks, 1.0 / temperature)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    valid = positives >= 0
    row = torch.arange(len(positives), device=positives.device)[:, None].expand_as(positives)
    positive[row[valid], positives[valid]] = True
    positive &= torch.isfinite(logits)  # a positive outside the candidate block would be meaningless
    return multi_positive_nce(logits, positive)


def text_contrastive_loss(
    v: torch.Tensor,
    prototypes: torch.Tensor,
    prototype_blocks: torch.Tensor,
    sample_blocks: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Text-guided loss: cross-entropy of ``v`` against the cluster text prototypes ``t_c`` of its own block.

    Logits are ``logit_scale * cos(v, t_c)`` (CLIP's scale); clusters of other blocks are masked out. With
    ``label_smoothing`` eps the target is ``(1 - eps) * one_hot + eps / K`` over the K clusters of the
    sample's block (CLIP-ReID's and CCLNet's smoothed image-to-text cross-entropy):
    ``(1 - eps) * -log p_y + eps * mean_k -log p_k``.
    """
    v = F.normalize(v, dim=1)
    logits = masked_logits(v, prototypes, prototype_blocks, sample_blocks, logit_scale)
    return smoothed_cross_entropy(logits, labels, label_smoothing)


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy whose uniform part spreads over the finite logits of each row only.

    (``F.cross_entropy(label_smoothing=...)`` would spread it over masked -inf entries too: an infinite loss.)
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1); got {smoothing}")
    if logits.shape[0] == 0 or smoothing == 0.0:
        return cluster_nce(logits, targets)
    log_prob = F.log_softmax(logits, dim=1)
    finite = torch.isfinite(logits)
    nll = -log_prob.gather(1, targets[:, None])[:, 0]
    uniform = -torch.where(finite, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / finite.sum(dim=1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()
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
