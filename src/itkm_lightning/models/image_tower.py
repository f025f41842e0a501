"""What every image tower provides (CLIP's ViT in ``clip_image.py``, a timm CNN in ``timm_tower.py``).

Stages, ``embed``, ``export`` and ``evaluate`` call a tower as ``tower(pixel_values, scenario, group)`` and
get :class:`ImageFeatures`; they read ``cfg``, ``feature_dim``, ``projection_dim``, ``visual_projection``
and split parameters with ``new_parameters()`` / ``pretrained_parameters()``. The dual branch (one input
block per homogeneous group) and the scenario table are built the same way in both towers, here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from itkm_lightning.models.backbone_config import BackboneConfig


class ImageFeatures(NamedTuple):
    f: Tensor  # (B, D) the tower's feature: clustering, memories, retrieval
    v: Tensor  # (B, P) visual_projection(f): compared with text features


class ImageTower(nn.Module):
    """Base class of the image towers; a subclass sets ``cfg`` and ``visual_projection`` and defines
    ``forward``, ``feature_dim``, ``in_channels`` and ``new_parameters``."""

    cfg: BackboneConfig
    visual_projection: nn.Linear

    @property
    def projection_dim(self) -> int:
        return int(self.visual_projection.out_features)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that start from nothing pretrained: trained at the larger ``optim.lr_new``."""
        raise NotImplementedError

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Every parameter that ``new_parameters`` does not list."""
        new_ids = {id(param) for param in self.new_parameters()}
        return [param for param in self.parameters() if id(param) not in new_ids]

    def _check_inputs(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> None:
        expected = (self.in_channels, *self.cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(pixel_values.shape)}; resize images to backbone.image_size."
            )
        batch = pixel_values.shape[0]
        if batch == 0:
            raise ValueError("pixel_values holds an empty batch; drop empty batches before the encoder.")
        check_index_tensor("scenario", scenario, batch, self.cfg.num_scenarios)
        check_index_tensor("group", group, batch, self.cfg.num_groups)


def scenario_table(cfg: BackboneConfig, width: int, like: Tensor | None = None) -> nn.Parameter | None:
    """The learnable (num_scenarios, width) scenario embedding, truncated normal with std 0.02 (dtype and
    device of ``like``); None for mode ``none``, so that no parameter sits unused under DDP."""
    if cfg.scenario_embedding == "none":
        return None
    options = {} if like is None else {"dtype": like.dtype, "device": like.device}
    table = torch.empty(cfg.num_scenarios, width, **options)
    nn.init.trunc_normal_(table, std=0.02)
    return nn.Parameter(table)


def run_per_group(
    branches: nn.ModuleList, x: Tensor, group: Tensor, after: Callable[[Tensor], Tensor] = lambda out: out
) -> Tensor:
    """``after(branches[g](x_i))`` for each image ``i`` of group ``g``, back in batch order (the dual branch)."""
    if len(branches) == 1:
        return after(branches[0](x))
    # Each branch sees only its own group's images (its BatchNorm statistics too).
    chunks, order = [], []
    for index, branch in enumerate(branches):
        members = torch.nonzero(group == index, as_tuple=True)[0]
        if members.numel():
            chunks.append(after(branch(x.index_select(0, members))))
            order.append(members)
    out = torch.cat(chunks)
    out = torch.zeros_like(out).index_copy(0, torch.cat(order), out)
    absent = [branch for index, branch in enumerate(branches) if not bool((group == index).any())]
    if absent and torch.is_grad_enabled():
        # DDP expects a gradient for every parameter at every step; a group missing from this batch
        # contributes exactly zero instead of forcing find_unused_parameters on every user.
        out = out + 0.0 * sum(p.sum() for branch in absent for p in branch.parameters())
    return out


def check_index_tensor(name: str, index: Tensor, batch: int, upper: int) -> None:
    """``index`` must be a (batch,) integer tensor with values in [0, upper)."""
    if index.dim() != 1 or index.shape[0] != batch or index.dtype.is_floating_point or index.dtype == torch.bool:
        shape = tuple(index.shape)
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},), got {index.dtype} {shape}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= upper:
        raise ValueError(
            f"{name} values must lie in [0, {upper}), got values from {low} to {high}; check backbone.num_{name}s."
        )
