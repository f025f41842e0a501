"""Saving a rectangular-grid position table as a square one (the demo's tiny CLIP, docs/pretraining.md).

``CLIPImageEncoder`` keeps its position table on the (H, W) patch grid, while a ``CLIPModel`` folder
stores a square one; this finds the square table that loads back to the trained numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from itkm_lightning.models.clip_image import resize_position_table


def fit_square_position_table(table: Tensor, grid: tuple[int, int], side: int) -> Tensor:
    """A (1 + side*side, D) square table that ``resize_position_table`` turns back into ``table`` on ``grid``.

    Lets a model trained on rectangular inputs (its position table on the (H, W) patch grid) be saved
    as a standard square-table CLIPModel that loads back to the same numbers. The resize is linear
    and, for ``side >= max(grid)``, onto, so exact pre-images exist; this returns the one closest to
    the bicubic up-sampling of ``table`` (a smooth table, not an arbitrary one). CLS row kept.
    """
    height, width = grid
    if table.dim() != 2 or table.shape[0] != 1 + height * width:
        raise ValueError(f"expected a (1 + {height}*{width}, D) position table, got shape {tuple(table.shape)}")
    if side < max(grid):
        raise ValueError(f"side {side} must be >= max(grid) = {max(grid)} for an exact square table")
    squares = side * side
    basis = torch.cat([torch.zeros(1, squares), torch.eye(squares)]).double()
    operator = resize_position_table(basis, grid)[1:].double()  # (H*W, side*side), column j = basis j resized
    rect = table[1:].detach().double()
    start = F.interpolate(
        rect.T.reshape(1, -1, height, width), size=(side, side), mode="bicubic", align_corners=False
    ).reshape(-1, squares).T
    square = start + torch.linalg.pinv(operator) @ (rect - operator @ start)
    return torch.cat([table[:1].detach(), square.to(table.dtype)])


