"""The stage contract (stages/protocol.py) and the hand-over dataclasses (handoffs.py)."""

from __future__ import annotations

import pytest
import torch

from itkm_lightning.handoffs import (
    EncoderHandoff,
    Handoff,
    Stage1Handoff,
    Stage2Handoff,
    Stage3Handoff,
    SupervisedHandoff,
    load_handoff,
    save_handoff,
)
from itkm_lightning.stages.protocol import ImageStage, Stage


def stage1_dict(**changes) -> dict:
    labels = torch.tensor([0, 0, 1, -1, 2, 2])
    values = {"stage": "stage1", "encoder": {"w": torch.ones(2)}, "backbone": {"kind": "clip"}, "labels": labels,
              "blocks": torch.tensor([0, 0, 0, 0, 1, 1]), "block_names": [["vi", 0], ["vi", 1]],
              "paths": [f"img{i}.png" for i in range(6)]}
    return {**values, **changes}


def test_every_project_stage_follows_the_contract(tiny_backbone):
    from itkm_lightning.stages.stage1 import Stage1
    from itkm_lightning.stages.stage2 import Stage2
    from itkm_lightning.stages.stage3 import Stage3
    from itkm_lightning.stages.supervised import SupervisedStage1

    for cls in (Stage1, Stage3, SupervisedStage1):
        module = cls(backbone=tiny_backbone)
        assert isinstance(module, ImageStage) and module.evaluates_images, cls
        assert module.extra_results() == {}
    stage2 = Stage2(backbone=tiny_backbone)
    assert isinstance(stage2, Stage) and not stage2.evaluates_images
    assert stage2.checkpoint_omits == ("text_encoder.",)
    # Who reads which hand-over, and as what.
    assert Stage1.receives == SupervisedStage1.receives == {}
    assert Stage2.receives == {"stage1": Stage1Handoff}
    assert Stage3.receives == {"stage1": Stage1Handoff, "stage2": Stage2Handoff}


@pytest.mark.parametrize("kind, values", [
    (Stage1Handoff, stage1_dict()),
    (Stage2Handoff, {"stage": "stage2", "text_features": torch.eye(3), "cluster_scenario": torch.zeros(3).long(),
                     "cluster_block": torch.arange(3), "prompts": torch.zeros(3, 2, 4), "labels": torch.arange(3),
                     "logit_scale": 14.5}),
    (Stage3Handoff, {"stage": "stage3", "encoder": {"w": torch.ones(2)}, "labels": torch.arange(4),
                     "text": torch.ones(4, 3)}),
    (SupervisedHandoff, {"stage": "supervised", "encoder": {"w": torch.ones(2)}, "backbone": {}, "labels": torch.arange(4)}),
    (EncoderHandoff, {"stage": "stage", "encoder": {"w": torch.ones(2)}, "backbone": {"kind": "timm"}}),
])
def test_a_handoff_survives_its_file_unchanged(tmp_path, kind, values):
    handoff = kind.from_dict(values)
    save_handoff(tmp_path / "handoff.pt", handoff.to_dict())  # weights_only-loadable contents, checked on save
    loaded = load_handoff(tmp_path / "handoff.pt")
    assert list(loaded) == list(values)  # the file holds the dataclass's fields, in order, for the tools
    again = kind.from_dict(loaded)
    for name, value in handoff.to_dict().items():
        assert same(value, getattr(again, name)), name


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def test_from_dict_checks_the_contents_once():
    handoff = Stage1Handoff.from_dict(stage1_dict())
    assert handoff.block_names == [("vi", 0), ("vi", 1)] and handoff.labels.dtype == torch.long
    assert handoff.cluster_block().tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"the stage1 handoff lacks \['paths'\].*delete <run_dir>/stage1/handoff.pt"):
        Stage1Handoff.from_dict({k: v for k, v in stage1_dict().items() if k != "paths"})
    with pytest.raises(ValueError, match="6 labels but 5 block tags"):
        Stage1Handoff.from_dict(stage1_dict(blocks=torch.zeros(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="no cluster"):
        Stage1Handoff.from_dict(stage1_dict(labels=torch.full((6,), -1)))
    with pytest.raises(ValueError, match="spans several"):
        Stage1Handoff.from_dict(stage1_dict(labels=torch.tensor([0, 0, 1, -1, 1, 2])))
    with pytest.raises(ValueError, match="must come from a dict"):
        Stage2Handoff.from_dict([1, 2])


def test_a_stage_of_another_kind_is_not_a_stage():
    class NotAStage(torch.nn.Module):
        stage_name = "stage2"

    assert not isinstance(NotAStage(), Stage)
    assert issubclass(Stage1Handoff, Handoff) and issubclass(Stage1Handoff, EncoderHandoff)
