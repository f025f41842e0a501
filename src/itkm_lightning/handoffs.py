"""``<run_dir>/<stage>/handoff.pt``: what a finished stage passes on (weights and data products, no training state).

A stage is finished iff its hand-over file exists, so the file is written whole or not at all. Contents are
restricted to what ``torch.load(weights_only=True)`` reads back (tensors, dicts, lists, tuples, str, numbers,
bool, None): a stage that puts anything else in is told so when it saves, not when the next stage loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from itkm_lightning import safe_load
from itkm_lightning.fileio import atomic_write

HANDOFF_FILE = "handoff.pt"
_PLAIN = (str, int, float, bool, type(None))


def handoff_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage / HANDOFF_FILE


def _check_contents(value: object, where: str) -> None:
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"hand-over key {where}[{key!r}] is a {type(key).__name__}; use str or int keys")
            _check_contents(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_contents(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"hand-over entry {where} is a {type(value).__module__}.{type(value).__name__}; hand-overs hold only "
        "tensors, dicts, lists, tuples, str, int, float, bool and None (convert arrays with torch.as_tensor)"
    )


def save_handoff(path: str | Path, handoff: dict) -> None:
    """Write atomically: a temporary file in the same folder, renamed over ``path`` once complete."""
    _check_contents(handoff, "handoff")
    atomic_write(path, lambda handle: torch.save(handoff, handle))


def load_handoff(path: str | Path) -> dict:
    path = Path(path)
    handoff = safe_load.load(path, what="hand-over", fix="delete it to run that stage again")
    if not isinstance(handoff, dict):
        raise ValueError(f"{path} does not hold a hand-over dict; delete it to run that stage again")
    return handoff
