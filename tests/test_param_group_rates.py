"""Which parameters train at which rate (lr_new for the scenario embedding only, frozen towers get none).

Each module's ``configure_optimizers`` is run with a known config; the rate of every parameter is read from
the optimiser after each scheduler step and compared with the documented formula, computed here:
Stages I and III per epoch (docs/method.md section 4), Stage II per step (section 5), the demo's CLIP
pretraining per step (docs/pretraining.md).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from itkm_lightning.config import OptimConfig
from itkm_lightning.handoffs import Stage1Handoff
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.pretrain.module import CLIPPretraining
from itkm_lightning.stages.stage1 import Stage1
from itkm_lightning.stages.stage2 import Stage2
from itkm_lightning.stages.stage3 import Stage3

EPOCHS = 8


def attach(module, *, max_epochs: int = EPOCHS, steps_per_epoch: int = 5, max_steps: int = -1):
    """What a Trainer tells a module about the run's length, without building one."""
    module.trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, current_epoch=0, global_step=0,
                                     estimated_stepping_batches=max_epochs * steps_per_epoch
                                     if max_steps < 0 else max_steps)
    return module


def rates(module, count: int) -> tuple[str, list[dict[int, float]]]:
    """The scheduler's interval and, for each of ``count`` scheduler steps, the rate of every parameter (by id)."""
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]
    scheduler = schedule["scheduler"] if isinstance(schedule, dict) else schedule
    interval = schedule.get("interval", "epoch") if isinstance(schedule, dict) else "epoch"
    seen = []
    for _ in range(count):
        seen.append({id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]})
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees the order Lightning keeps
        scheduler.step()
    return interval, seen


def stage_factor(epoch: int, optim: OptimConfig, epochs: int = EPOCHS) -> float:
    """docs/method.md section 4: linear warm-up from 0.1x over warmup_epochs, then cosine decay to 0.01x at
    trainer.max_epochs (or step decay by step_gamma at step_epochs, or constant)."""
    if epoch < optim.warmup_epochs:
        return 0.1 + 0.9 * epoch / optim.warmup_epochs
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.step_gamma ** len([e for e in optim.step_epochs if epoch >= e])
    progress = (epoch - optim.warmup_epochs) / (epochs - optim.warmup_epochs)
    return 0.01 + 0.99 * (1 + math.cos(math.pi * progress)) / 2


def dual_branch(tiny_backbone) -> BackboneConfig:
    return tiny_backbone.model_copy(update={"dual_branch": True, "scenario_embedding": "cls"})


def check_stage_rates(module, optim: OptimConfig, expect_trained: set[str]) -> None:
    interval, seen = rates(attach(module), EPOCHS)
    assert interval == "epoch"
    names = {id(p): name for name, p in module.named_parameters()}
    assert {names[i] for i in seen[0]} == expect_trained
    new = {name for name in expect_trained if "scenario_embedding" in name}
    assert new, "the dual-branch config has a scenario embedding"
    for epoch, by_param in enumerate(seen):
        factor = stage_factor(epoch, optim)
        for pid, lr in by_param.items():
            base = optim.lr_new if names[pid] in new else optim.lr
            assert lr == pytest.approx(base * factor, rel=1e-12), (epoch, names[pid])


SCHEDULES = [
    OptimConfig(lr=1e-4, lr_new=2e-3, warmup_epochs=2),
    OptimConfig(lr=1e-4, lr_new=2e-3, warmup_epochs=1, schedule="step", step_epochs=[3, 6], step_gamma=0.5),
    OptimConfig(lr=1e-4, lr_new=2e-3, warmup_epochs=0, schedule="constant"),
]


@pytest.mark.parametrize("optim", SCHEDULES, ids=["cosine", "step", "constant"])
def test_stage1_rates_per_epoch_and_lr_new_for_the_scenario_embedding_only(tiny_backbone, optim):
    module = Stage1(backbone=dual_branch(tiny_backbone), optim=optim)
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    assert not any("visual_projection" in name for name in trained)  # Stage I: v gets no gradient, frozen
    check_stage_rates(module, optim, trained)


def test_stage_schedule_anchor_values():
    """The formula above at the points docs/method.md names: 0.1x at the start, 1x after warm-up, 0.01x at the end."""
    optim = SCHEDULES[0]
    assert stage_factor(0, optim) == pytest.approx(0.1)
    assert stage_factor(optim.warmup_epochs, optim) == pytest.approx(1.0)
    assert stage_factor(EPOCHS, optim) == pytest.approx(0.01)
    assert [stage_factor(e, SCHEDULES[1]) for e in range(7)] == pytest.approx([0.1, 1, 1, 0.5, 0.5, 0.5, 0.25])


@pytest.mark.parametrize("txt", [True, False])
def test_stage3_rates_per_epoch_and_the_projection_only_with_l_txt(tiny_backbone, txt):
    optim = SCHEDULES[0]
    module = Stage3(backbone=dual_branch(tiny_backbone), optim=optim, txt=txt)
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    assert any("visual_projection" in name for name in trained) is txt  # L_txt trains v's projection
    check_stage_rates(module, optim, trained)


def test_stage2_rates_per_step_for_the_prompt_words_only(tiny_backbone):
    """docs/method.md section 5: warm-up over stage2.warmup_epochs from 0.1x, then cosine decay per step to 0.01x."""
    module = Stage2(backbone=tiny_backbone, lr=1e-3, warmup_epochs=2, warmup_factor=0.1, min_lr_factor=0.01,
                    extract_device="cpu")
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    module.receive_handoff({"stage1": Stage1Handoff(
        stage="stage1", encoder={}, backbone={}, labels=labels, blocks=torch.tensor([0, 0, 1, 1, 1, 0]),
        block_names=[("vi", 0), ("cr", 0)], paths=[f"{i}.png" for i in range(6)])})
    steps_per_epoch, epochs = 5, 4
    interval, seen = rates(attach(module, max_epochs=epochs, steps_per_epoch=steps_per_epoch), epochs * steps_per_epoch)
    assert interval == "step"
    assert all(set(by_param) == {id(module.prompts)} for by_param in seen)
    warmup, total = 2 * steps_per_epoch, epochs * steps_per_epoch
    for step, by_param in enumerate(seen):
        if step < warmup:
            factor = 0.1 + 0.9 * step / warmup
        else:
            factor = 0.01 + 0.99 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
        assert by_param[id(module.prompts)] == pytest.approx(1e-3 * factor, rel=1e-12), step


def test_pretraining_rates_per_step_and_weight_decay_on_matrices_only():
    """docs/pretraining.md: AdamW, linear warm-up over warmup_steps, cosine to zero at trainer.max_steps, weight
    decay on matrices only."""
    from test_pretrain import TINY_ARCHITECTURE

    torch.manual_seed(0)
    module = CLIPPretraining(BackboneConfig(**TINY_ARCHITECTURE), lr=5e-4, warmup_steps=3, weight_decay=0.05)
    total = 10
    optimizer = module.configure_optimizers()["optimizer"]
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    trained = [p for p in module.parameters() if p.requires_grad]
    assert set(decay) == {id(p) for p in trained}
    assert all(decay[id(p)] == (0.05 if p.dim() >= 2 else 0.0) for p in trained)
    interval, seen = rates(attach(module, max_steps=total), total + 1)
    assert interval == "step"
    for step, by_param in enumerate(seen):
        factor = (step + 1) / 3 if step < 3 else (1 + math.cos(math.pi * (step - 3) / (total - 3))) / 2
        assert list(by_param.values()) == pytest.approx([5e-4 * factor] * len(trained), rel=1e-12, abs=1e-18), step
    assert seen[2][id(trained[0])] == pytest.approx(5e-4) and seen[total][id(trained[0])] == pytest.approx(0.0)
