"""Open the trained image encoder from a checkpoint, a stage handoff or a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from itkm_lightning import safe_load
from itkm_lightning.errors import DataFormatError, DataUnavailableError
from itkm_lightning.models.backbone import build_image_encoder
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder

ENCODER_PREFIX = "encoder."
# A run directory's finished stages, most trained first (stage2 trains text only: no image encoder).
HANDOFF_STAGES = ("stage3", "stage1")


def load_image_encoder(source: str | Path) -> tuple[CLIPImageEncoder, BackboneConfig]:
    """``(encoder, backbone config)`` in eval mode on CPU, from any of:

    * a Lightning checkpoint (``.ckpt`` of any stage: ``hyper_parameters["backbone"]``, ``encoder.*`` weights);
    * a stage handoff file (``<run_dir>/<stage>/handoff.pt``: keys ``encoder`` and ``backbone``);
    * a run directory: the latest finished stage (stage3, else stage1 handoff), else the newest ``last.ckpt``
      (``<run_dir>/<stage>/checkpoints/`` or, for runs of Stage I only, ``<run_dir>/checkpoints/``).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataUnavailableError(
            f"model source {path} does not exist; pass a run directory, a .ckpt checkpoint or a handoff.pt file"
        )
    if path.is_dir():
        path = _pick_from_run_dir(path)
    state, backbone = _read_weights(path)
    encoder = build_image_encoder(backbone, for_loading=True)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])[:300]
        raise DataFormatError(f"{path}: the encoder weights do not fit its backbone config ({detail})") from err
    return encoder.eval(), backbone


def _pick_from_run_dir(run_dir: Path) -> Path:
    for stage in HANDOFF_STAGES:
        handoff = run_dir / stage / "handoff.pt"
        if handoff.is_file():
            return handoff
    checkpoints = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("*/checkpoints/last.ckpt")]
                   if p.is_file()]
    if not checkpoints:
        raise DataUnavailableError(
            f"{run_dir} holds no trained model (no stage3/handoff.pt, stage1/handoff.pt or checkpoints/last.ckpt); "
            "train one with `itkm fit --config ... --run_dir` or pass a checkpoint file"
        )
    return max(checkpoints, key=lambda p: p.stat().st_mtime)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], BackboneConfig]:
    payload = _torch_load(path)
    if not isinstance(payload, dict):
        raise DataFormatError(f"{path} is not a checkpoint or handoff file (it holds a {type(payload).__name__})")
    if "state_dict" in payload:  # Lightning checkpoint
        state = {k[len(ENCODER_PREFIX):]: v for k, v in payload["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
        backbone = (payload.get("hyper_parameters") or {}).get("backbone")
    elif "encoder" in payload:  # stage handoff
        state, backbone = payload["encoder"], payload.get("backbone")
        if backbone is None:  # stage3's handoff carries weights only: the architecture is Stage I's
            backbone = _backbone_of_sibling_stage(path)
    else:
        raise DataFormatError(f"{path} has neither `state_dict` (Lightning checkpoint) nor `encoder` (stage handoff)")
    if not state:
        raise DataFormatError(f"{path} holds no image-encoder weights (no `encoder.*` keys); use a stage1/stage3 checkpoint")
    if backbone is None:
        raise DataFormatError(f"{path} does not record its backbone config; use the run's stage1 checkpoint or handoff")
    return state, _as_backbone(backbone)


def _backbone_of_sibling_stage(handoff: Path) -> Any:
    run_dir = handoff.parent.parent
    stage1 = run_dir / "stage1" / "handoff.pt"
    if stage1.is_file():
        return _torch_load(stage1).get("backbone")
    for ckpt in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("*/checkpoints/last.ckpt")]:
        if ckpt.is_file():
            backbone = (_torch_load(ckpt).get("hyper_parameters") or {}).get("backbone")
            if backbone is not None:
                return backbone
    return None


def _as_backbone(value: Any) -> BackboneConfig:
    if isinstance(value, BackboneConfig):
        return value
    if hasattr(value, "model_dump"):  # pickled under another module path
        value = value.model_dump()
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    return BackboneConfig.model_validate(dict(value))


def _torch_load(path: Path) -> Any:
    # weights_only: a file holding code is refused (its pydantic hyper-parameters are allow-listed there).
    return safe_load.load(path, what="model file", fix="pass a run directory, a .ckpt checkpoint or a handoff.pt file")
