"""Getting a ``transformers.CLIPModel``: from the hub, a local folder or the local HF cache, or random.

* ``load_clip_model`` never falls back silently to random weights: without the files it raises
  :class:`BackboneUnavailableError` with the fix (download the folder elsewhere, point ``name_or_path`` at it).
* ``clip_architecture`` builds a model of the right shape from config.json alone, to load trained weights into.
* ``save_clip_directory`` writes a folder that loads back like a hub checkpoint.

We address ``CLIPModel`` submodules by name (HF's ``CLIPVisionModel``/``get_image_features`` changed shape
between major versions); ``check_clip_layout`` asserts those names once, right after loading.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import get_session as hub_session
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

from itkm_lightning.models.backbone_config import DEFAULT_CLIP, BackboneConfig
from itkm_lightning.errors import ITKMError

logger = logging.getLogger(__name__)

# Every CLIPModel attribute the project's CLIP towers rely on (HF spells the vision pre-norm "pre_layrnorm").
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


class BackboneUnavailableError(ITKMError, RuntimeError):
    """Pretrained CLIP weights could not be loaded (offline without a local copy, missing directory...)."""


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
                "this version renamed a CLIP submodule that itkm_lightning.models relies on: "
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
