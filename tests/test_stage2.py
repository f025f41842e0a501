"""Stage II: losses on hand-computed cases, prompt-only gradients, batches, and a tiny end-to-end fit."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.feature_batches import ScenarioMixingClusterSampler, scenario_quotas
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.models.clip_loading import load_clip_model
from itkm_lightning.models.clip_text import CLIPTextEncoder, build_prompt_template
from itkm_lightning.models.losses import scenario_separation, supervised_contrastive
from itkm_lightning.handoffs import Stage1Handoff, Stage2Handoff
from itkm_lightning.models.tokenizer import clip_tokenizer
from itkm_lightning.stages import frozen_features
from itkm_lightning.stages.frozen_features import FEATURE_CACHE
from itkm_lightning.stages.stage2 import Stage2

# ------------------------------------------------------------------------------------------------ losses


def test_supervised_contrastive_matches_hand_computed_values():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    anchor_labels, candidate_labels = torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    # anchor 0: logits 2*(1, 0.6, 0), positives 0 and 1; anchor 1: logits 2*(0, 0.8, 1), positive 2
    lse0 = math.log(math.exp(2.0) + math.exp(1.2) + math.exp(0.0))
    lse1 = math.log(math.exp(0.0) + math.exp(1.6) + math.exp(2.0))
    expected = (-((2.0 - lse0) + (1.2 - lse0)) / 2 + -(2.0 - lse1)) / 2
    loss = supervised_contrastive(anchors, candidates, anchor_labels, candidate_labels, 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # an anchor with no positive among the candidates is left out of the mean
    with_orphan = supervised_contrastive(torch.cat([anchors, anchors[:1]]), candidates, torch.tensor([0, 1, 7]),
                                         candidate_labels, 2.0)
    assert with_orphan.item() == pytest.approx(expected, rel=1e-6)


def test_separation_loss_hinges_cross_scenario_cosines_only():
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]) * torch.tensor([[3.0], [1.0], [2.0]])
    scenarios = torch.tensor([0, 0, 1])
    # cross-scenario pairs: (0, 2) cos 0 -> 0; (1, 2) cos 0.6 -> 0.6 - 0.3. The same-scenario pair (cos 0.8) is ignored.
    assert scenario_separation(features, scenarios, margin=0.3).item() == pytest.approx((0.0 + 0.3) / 2, rel=1e-6)
    assert scenario_separation(features, scenarios, margin=0.7).item() == pytest.approx(0.0)


def test_separation_loss_is_zero_for_one_scenario_and_still_differentiable():
    features = torch.randn(5, 4, requires_grad=True)
    loss = scenario_separation(features, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(features.grad) == 0


# ------------------------------------------------------------------------------------------------ text side


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_prompt_template_with_placeholder_embeddings_equals_token_encoding(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    text_encoder = CLIPTextEncoder(load_clip_model(tiny_backbone))
    template = build_prompt_template(tokenizer, 3, "A photo of a", "person.")
    assert tokenizer.convert_ids_to_tokens(template.input_ids[template.slot_positions].tolist()) == ["x</w>"] * 3
    placeholder_words = text_encoder.token_embedding(template.input_ids[template.slot_positions])
    from_prompts = text_encoder.encode_prompts(template, placeholder_words.unsqueeze(0))
    from_ids = text_encoder.encode(template.input_ids.unsqueeze(0))
    torch.testing.assert_close(from_prompts, from_ids)
    other = text_encoder.encode_prompts(template, torch.randn(1, 3, placeholder_words.shape[1]))
    assert not torch.allclose(other, from_ids)


def test_prompt_template_rejects_placeholder_in_fixed_words(tokenizer):
    with pytest.raises(ValueError, match="placeholder"):
        build_prompt_template(tokenizer, 2, "A photo of x", "person.")


# ------------------------------------------------------------------------------------------------ batches


def test_sampler_batches_hold_distinct_clusters_of_every_scenario():
    labels = np.repeat(np.arange(10), 3)  # 10 clusters of 3 items
    cluster_scenario = np.array([0] * 6 + [1] * 3 + [2] * 1)
    sampler = ScenarioMixingClusterSampler(labels, cluster_scenario, clusters_per_batch=4, instances_per_cluster=2,
                                           seed=1, cover="clusters")
    assert sampler.quotas == [2, 1, 1] and sampler.batch_size == 8 and sampler.num_batches == 3
    indices = list(sampler)
    assert len(indices) == len(sampler) == 24
    for batch in np.asarray(indices).reshape(-1, 8):
        clusters = labels[batch].reshape(4, 2)
        assert (clusters[:, 0] == clusters[:, 1]).all()  # K items of one cluster
        assert len(set(clusters[:, 0])) == 4  # P distinct clusters
        assert set(cluster_scenario[clusters[:, 0]]) == {0, 1, 2}
    sampler.set_epoch(1)
    assert list(sampler) != indices


def test_sampler_epoch_shows_every_image_by_default():
    """Stage II goes through every kept image each epoch (CLIP-ReID, CCLNet), not one batch per cluster."""
    sizes = [7, 3, 3, 12, 2, 5, 1, 4]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    cluster_scenario = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    sampler = ScenarioMixingClusterSampler(labels, cluster_scenario, clusters_per_batch=4, instances_per_cluster=3,
                                           seed=0)
    units = [sum(-(-n // 3) for n, s in zip(sizes, cluster_scenario) if s == scen) for scen in range(3)]
    assert units == [9, 3, 3] and sampler.quotas == [2, 1, 1] and sampler.num_batches == 5
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = np.asarray(list(sampler))
        assert len(indices) == len(sampler) == 5 * 12
        assert set(indices.tolist()) == set(range(labels.size))  # every image at least once
        for batch in indices.reshape(-1, 12):
            units_of_batch = labels[batch].reshape(4, 3)
            assert (units_of_batch == units_of_batch[:, :1]).all()  # K items of one cluster per unit
            assert set(cluster_scenario[units_of_batch[:, 0]]) == {0, 1, 2}
    assert ScenarioMixingClusterSampler(labels, cluster_scenario, 4, 3, num_batches=2).num_batches == 2


def test_scenario_quotas_are_proportional_and_capped():
    assert scenario_quotas([30, 10, 0], 8) == [6, 2, 0]
    assert scenario_quotas([1, 1, 20], 16) == [1, 1, 14]
    with pytest.raises(ValueError, match="one cluster of each"):
        scenario_quotas([5, 5, 5], 2)


# ------------------------------------------------------------------------------------------------ module


@pytest.fixture(scope="module")
def datamodule(synthetic_root):
    dm = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root),
                        image_size=(64, 32), test_batch_size=64, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fake_stage1_handoff(dm, only_scenario: str | None = None) -> dict:
    """Labels = true identity per block (block-unique ids) for most images; every 5th image an outlier."""
    keys: dict[tuple[int, str], int] = {}
    labels = []
    for index, (sample, block) in enumerate(zip(dm.train_samples, dm.block_of_index)):
        if index % 5 == 0 or (only_scenario and sample.scenario != only_scenario):
            labels.append(-1)
            continue
        labels.append(keys.setdefault((int(block), sample.identity), len(keys)))
    return {"stage": "stage1", "labels": torch.tensor(labels), "blocks": torch.as_tensor(dm.block_of_index),
            "block_names": list(dm.blocks), "paths": [s.path for s in dm.train_samples], "encoder": {}, "backbone": {}}


def build_stage2(tiny_backbone, dm, only_scenario: str | None = None, **kwargs) -> Stage2:
    module = Stage2(backbone=tiny_backbone, extract_device="cpu", clusters_per_batch=4, instances_per_cluster=2,
                    **kwargs)
    module.receive_handoff({"stage1": Stage1Handoff.from_dict(fake_stage1_handoff(dm, only_scenario))})
    return module


def test_gradients_reach_only_the_prompt_words(tiny_backbone, datamodule, tmp_path):
    module = build_stage2(tiny_backbone, datamodule)
    loader = module.fit_kwargs(datamodule, tmp_path)["train_dataloaders"]
    batch = next(iter(loader))
    module.training_step(batch, 0).backward()
    frozen = list(module.text_encoder.parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert [name for name, p in module.named_parameters() if p.requires_grad] == ["prompts"]
    grad_norm = module.prompts.grad.flatten(1).norm(dim=1)
    in_batch = torch.zeros(module.num_clusters, dtype=torch.bool)
    in_batch[batch["label"].unique()] = True
    assert (grad_norm[in_batch] > 0).all() and (grad_norm[~in_batch] == 0).all()


@torch.no_grad()
def image_to_all_texts_loss(module: Stage2) -> float:
    """Cross-entropy of every kept image against the texts of all clusters, target = its Stage I cluster."""
    logits = module.text_encoder.logit_scale * F.normalize(module._stats_features, dim=1) @ module.all_text_features().T
    return float(F.cross_entropy(logits, module._stats_labels))


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def make_trainer(tmp_path, epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                     callbacks=list(callbacks), use_distributed_sampler=False)


def test_tiny_fit_lowers_the_loss_and_hands_over_normalised_text(tiny_backbone, datamodule, tmp_path, monkeypatch):
    module = build_stage2(tiny_backbone, datamodule, lr=3.5e-4, warmup_epochs=0, iters_per_epoch=4)
    kwargs = module.fit_kwargs(datamodule, tmp_path)
    before = image_to_all_texts_loss(module)
    recorder = LossRecorder()
    trainer = make_trainer(tmp_path, epochs=4, callbacks=[recorder])
    trainer.fit(module, **kwargs)
    assert len(recorder.losses) == 16 and all(math.isfinite(x) for x in recorder.losses)
    # batches differ from step to step, so the loss is compared on all cached images against all cluster texts
    assert image_to_all_texts_loss(module) < before - 0.1
    assert set(module.text_stats) == {"intra_scenario_cos", "inter_scenario_cos", "image_to_text_top1"}

    made = module.make_handoff(datamodule)
    assert isinstance(made, Stage2Handoff)
    handoff = made.to_dict()
    labels = fake_stage1_handoff(datamodule)["labels"]
    num_clusters = int(labels.max()) + 1
    assert list(handoff) == ["stage", "text_features", "cluster_scenario", "cluster_block", "prompts", "labels",
                             "logit_scale"]
    assert handoff["text_features"].shape == (num_clusters, tiny_backbone.projection_dim)
    torch.testing.assert_close(handoff["text_features"].norm(dim=1), torch.ones(num_clusters))
    assert handoff["prompts"].shape == (num_clusters, 4, tiny_backbone.text["hidden_size"])
    assert torch.equal(handoff["labels"], labels)
    blocks = torch.as_tensor(datamodule.block_of_index)
    kept = labels >= 0
    assert torch.equal(handoff["cluster_block"][labels[kept]], blocks[kept])
    scenario_of_block = torch.tensor([("vi", "cr", "cc").index(name) for name, _ in datamodule.blocks])
    assert torch.equal(handoff["cluster_scenario"], scenario_of_block[handoff["cluster_block"]])
    assert handoff["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)

    # the features are cached: a second call (resume) extracts nothing
    cache = torch.load(tmp_path / FEATURE_CACHE, weights_only=True)
    assert len(cache["paths"]) == len({s.path for s, keep in zip(datamodule.train_samples, kept) if keep})
    monkeypatch.setattr(frozen_features, "extract_features", lambda *a: pytest.fail("features extracted again"))
    module.fit_kwargs(datamodule, tmp_path)


def test_cc_views_share_the_original_image_features(tiny_backbone, datamodule, tmp_path):
    module = build_stage2(tiny_backbone, datamodule)
    module.fit_kwargs(datamodule, tmp_path)
    labels = module.labels
    kept = torch.nonzero(labels >= 0, as_tuple=True)[0].tolist()
    row = {index: r for r, index in enumerate(kept)}
    samples = datamodule.train_samples
    by_path = {}
    for index in kept:
        if samples[index].scenario == "cc":
            by_path.setdefault(samples[index].path, []).append(index)
    pairs = [ix for ix in by_path.values() if len(ix) == 2]
    assert pairs, "the fixture should keep both views of some cc image"
    for first, second in pairs:
        assert {samples[first].group, samples[second].group} == {0, 1}
        torch.testing.assert_close(module._stats_features[row[first]], module._stats_features[row[second]])


def test_separation_off_and_single_scenario(tiny_backbone, datamodule, tmp_path):
    single = build_stage2(tiny_backbone, datamodule, only_scenario="vi")
    batch = next(iter(single.fit_kwargs(datamodule, tmp_path / "single")["train_dataloaders"]))
    assert (single.cluster_scenario[batch["label"]] == 0).all()
    clusters = batch["label"].unique()
    assert scenario_separation(single.text_features(clusters), single.cluster_scenario[clusters]).item() == 0.0
    off = build_stage2(tiny_backbone, datamodule, separation=False)
    on = build_stage2(tiny_backbone, datamodule)
    batch = next(iter(on.fit_kwargs(datamodule, tmp_path / "mixed")["train_dataloaders"]))
    clusters = batch["label"].unique()
    separation = scenario_separation(on.text_features(clusters), on.cluster_scenario[clusters], 0.3)
    assert separation.item() > 0  # random prompts give similar texts: the hinge is active
    torch.testing.assert_close(on.training_step(batch, 0) - off.training_step(batch, 0), separation)


def test_checkpoint_holds_prompts_not_the_frozen_tower(tiny_backbone, datamodule, tmp_path):
    module = build_stage2(tiny_backbone, datamodule, iters_per_epoch=1)
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit(module, **module.fit_kwargs(datamodule, tmp_path))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == {"prompts", "cluster_scenario", "cluster_block"}
    restored = Stage2.load_from_checkpoint(tmp_path / "last.ckpt")  # no handoff: shapes come from the checkpoint
    assert restored.backbone_config == tiny_backbone
    torch.testing.assert_close(restored.all_text_features(), module.all_text_features())

    # the pipeline's resume: handoff first, then trainer.fit from the checkpoint (strict loading, one more epoch)
    resumed = build_stage2(tiny_backbone, datamodule, iters_per_epoch=1)
    trainer = make_trainer(tmp_path, epochs=2)
    seen = {}
    trainer.callbacks.append(L.pytorch.callbacks.LambdaCallback(
        on_train_start=lambda tr, pl: seen.setdefault("prompts", pl.prompts.detach().clone())))
    trainer.fit(resumed, ckpt_path=tmp_path / "last.ckpt", **resumed.fit_kwargs(datamodule, tmp_path))
    torch.testing.assert_close(seen["prompts"], module.prompts.detach())
    assert trainer.global_step == 2


def test_receive_handoff_rejects_stage1_without_clusters(tiny_backbone, datamodule):
    handoff = fake_stage1_handoff(datamodule)
    handoff["labels"] = torch.full_like(handoff["labels"], -1)
    with pytest.raises(ValueError, match="no cluster"):
        Stage2(backbone=tiny_backbone).receive_handoff({"stage1": Stage1Handoff.from_dict(handoff)})


def test_fit_kwargs_rejects_a_handoff_for_other_images(tiny_backbone, datamodule, tmp_path):
    module = build_stage2(tiny_backbone, datamodule)
    module.handoff_paths = list(reversed(module.handoff_paths))
    with pytest.raises(ValueError, match="other training images"):
        module.fit_kwargs(datamodule, tmp_path)


def test_normalised_features_in_training_batches(tiny_backbone, datamodule, tmp_path):
    module = build_stage2(tiny_backbone, datamodule)
    batch = next(iter(module.fit_kwargs(datamodule, tmp_path)["train_dataloaders"]))
    assert set(batch) == {"v", "label"}  # no ground truth, no images
    text = module.text_features(batch["label"].unique())
    torch.testing.assert_close(text.norm(dim=1), torch.ones(len(text)))
    assert F.cosine_similarity(text[:1], text[1:]).abs().max() < 1.0
