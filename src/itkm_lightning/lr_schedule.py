"""The one learning-rate schedule of every trainer: linear warm-up, then cosine, step decay or constant.

Stage I/III (per epoch), Stage II and the CLIP pretraining (per step) all drive torch's ``LambdaLR`` with
:func:`lr_factor`, each with its own settings. torch's ``LinearLR``/``CosineAnnealingLR`` chained by
``SequentialLR`` give the same curve only up to rounding (they update the rate recursively), so the closed
form stays: resumed runs and the demo's results keep exactly the rates they had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch

Decay = Literal["cosine", "step", "constant"]


def lr_factor(step: int, *, warmup: int, start: float, total: int = 1, floor: float = 0.0,
              decay: Decay = "cosine", milestones: Sequence[int] = (), gamma: float = 1.0,
              counts_current: bool = False) -> float:
    """Factor of the base learning rate at ``step`` (an epoch or an optimiser step).

    Args:
        warmup: length of the linear warm-up, from ``start`` towards 1 (0: none).
        start: factor at step 0 of the warm-up.
        total: steps of the whole run (warm-up included); the cosine reaches ``floor`` there.
        floor: factor at the end of the cosine.
        decay: after the warm-up: ``cosine`` to ``floor``, ``step`` (times ``gamma`` at each of ``milestones``)
            or ``constant`` 1.
        counts_current: the warm-up counts the step being taken (step 0 already has ``1/warmup`` of the way,
            the last warm-up step reaches 1), as the pretraining recipe has it.
    """
    if step < warmup:
        return start + (1.0 - start) * (step + int(counts_current)) / warmup
    if decay == "constant":
        return 1.0
    if decay == "step":
        return gamma ** sum(step >= milestone for milestone in milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_scheduler(optimizer: torch.optim.Optimizer, **settings) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_factor` with ``settings`` (its keyword arguments), fixed when built.

    A ``partial`` (not an object with fields) keeps the scheduler's checkpointed state free of settings, so a
    resume takes them from the configuration, as before.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, **settings))
