"""Hand-overs: what a finished stage passes on (weights and data products, never training state).

Each stage's hand-over is a dataclass (:class:`Stage1Handoff`, :class:`Stage2Handoff`, ...). On disk,
``<run_dir>/<stage>/handoff.pt`` holds its ``to_dict()``: plain contents only (tensors, dicts, lists, tuples,
str, numbers, bool, None), so ``torch.load(weights_only=True)`` reads it back and the tools can open it as
a dict. A receiving stage gets the dataclass from ``from_dict``, which checks the contents once.

A stage is finished iff its hand-over file exists, so the file is written whole or not at all; a stage
that puts anything but plain contents in is told so when it saves, not when the next stage loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from itkm_lightning import safe_load
from itkm_lightning.errors import ConfigError, DataFormatError
from itkm_lightning.fileio import atomic_write

HANDOFF_FILE = "handoff.pt"
_PLAIN = (str, int, float, bool, type(None))

H = TypeVar("H", bound="Handoff")


@dataclass(eq=False)
class Handoff:
    """Base of every hand-over; ``stage`` names the stage that made it."""

    stage: str

    def to_dict(self) -> dict[str, Any]:
        """The file's contents: every field under its name, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[H], data: Mapping[str, Any]) -> H:
        """The hand-over in ``data`` (a loaded file or another stage's ``to_dict()``), checked and typed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a {cls.__name__} must come from a dict, not a {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            stage = data.get("stage", "stage's")
            raise DataFormatError(f"the {stage} handoff lacks {missing}; it was written by another version: "
                                  f"delete <run_dir>/{stage}/handoff.pt and re-run that stage")
        return cls(**cls._checked({name: data[name] for name in names}))

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` in their field types, after checks that do not need the receiving stage (subclasses)."""
        return values


@dataclass(eq=False)
class EncoderHandoff(Handoff):
    """An image stage's trained encoder: ``encoder`` weights (CPU, fp32) and the ``backbone`` config they fit."""

    encoder: dict[str, torch.Tensor]
    backbone: dict[str, Any]


@dataclass(eq=False)
class Stage1Handoff(EncoderHandoff):
    """Stage I: the encoder and one re-clustering of the training set with it.

    ``labels`` [N] (-1 = outlier) and ``blocks`` [N] (index into ``block_names``, the (scenario, group)
    blocks) follow ``paths``, the training images in dataset order.
    """

    labels: torch.Tensor
    blocks: torch.Tensor
    block_names: list[tuple[str, int]]
    paths: list[str]

    def cluster_block(self) -> torch.Tensor:
        """The block of every cluster 0..C-1 (C = the largest label + 1; -1 for an id without members)."""
        return _cluster_block(self.labels, self.blocks)

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        values = super()._checked(values)
        labels = torch.as_tensor(values["labels"]).long().cpu()
        blocks = torch.as_tensor(values["blocks"]).long().cpu()
        if labels.shape != blocks.shape:
            raise DataFormatError(f"stage1 handoff: {labels.numel()} labels but {blocks.numel()} block tags")
        if labels.numel() == 0 or int(labels.max()) < 0:
            raise ConfigError("Stage I produced no cluster (every label is -1): nothing to describe in Stage II; "
                              "loosen model.clustering (e.g. larger eps, smaller min_samples) and rerun stage1")
        kept = labels >= 0
        if not bool((_cluster_block(labels, blocks)[labels[kept]] == blocks[kept]).all()):
            raise DataFormatError("stage1 handoff: a cluster spans several (scenario, group) blocks; rerun stage1")
        return {**values, "labels": labels, "blocks": blocks,
                "block_names": [tuple(b) for b in values["block_names"]], "paths": list(values["paths"])}


def _cluster_block(labels: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    kept = labels >= 0
    cluster_block = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    cluster_block[labels[kept]] = blocks[kept]
    return cluster_block


@dataclass(eq=False)
class SupervisedHandoff(EncoderHandoff):
    """The supervised reference: its encoder and the ground-truth labels it trained on (read by tools only)."""

    labels: torch.Tensor


@dataclass(eq=False)
class Stage2Handoff(Handoff):
    """Stage II: ``text_features`` T_off [C, P] (L2-normalised, row c = Stage I cluster c), what they were
    learnt from (``labels``: the Stage I labels; ``prompts``), the clusters' ``cluster_scenario``/``cluster_block``
    and the frozen CLIP's exp(logit_scale)."""

    text_features: torch.Tensor
    cluster_scenario: torch.Tensor
    cluster_block: torch.Tensor
    prompts: torch.Tensor
    labels: torch.Tensor
    logit_scale: float

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "text_features": torch.as_tensor(values["text_features"], dtype=torch.float32),
                "labels": torch.as_tensor(values["labels"], dtype=torch.long),
                "logit_scale": float(values["logit_scale"])}


@dataclass(eq=False)
class Stage3Handoff(Handoff):
    """Stage III: the encoder (its architecture is Stage I's backbone), the labels of one re-clustering with
    it and the instance text ``u`` [N, P]."""

    encoder: dict[str, torch.Tensor]
    labels: torch.Tensor
    text: torch.Tensor


# ------------------------------------------------------------------------------------------------ files
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
    """Write a hand-over's ``to_dict()`` atomically: a temporary file in the same folder, renamed over ``path``."""
    _check_contents(handoff, "handoff")
    atomic_write(path, lambda handle: torch.save(handoff, handle))


def load_handoff(path: str | Path) -> dict:
    """The dict a hand-over file holds (``weights_only``: code is refused, nothing of it runs)."""
    path = Path(path)
    handoff = safe_load.load(path, what="hand-over", fix="delete it to run that stage again")
    if not isinstance(handoff, dict):
        raise DataFormatError(f"{path} does not hold a hand-over dict; delete it to run that stage again")
    return handoff
