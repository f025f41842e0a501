"""Checkpoints that survive a killed job and a damaged disk, and that refuse to load into the wrong model.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same folder, fsyncs it and
  renames it into place, so a checkpoint name never holds half a file.
* :func:`read_checkpoint` loads a training checkpoint safely or raises :class:`CorruptCheckpointError`.
* :class:`CheckpointStamp` records which stage and backbone wrote a checkpoint; :func:`check_compatible`
  turns a checkpoint of another stage or backbone into one clear error instead of a shape traceback.

Which checkpoints a stage keeps is trainer setup (trainer_setup.py); which one it resumes from is resume.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from itkm_lightning import safe_load
from itkm_lightning.errors import ITKMError
from itkm_lightning.fileio import atomic_write

REQUIRED_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")
"""What a Lightning training checkpoint must hold to be resumed from."""

NONFINITE_PREFIX = "nonfinite-"
"""Diagnostic checkpoints written when the loss turned NaN/inf; never resumed from."""

STOPPED_CHECKPOINT = "stopped.ckpt"
"""Written when a stage stops on purpose (no pseudo-label cluster); resumable after the fix."""


class CorruptCheckpointError(ITKMError, ValueError):
    """A checkpoint file that exists but cannot be read back."""


class CheckpointMismatchError(ITKMError, ValueError):
    """A checkpoint written by another stage or for another backbone than the model it is loaded into."""


# ------------------------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file next to the target, fsync, then ``os.replace``.

    Lightning's own ``_atomic_save`` goes through an fsspec transaction, whose local implementation
    writes into the system temp folder and *moves* the file (a copy across file systems, not atomic)
    without fsync; a job killed mid-copy leaves a truncated checkpoint under the final name.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))


class CheckpointStamp(L.Callback):
    """Adds ``checkpoint["itkm"] = {"stage": ..., "backbone": ...}`` so a resume can check what it loads."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["itkm"] = checkpoint_identity(pl_module)


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where the run keeps its checkpoints (the checkpoint callback's folder, else ``<root>/checkpoints``)."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"


def checkpoint_identity(module: L.LightningModule) -> dict[str, Any]:
    backbone = getattr(module, "backbone_config", None)
    return {"stage": getattr(module, "stage_name", type(module).__name__),
            "backbone": backbone.model_dump(mode="json") if backbone is not None else None}


# ------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint on CPU (tensors memory-mapped: cheap even for large files) or raise.

    A truncated file fails in ``torch.load`` (its zip directory sits at the end); a file that unpickles but
    lacks Lightning's training state fails the key check; a file holding code is refused (``weights_only``).
    """
    path = Path(path)
    try:
        checkpoint = safe_load.load(path, what="checkpoint", mmap=True)
    except (safe_load.UnreadableFileError, FileNotFoundError) as err:  # UnsafeFileError is not a disk fault
        raise CorruptCheckpointError(str(err)) from err
    if not isinstance(checkpoint, dict):
        raise CorruptCheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing and "encoder" in checkpoint:
        raise CorruptCheckpointError(f"{path} is a stage hand-over, not a Lightning training checkpoint; pass a .ckpt "
                                     "file from <run_dir>/<stage>/checkpoints/ (e.g. last.ckpt)")
    if missing:
        raise CorruptCheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a Lightning training checkpoint")
    return checkpoint


def check_resumable(path: str | Path, module: L.LightningModule) -> None:
    """``path`` loads and fits ``module`` (same stage, backbone, weight shapes), or one clear error."""
    check_compatible(read_checkpoint(path), module, path)


def check_compatible(checkpoint: dict[str, Any], module: L.LightningModule, source: str | Path) -> None:
    """Raise :class:`CheckpointMismatchError` when ``checkpoint`` was written by another stage or backbone.

    Compares the stamp (stage name, backbone config) when present, then the state-dict keys and shapes.
    Buffers that are empty in a fresh model (the cluster memory, sized by the pseudo-labels) take the
    checkpoint's shape and are not compared.
    """
    fix = "use another --run_dir for a new configuration, or the stage and backbone settings that wrote it"
    stamp = checkpoint.get("itkm") or {}
    mine = checkpoint_identity(module)
    if stamp.get("stage") not in (None, mine["stage"]):
        raise CheckpointMismatchError(
            f"checkpoint {source} was written by {stamp['stage']}, not {mine['stage']}; {fix}")
    if stamp.get("backbone") is not None and mine["backbone"] is not None and stamp["backbone"] != mine["backbone"]:
        changed = sorted(k for k in set(stamp["backbone"]) | set(mine["backbone"])
                         if stamp["backbone"].get(k) != mine["backbone"].get(k))
        details = ", ".join(f"{k}: {stamp['backbone'].get(k)!r} there, {mine['backbone'].get(k)!r} here"
                            for k in changed[:4])
        raise CheckpointMismatchError(f"checkpoint {source} is for another backbone ({details}); {fix}")
    check_state_dict_compatible(checkpoint.get("state_dict", {}), module, source, fix=fix)


def check_state_dict_compatible(state_dict: dict[str, torch.Tensor], module: torch.nn.Module, source: str | Path,
                                *, fix: str = "load weights of the same stage and backbone") -> None:
    """Same keys and shapes as ``module.state_dict()`` (empty runtime-sized buffers excepted), or one clear error."""
    expected = module.state_dict()
    # Weights a module deliberately leaves out of its checkpoints (Stage II's frozen CLIP) are not missing.
    omitted = tuple(getattr(module, "checkpoint_omits", ()))
    missing = sorted(k for k in set(expected) - set(state_dict) if not (omitted and k.startswith(omitted)))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state_dict and torch.is_tensor(v) and v.numel() > 0 and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        parts.append("shapes differ: " + ", ".join(f"{k} {a} there vs {b} here" for k, a, b in wrong[:3])
                     + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""))
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown weights (e.g. {unexpected[0]})")
    raise CheckpointMismatchError(f"checkpoint {source} does not fit this model: {'; '.join(parts)}; {fix}")
