"""A tiny Stage III fit on the synthetic benchmark with fake Stage I / Stage II handoffs."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from pydantic import ValidationError

from itkm_lightning.config import CHMConfig, ClusteringConfig, OptimConfig
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.handoffs import Handoff, Stage1Handoff, Stage2Handoff, Stage3Handoff
from itkm_lightning.models.clip_image import CLIPImageEncoder
from itkm_lightning.stages.stage3 import Stage3

CLUSTERING = ClusteringConfig(eps=0.7, min_samples=2, k1=6, k2=3)
OPTIM = OptimConfig(lr=1e-3, lr_new=1e-3, warmup_epochs=0)


def make_datamodule(root) -> ReIDDataModule:
    dm = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(root), image_size=(64, 32),
                        num_clusters_per_batch=2, num_instances=2, iters_per_epoch=2, test_batch_size=64,
                        num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fake_handoffs(dm: ReIDDataModule, backbone) -> dict[str, Handoff]:
    """Stage I: a random tiny encoder and labels = true identity per block with every 5th image an outlier;
    Stage II: random normalised text features, one per Stage I cluster."""
    torch.manual_seed(1)
    encoder = CLIPImageEncoder(backbone)
    keys = [(b, s.identity) for b, s in zip(dm.block_of_index.tolist(), dm.train_samples)]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    labels = torch.tensor([ids[k] for k in keys])
    labels[::5] = -1
    num = int(labels.max()) + 1
    text = F.normalize(torch.randn(num, encoder.projection_dim), dim=1)
    stage1 = {"stage": "stage1", "encoder": encoder.state_dict(), "labels": labels,
              "blocks": torch.from_numpy(dm.block_of_index), "block_names": list(dm.blocks),
              "paths": [s.path for s in dm.train_samples], "backbone": backbone.model_dump()}
    stage2 = {"stage": "stage2", "text_features": text, "labels": labels.clone(),
              "cluster_scenario": torch.zeros(num, dtype=torch.long), "cluster_block": torch.zeros(num, dtype=torch.long),
              "prompts": torch.zeros(num, 4, 32), "logit_scale": 14.3}
    return {"stage1": Stage1Handoff.from_dict(stage1), "stage2": Stage2Handoff.from_dict(stage2)}


def test_tiny_fit_logs_matching_and_hands_off(tmp_path, synthetic_root, tiny_backbone):
    dm = make_datamodule(synthetic_root)
    handoffs = fake_handoffs(dm, tiny_backbone)
    model = Stage3(backbone=tiny_backbone, clustering=CLUSTERING, optim=OPTIM)
    model.receive_handoff(handoffs)
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, handoffs["stage1"].encoder[name]), name
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(str(tmp_path), name="", version="logs"),
                        enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                        reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0, limit_val_batches=0,
                        log_every_n_steps=1, enable_model_summary=False)
    trainer.fit(model, **model.fit_kwargs(dm, tmp_path))

    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for scenario in ("vi", "cr", "cc"):
        for metric in ("chm_pairs", "chm_precision", "ihm_precision", "ihm_size", "ihm_nonempty", "text_agreement"):
            assert f"match/{scenario}/{metric}" in header
    for loss in ("homo", "chm", "ihm", "txt"):
        assert f"train/loss_{loss}_step" in header or f"train/loss_{loss}" in header

    n = len(dm.train_samples)
    assert model.instance_text.shape == (n, 16)
    assert torch.allclose(model.instance_text.norm(dim=1), torch.ones(n), atol=1e-5)
    # the DRU moved u away from T_off (two re-clusterings, alpha 0.5) but not for every instance to the same text
    init = handoffs["stage2"].text_features[handoffs["stage1"].labels.clamp_min(0)]
    assert not torch.allclose(model.instance_text, init)
    # partners are clusters of the other group of the same scenario
    partner = model.chm_partner
    matched = torch.nonzero(partner >= 0).flatten()
    blocks = model.memory.blocks
    assert torch.equal(model.other_block[blocks[matched]], blocks[partner[matched]])
    # IHM positives live in the other group of the instance's scenario
    pos = model.ihm_positives
    rows, cols = torch.nonzero(pos >= 0, as_tuple=True)
    assert torch.equal(model.instance_blocks[pos[rows, cols]], model.other_block[model.instance_blocks[rows]])

    handoff = model.make_handoff(dm)
    assert isinstance(handoff, Stage3Handoff) and list(handoff.to_dict()) == ["stage", "encoder", "labels", "text"]
    assert handoff.stage == "stage3"
    assert handoff.labels.shape == (n,) and handoff.text.shape == (n, 16)
    assert set(handoff.encoder) == set(model.encoder.state_dict())
    assert all(v.device.type == "cpu" for v in handoff.encoder.values())


def test_switches_turn_losses_off_and_freeze_the_projection(tiny_backbone):
    model = Stage3(backbone=tiny_backbone, chm=False, ihm=False, txt=False)
    assert not any(p.requires_grad for p in model.encoder.visual_projection.parameters())
    assert Stage3(backbone=tiny_backbone).encoder.visual_projection.weight.requires_grad


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"dru_alpha": 2.0}, {"ihm_k": 0}, {"txt_label_smoothing": 1.0}])
def test_bad_knobs_are_rejected(tiny_backbone, bad):
    with pytest.raises(ValueError, match="stage3"):
        Stage3(backbone=tiny_backbone, **bad)


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"threshold": 1.5}, {"quantile": 1.0}, {"reliability": "best"},
                                 {"similarity": "l2"}])
def test_bad_chm_settings_are_rejected(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        CHMConfig(**bad)


def test_chm_keeps_the_pairs_across_a_gap_between_the_groups(tiny_backbone):
    """Group 1's features all carry one extra direction (a modality gap): the default CHM (group-centred
    similarity, mutual nearest neighbours) still pairs every person's two clusters; docs/method.md's absolute
    threshold 0.5 on the raw cosine drops every pair (issue 13, defect 3)."""
    torch.manual_seed(0)
    people = F.normalize(torch.randn(6, 128), dim=1)
    gap = 3.0 * F.normalize(torch.randn(128), dim=0)
    features = torch.cat([people + 0.1 * torch.randn(6, 128), people + 0.1 * torch.randn(6, 128) + gap])
    labels = torch.arange(12)
    blocks = torch.tensor([0] * 6 + [1] * 6)
    matched = {}
    for name, cfg in (("default", CHMConfig()), ("main", CHMConfig(similarity="cosine", reliability="threshold"))):
        model = Stage3(backbone=tiny_backbone, chm_matching=cfg)
        model.block_names, model.other_block = [("vi", 0), ("vi", 1)], torch.tensor([1, 0])
        model.memory.reset(F.normalize(features, dim=1), labels, blocks)
        partner = model._match_clusters(torch.zeros(12, 4))
        matched[name] = partner
        assert model.chm_pairs["vi"].shape[1] == 2
    assert matched["default"].tolist() == [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]
    assert (matched["main"] == -1).all()


def test_missing_or_mismatched_handoffs_are_clear_errors(synthetic_root, tiny_backbone):
    dm = make_datamodule(synthetic_root)
    handoffs = fake_handoffs(dm, tiny_backbone)
    model = Stage3(backbone=tiny_backbone)
    with pytest.raises(ValueError, match="missing \\['stage2'\\]"):
        model.receive_handoff({"stage1": handoffs["stage1"]})
    bad = Stage2Handoff.from_dict(dict(handoffs["stage2"].to_dict(), labels=handoffs["stage2"].labels + 1))
    with pytest.raises(ValueError, match="re-run Stage II"):
        model.receive_handoff({"stage1": handoffs["stage1"], "stage2": bad})
    other = Stage3(backbone=tiny_backbone.model_copy(update={"dual_branch": False}))
    with pytest.raises(ValueError, match="backbone Stage I was trained with"):
        other.receive_handoff(handoffs)
    model.receive_handoff(handoffs)
    dm.train_samples = dm.train_samples[::-1]
    with pytest.raises(ValueError, match="training set differs"):
        model.bind_training_set(dm)
    assert np.array_equal(handoffs["stage1"].blocks.numpy(), make_datamodule(synthetic_root).block_of_index)


@pytest.mark.slow
def test_resume_restores_text_and_matches_and_continues(tmp_path, synthetic_root, tiny_backbone):
    """An interrupted Stage III resumes from last.ckpt with the checkpoint's u, prototypes and matches."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = make_datamodule(synthetic_root)
    handoffs = fake_handoffs(dm, tiny_backbone)

    def trainer(max_epochs):
        return L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
                         use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1,
                         num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False)

    first = Stage3(backbone=tiny_backbone, clustering=CLUSTERING, optim=OPTIM)
    first.receive_handoff(handoffs)
    trainer(1).fit(first, datamodule=dm)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]  # configs allow-listed

    resumed = Stage3(backbone=tiny_backbone, clustering=CLUSTERING, optim=OPTIM)
    resumed.receive_handoff(handoffs)
    seen = {}

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.setdefault("u", pl_module.instance_text.clone())
            seen.setdefault("partner", pl_module.chm_partner.clone())
            seen.setdefault("memory", pl_module.instance_memory.clone())

    t = trainer(2)
    t.callbacks.append(Spy())
    t.fit(resumed, ckpt_path=str(tmp_path / "last.ckpt"), **resumed.fit_kwargs(dm, tmp_path))
    assert torch.equal(seen["u"], saved["instance_text"])  # not re-initialised, not updated twice
    assert torch.equal(seen["partner"], saved["chm_partner"])
    assert seen["memory"].shape == (len(dm.train_samples), first.encoder.feature_dim)  # re-extracted
    assert resumed.final_labels is not None and resumed.final_labels.shape == (len(dm.train_samples),)
