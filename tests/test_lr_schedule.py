"""The one learning-rate schedule (lr_schedule.py): every trainer's rates, step by step, equal the recipe's formula.

The references below are the three formulas the stages had before they shared ``lr_factor``, written out
again; the rates must equal them exactly (not approximately), since they feed training.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from itkm_lightning.config import OptimConfig
from itkm_lightning.lr_schedule import lr_factor


def stage_factor(epoch: int, cfg: OptimConfig, max_epochs: int | None) -> float:
    """Stage I/III per epoch: warm-up from 0.1, then cosine to 0.01 (or step decay, or constant)."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(epoch >= e for e in cfg.step_epochs)
    total = max(1, (max_epochs or 1) - cfg.warmup_epochs)
    progress = min(1.0, (epoch - cfg.warmup_epochs) / total)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def stage2_factor(step: int, total: int, warmup: int, warmup_factor: float, min_factor: float) -> float:
    if step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain_factor(step: int, warmup: int, max_steps: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if max_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (max_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def rates(module, trainer, steps: int) -> list[list[float]]:
    """Each param group's learning rate over ``steps`` scheduler steps of ``module.configure_optimizers()``."""
    module._trainer = trainer
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_lr_factor_warms_up_then_decays():
    assert lr_factor(0, warmup=10, start=0.1, total=100, floor=0.01) == pytest.approx(0.1)
    assert lr_factor(10, warmup=10, start=0.1, total=100, floor=0.01) == 1.0
    assert lr_factor(100, warmup=10, start=0.1, total=100, floor=0.01) == pytest.approx(0.01)
    assert lr_factor(7, warmup=2, start=0.1, decay="step", milestones=(3, 5), gamma=0.5) == 0.25
    assert lr_factor(0, warmup=4, start=0.0, counts_current=True) == 0.25


@pytest.mark.parametrize("optim, max_epochs", [
    (OptimConfig(lr=1e-3, lr_new=3e-2), 10),
    (OptimConfig(warmup_epochs=0), 7),
    (OptimConfig(warmup_epochs=5), 3),
    (OptimConfig(schedule="step", step_epochs=[2, 5], step_gamma=0.3, warmup_epochs=1), 9),
    (OptimConfig(schedule="constant", warmup_epochs=4), 9),
])
def test_stage_rates_per_epoch_follow_the_recipe_for_each_param_group(tiny_backbone, optim, max_epochs):
    from itkm_lightning.stages.stage1 import Stage1

    module = Stage1(backbone=tiny_backbone, optim=optim)
    seen = rates(module, SimpleNamespace(max_epochs=max_epochs), max_epochs + 2)
    # Two groups: weights from CLIP at lr, the scenario embedding (new) at lr_new; the projection is frozen.
    new = {id(p) for p in module.encoder.new_parameters()}
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [len(g["params"]) for g in groups] == [sum(p.requires_grad and id(p) not in new
                                                      for p in module.parameters()), len(new)]
    for epoch, (lr, lr_new) in enumerate(seen):
        factor = stage_factor(epoch, optim, max_epochs)
        assert (lr, lr_new) == (optim.lr * factor, optim.lr_new * factor), epoch


@pytest.mark.parametrize("settings, max_epochs, steps", [
    ({}, 10, 40), ({"warmup_epochs": 1.5, "warmup_factor": 0.2, "min_lr_factor": 0.0}, 4, 37),
    ({"warmup_epochs": 0}, 3, 11),
])
def test_stage2_rates_per_step_follow_the_recipe(tiny_backbone, settings, max_epochs, steps):
    from itkm_lightning.stages.stage2 import Stage2

    module = Stage2(backbone=tiny_backbone, **settings)
    module.prompts = torch.nn.Parameter(torch.zeros(3, 4, 32))
    seen = rates(module, SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=steps), steps + 2)
    hp = module.hparams
    warmup = round(hp.warmup_epochs * steps / max_epochs)
    assert [lr for (lr,) in seen] == [hp.lr * stage2_factor(s, steps, warmup, hp.warmup_factor, hp.min_lr_factor)
                                      for s in range(steps + 2)]


@pytest.mark.parametrize("warmup, max_steps", [(5, 30), (4, -1), (10, 8), (0, 13), (3, None)])
def test_pretraining_rates_per_step_follow_the_recipe(tiny_backbone, warmup, max_steps):
    from itkm_lightning.pretrain.module import CLIPPretraining

    backbone = tiny_backbone.model_copy(update={"vision": {**tiny_backbone.vision, "image_size": 64}})
    module = CLIPPretraining(backbone=backbone, warmup_steps=warmup, lr=1e-3)
    trainer = None if max_steps is None else SimpleNamespace(max_steps=max_steps)  # None: no Trainer, no decay
    max_steps = -1 if max_steps is None else max_steps
    steps = max(max_steps, 10) + 2
    seen = rates(module, trainer, steps)
    assert [group for group in seen] == [[1e-3 * pretrain_factor(s, warmup, max_steps)] * 2 for s in range(steps)]
