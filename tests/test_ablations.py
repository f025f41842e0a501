"""Each ablation overlay in conf/ablations removes what its name promises, checked on what the stage computes:
the stage is built from the overlay's own values, and its loss, text update or features are compared with the
full method's on the same weights and batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import TINY_BACKBONE
from itkm_lightning.command import main
from itkm_lightning.config import CHMConfig
from itkm_lightning.matching import topk_other
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.stages.stage1 import Stage1
from itkm_lightning.stages.stage3 import Stage3
from test_stage2 import build_stage2, datamodule  # noqa: F401 - the module-scoped fixture is used below
from test_stage3_fit import CLUSTERING, OPTIM, fake_handoffs, make_datamodule

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((REPO / "conf" / "ablations").glob("*.yaml"))
STAGE3_TERMS = {"no_chm": "chm", "no_ihm": "ihm"}  # overlay -> the Stage III loss term it removes
BEHAVIOUR_TESTED = {*STAGE3_TERMS, "no_dru", "no_text", "no_separation", "no_scenario_embedding", "no_dual_branch"}


def overlay(name: str) -> tuple[str, dict]:
    """The overlay's one section and its values (the keys are that section's constructor arguments)."""
    ((section, values),) = yaml.safe_load((REPO / "conf" / "ablations" / f"{name}.yaml").read_text()).items()
    return section, values


def stage3_switches(name: str) -> dict:
    """A Stage III overlay's values as the stage receives them from the parser (typed nested sections)."""
    section, values = overlay(name)
    assert section == "stage3"
    if "chm_matching" in values:
        values = {**values, "chm_matching": CHMConfig(**values["chm_matching"])}
    return values


def test_every_overlay_has_a_behaviour_test():
    assert {p.stem for p in OVERLAYS} == BEHAVIOUR_TESTED


# ------------------------------------------------------------------ Stage III: loss terms and text update


@pytest.fixture(scope="module")
def stage3_setup(synthetic_root):
    """Tiny data, fake Stage I/II hand-overs, the features of Stage I's encoder and one training batch."""
    torch.manual_seed(0)
    dm = make_datamodule(synthetic_root)
    handoffs = fake_handoffs(dm, _tiny())
    labels = handoffs["stage1"].labels
    probe = _stage3(dm, handoffs)
    features = probe.extract(dm.cluster_dataloader())
    dm.set_pseudo_labels(labels.numpy())
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    return dm, handoffs, labels, features, batch


def _tiny() -> BackboneConfig:
    return BackboneConfig(**TINY_BACKBONE)  # the tiny_backbone fixture's, for a module-scoped fixture


def _stage3(dm, handoffs, **switches) -> Stage3:
    model = Stage3(backbone=_tiny(), clustering=CLUSTERING, optim=OPTIM, **switches)
    model.receive_handoff(handoffs)  # the Stage I encoder: every variant starts from the same weights
    model.bind_training_set(dm)
    return model


def relabelled(setup, rounds: int = 1, **switches) -> Stage3:
    """A Stage III module after ``rounds`` re-clusterings: the first finds the Stage I labels again, later
    ones move one image of every block to another cluster of its block."""
    dm, handoffs, labels, features, _ = setup
    model = _stage3(dm, handoffs, **switches)
    blocks = torch.from_numpy(dm.block_of_index)
    for round_labels in [labels, *[moved_one_member(labels, blocks)] * (rounds - 1)]:
        model.memory.reset(features, round_labels, blocks)
        model.refresh_heterogeneous(features, round_labels.numpy(), True)
    return model


def moved_one_member(labels: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    moved = labels.clone()
    for block in blocks.unique():
        clusters = labels[(blocks == block) & (labels >= 0)].unique()
        first = torch.nonzero(labels == clusters[0]).flatten()[0]
        moved[first] = clusters[1]
    return moved


def train_step(model, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one training step and what it logged (no Trainer: ``log`` is recorded here)."""
    logged: dict[str, float] = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, float(value.detach()))
    return model.training_step(batch, 0), logged


def encoder_gradient(model, loss) -> torch.Tensor:
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None])


@pytest.mark.parametrize("term, switches", [
    *[(term, overlay(name)[1]) for name, term in STAGE3_TERMS.items()],
    ("txt", {"txt": False}),  # not an overlay, the stage3.txt switch: the same promise
], ids=[*STAGE3_TERMS, "txt_off"])
def test_stage3_switch_removes_its_loss_term(stage3_setup, term, switches):
    batch = stage3_setup[4]
    full = relabelled(stage3_setup)
    ablated = relabelled(stage3_setup, **switches)
    full_loss, full_logged = train_step(full, batch)
    ablated_loss, ablated_logged = train_step(ablated, batch)
    key = f"train/loss_{term}"
    assert full_logged[key] > 0  # the term is active on this batch, so flipping the switch must show
    assert set(ablated_logged) == set(full_logged) - {key}
    for name in ablated_logged:
        if name != "train/loss":
            assert ablated_logged[name] == pytest.approx(full_logged[name], rel=1e-6), name
    # the total is the sum of the remaining terms (weights 1.0): exactly the full loss less the removed term
    torch.testing.assert_close(ablated_loss, full_loss - full_logged[key] * getattr(full, f"{term}_weight"))
    assert not torch.equal(encoder_gradient(full, full_loss), encoder_gradient(ablated, ablated_loss))


def test_no_ihm_computes_no_instance_sets(stage3_setup):
    assert (relabelled(stage3_setup).ihm_positives >= 0).any()
    assert (relabelled(stage3_setup, **overlay("no_ihm")[1]).ihm_positives == -1).all()


def test_text_loss_off_leaves_the_projection_without_gradient(stage3_setup):
    batch = stage3_setup[4]
    for switches, trained in (({}, True), ({"txt": False}, False)):
        model = relabelled(stage3_setup, **switches)
        train_step(model, batch)[0].backward()
        projection = model.encoder.visual_projection.weight
        assert (projection.grad is not None and bool(projection.grad.abs().sum() > 0)) is trained


def test_no_dru_keeps_the_instance_text_and_so_the_text_loss(stage3_setup):
    """DRU moves u towards its new cluster's text t_c after a re-clustering that changed the labels; t_c of the
    re-clustering after is a mean of the moved u, so L_txt changes from then on. Without DRU, u stays at T_off."""
    batch = stage3_setup[4]
    with_dru = [relabelled(stage3_setup, rounds) for rounds in (1, 2, 3)]
    without = [relabelled(stage3_setup, rounds, **overlay("no_dru")[1]) for rounds in (1, 2, 3)]
    start = without[0].instance_text  # T_off of each image's Stage I cluster (the first round moves nothing)
    assert all(torch.equal(model.instance_text, start) for model in without)
    torch.testing.assert_close(with_dru[0].instance_text, start)  # u_i = T_off[c] is its cluster's mean already
    assert not torch.allclose(with_dru[1].instance_text, start)
    assert not torch.allclose(with_dru[2].prototypes, without[2].prototypes)
    txt = [train_step(model, batch)[1]["train/loss_txt"] for model in (with_dru[2], without[2])]
    assert txt[0] != pytest.approx(txt[1], rel=1e-6)


def with_other_text(setup):
    """The same set-up with Stage II's text features replaced by unrelated ones."""
    dm, handoffs, *rest = setup
    text = handoffs["stage2"].text_features
    other = F.normalize(torch.randn(text.shape, generator=torch.Generator().manual_seed(7)), dim=1)
    return (dm, {**handoffs, "stage2": dataclasses.replace(handoffs["stage2"], text_features=other)}, *rest)


def test_no_text_makes_stage3_independent_of_stage2s_text(stage3_setup):
    """Without Stage II's text, what Stage III trains on (loss, IHM sets, CHM partners, gradients) is the same
    whatever text Stage II learnt; the full method's is not."""
    batch = stage3_setup[4]
    switches = stage3_switches("no_text")
    setups = (stage3_setup, with_other_text(stage3_setup))
    full = [relabelled(setup, rounds=2) for setup in setups]
    ablated = [relabelled(setup, rounds=2, **switches) for setup in setups]
    full_steps = [train_step(model, batch) for model in full]
    ablated_steps = [train_step(model, batch) for model in ablated]
    assert float(full_steps[0][0].detach()) != pytest.approx(float(full_steps[1][0].detach()), rel=1e-6)
    assert not torch.equal(full[0].ihm_positives, full[1].ihm_positives)
    assert "train/loss_txt" not in ablated_steps[0][1] and "train/loss_ihm" in ablated_steps[0][1]
    assert ablated_steps[0][1] == ablated_steps[1][1]
    for name in ("ihm_positives", "chm_partner"):
        assert torch.equal(getattr(ablated[0], name), getattr(ablated[1], name)), name
    assert torch.equal(encoder_gradient(ablated[0], ablated_steps[0][0]),
                       encoder_gradient(ablated[1], ablated_steps[1][0]))


def test_no_text_ihm_sets_are_the_image_top_k(stage3_setup):
    """Each IHM set is the instance's image-space top-k in the other group of its scenario, in similarity order."""
    model = relabelled(stage3_setup, **stage3_switches("no_text"))
    blocks = model.instance_blocks
    for block in blocks.unique().tolist():
        other = int(model.other_block[block])
        if other < 0:
            continue
        rows, cand = torch.nonzero(blocks == block).flatten(), torch.nonzero(blocks == other).flatten()
        top = topk_other(model.instance_memory[rows], model.instance_memory[cand], model.ihm_k)
        assert torch.equal(model.ihm_positives[rows, : top.shape[1]], cand[top])


# ------------------------------------------------------------------ Stage II: separation hinge


def test_no_separation_removes_the_hinge_from_stage2(tiny_backbone, datamodule, tmp_path):  # noqa: F811
    section, values = overlay("no_separation")
    assert section == "stage2"
    full, ablated = build_stage2(tiny_backbone, datamodule), build_stage2(tiny_backbone, datamodule, **values)
    batch = next(iter(full.fit_kwargs(datamodule, tmp_path)["train_dataloaders"]))
    ablated.fit_kwargs(datamodule, tmp_path)
    full_loss, full_logged = train_step(full, batch)
    ablated_loss, ablated_logged = train_step(ablated, batch)
    assert full_logged["train/loss_sep"] > 0
    assert set(ablated_logged) == set(full_logged) - {"train/loss_sep"}
    torch.testing.assert_close(ablated_loss, full_loss - full.hparams.separation_weight * full_logged["train/loss_sep"])
    full_loss.backward()
    ablated_loss.backward()
    assert not torch.equal(full.prompts.grad, ablated.prompts.grad)


# ------------------------------------------------------------------ backbone overlays


def features_by(encoder, *, scenario: int = 0, group: int = 0) -> torch.Tensor:
    images = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    full = torch.full((3,), scenario, dtype=torch.long), torch.full((3,), group, dtype=torch.long)
    with torch.no_grad():
        return encoder(images, *full).f


def encoder_with(tiny_backbone, backbone_values: dict, drift: bool = False):
    """Stage I's encoder for these backbone settings; ``drift`` moves every weight a little, as training would
    (the branches start as copies of one convolution, so only trained branches can differ)."""
    torch.manual_seed(0)
    encoder = Stage1(backbone=tiny_backbone.model_copy(update=backbone_values)).encoder.eval()
    if drift:
        with torch.no_grad():
            for param in encoder.parameters():
                param.add_(0.05 * torch.randn_like(param))
    return encoder


def test_no_scenario_embedding_makes_features_independent_of_the_scenario(tiny_backbone):
    section, values = overlay("no_scenario_embedding")
    assert section == "model"
    full = encoder_with(tiny_backbone, {})
    assert not torch.equal(features_by(full, scenario=0), features_by(full, scenario=1))
    ablated = encoder_with(tiny_backbone, values["backbone"], drift=True)
    assert torch.equal(features_by(ablated, scenario=0), features_by(ablated, scenario=1))
    assert torch.equal(features_by(ablated, scenario=0), features_by(ablated, scenario=2))


def test_no_dual_branch_makes_features_independent_of_the_group(tiny_backbone):
    section, values = overlay("no_dual_branch")
    assert section == "model"
    dual = encoder_with(tiny_backbone, {"dual_branch": True}, drift=True)
    assert not torch.equal(features_by(dual, group=0), features_by(dual, group=1))
    single = encoder_with(tiny_backbone, {"dual_branch": True, **values["backbone"]}, drift=True)
    assert torch.equal(features_by(single, group=0), features_by(single, group=1))


@pytest.mark.parametrize("name", ["no_scenario_embedding", "no_dual_branch"])
def test_backbone_overlays_compose_with_a_config(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config",
              str(REPO / "conf/ablations" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    ((key, value),) = overlay(name)[1]["backbone"].items()
    assert printed["model"]["backbone"][key] == value
