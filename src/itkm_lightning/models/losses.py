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
