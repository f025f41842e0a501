"""Cluster memories: one L2-normalised centroid per pseudo-identity, tagged with its (scenario, group) block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemory(nn.Module):
    """Centroids of every block's clusters in one table; logits are masked to the sample's own block.

    One table (rather than a module per block) keeps a single matmul per step and one buffer to checkpoint.
    """

    def __init__(self, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1); got {momentum}")
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(0, dim))
        self.register_buffer("blocks", torch.zeros(0, dtype=torch.long))

    @property
    def num_clusters(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor, blocks: torch.Tensor) -> None:
        """Rebuild from per-sample features: centroid of each label >= 0 (labels are 0..C-1)."""
        keep = labels >= 0
        labels, features, blocks = labels[keep], features[keep], blocks[keep]
        num = int(labels.max().item()) + 1 if labels.numel() else 0
        sums = torch.zeros(num, features.shape[1], dtype=features.dtype, device=features.device)
        sums.index_add_(0, labels, features)
        cluster_blocks = torch.full((num,), -1, dtype=torch.long, device=features.device)
        cluster_blocks[labels] = blocks
        self.features = F.normalize(sums, dim=1).to(self.features.device)
        self.blocks = cluster_blocks.to(self.blocks.device)

    def resize_like(self, features: torch.Tensor, blocks: torch.Tensor) -> None:
        """Match shapes of a checkpoint's buffers before ``load_state_dict`` (the cluster count varies)."""
        self.features = torch.zeros_like(features, device=self.features.device)
        self.blocks = torch.zeros_like(blocks, device=self.blocks.device)

    def logits(self, features: torch.Tensor, sample_blocks: torch.Tensor, temperature: float) -> torch.Tensor:
        """Cosine logits / temperature; clusters of other blocks get -inf (ClusterNCE inside the block)."""
        # A copy: the in-place momentum update after this step must not touch what backward needs.
        logits = features @ self.features.clone().t() / temperature
        other_block = sample_blocks[:, None] != self.blocks[None, :]
        return logits.masked_fill(other_block, float("-inf"))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``m <- mu*m + (1-mu)*f``, renormalised, one sample at a time in batch order (as Cluster Contrast)."""
        for f, y in zip(features, labels):
            m = self.momentum * self.features[y] + (1.0 - self.momentum) * f
            self.features[y] = m / m.norm().clamp_min(1e-12)
