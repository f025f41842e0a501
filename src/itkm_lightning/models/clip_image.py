"""CLIP's vision tower as ITKM's image tower: rectangular person crops, scenario embedding, dual branch.

* the square position table of a ``CLIPModel`` is resized once (bicubic, CLS row kept) to the patch
  grid of ``backbone.image_size`` and stays learnable;
* a learnable scenario table is added to the CLS token (``cls``) or to every token (``all``);
* one patch-embedding convolution per homogeneous group (docs/method.md section 2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPModel

from itkm_lightning.models.backbone_config import BackboneConfig, patch_grid
from itkm_lightning.models.clip_loading import check_clip_layout, load_clip_model
from itkm_lightning.models.image_tower import ImageFeatures, ImageTower, run_per_group, scenario_table


def resize_position_table(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize a (1 + G*G, D) ViT position table to (1 + H*W, D) with bicubic interpolation; CLS row kept."""
    num_patches = table.shape[0] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"expected a square position table (1 + G*G rows), got {table.shape[0]} rows")
    cls_row, patch_rows = table[:1], table[1:]
    if (side, side) == tuple(grid):
        return table.clone()
    square = patch_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(table.dtype)
    return torch.cat([cls_row, resized], dim=0)


class CLIPImageEncoder(ImageTower):
    """CLIP ViT on (H, W) crops with a scenario embedding and one patch-embedding branch per group.

    Holds only the CLIP modules it uses (not the text tower, not HF's square position table), so that
    DDP sees no unused parameters and checkpoints stay small.
    """

    def __init__(self, cfg: BackboneConfig, clip_model: CLIPModel | None = None) -> None:
        super().__init__()
        clip_model = load_clip_model(cfg) if clip_model is None else clip_model
        check_clip_layout(clip_model)
        vision = clip_model.vision_model
        patch_conv: nn.Conv2d = vision.embeddings.patch_embedding
        self.cfg = cfg
        self.patch_size = int(patch_conv.kernel_size[0])
        self.grid_size = patch_grid(cfg.image_size, self.patch_size)
        # Branch 0 is CLIP's conv; extra branches start as copies of it (section 2 of docs/method.md).
        self.patch_embeddings = nn.ModuleList(
            [patch_conv] + [copy.deepcopy(patch_conv) for _ in range(cfg.num_branches - 1)]
        )
        self.class_embedding = vision.embeddings.class_embedding
        square_table = vision.embeddings.position_embedding.weight.detach()
        self.position_embedding = nn.Parameter(resize_position_table(square_table, self.grid_size))
        self.pre_layernorm = vision.pre_layrnorm
        self.encoder = vision.encoder
        self.post_layernorm = vision.post_layernorm
        self.visual_projection = clip_model.visual_projection
        self.scenario_embedding = scenario_table(cfg, self.class_embedding.numel(), like=self.class_embedding)

    @property
    def feature_dim(self) -> int:
        return int(self.class_embedding.numel())

    @property
    def in_channels(self) -> int:
        return int(self.patch_embeddings[0].in_channels)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that start from nothing pretrained (the scenario embedding): the larger ``lr_new``.

        The extra patch branches are not among them: they start as copies of CLIP's convolution, and
        training one at ``lr_new`` (70x the base rate in ums.yaml) drifts it away from the other branch.
        The position table, resized from CLIP's, is pretrained too.
        """
        return [] if self.scenario_embedding is None else [self.scenario_embedding]

    def forward(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> ImageFeatures:
        self._check_inputs(pixel_values, scenario, group)
        tokens = self.embed(pixel_values, scenario, group)
        hidden = self.encoder(inputs_embeds=self.pre_layernorm(tokens))[0]
        features = self.post_layernorm(hidden[:, 0])  # the CLS token
        return ImageFeatures(f=features, v=self.visual_projection(features))

    def embed(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> Tensor:
        """Token sequence (B, 1 + N, D): group's patch conv, CLS, scenario embedding, position table."""
        pixel_values = pixel_values.to(self.patch_embeddings[0].weight.dtype)
        patches = run_per_group(self.patch_embeddings, pixel_values, group, after=_flatten_patches)
        return self.tokens_from_patches(patches, scenario)

    def tokens_from_patches(self, patches: Tensor, scenario: Tensor) -> Tensor:
        """(B, N, D) patch tokens -> (B, 1 + N, D): CLS, scenario embedding, position table (no Python branching
        on tensor values, so exporters can trace it)."""
        cls_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls_token, patches], dim=1)
        if self.scenario_embedding is not None:
            offset = self.cfg.scenario_embedding_scale * self.scenario_embedding[scenario].unsqueeze(1)
            if self.cfg.scenario_embedding == "cls":
                tokens = torch.cat([tokens[:, :1] + offset, tokens[:, 1:]], dim=1)
            else:
                tokens = tokens + offset
        return tokens + self.position_embedding.unsqueeze(0)


def _flatten_patches(feature_map: Tensor) -> Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
