"""Faults during training: degenerate clustering, non-finite losses, unreadable images (docs/reliability.md)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itkm_lightning.callbacks.pseudo_labels import PseudoLabelCallback
from itkm_lightning.clustering import blocks as block_clustering
from itkm_lightning.clustering.blocks import EmptyClusteringError, drop_degenerate_blocks
from itkm_lightning.command import main
from itkm_lightning.config import ClusteringConfig
from itkm_lightning.data.schema import Sample

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- degenerate clustering
def test_blocks_with_fewer_than_two_clusters_sit_out():
    blocks = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1, -1])
    kept, dropped = drop_degenerate_blocks(labels, blocks)
    assert dropped == {1: 1, 2: 0}
    assert kept.tolist() == [0, 0, 1, 1, -1, -1, -1, -1, -1]
    kept, dropped = drop_degenerate_blocks(np.array([0, 0, 1, 1, 2, 2, 2, 3, 4]), blocks)  # block 1: one cluster
    assert dropped == {1: 1} and kept.tolist() == [0, 0, 1, 1, -1, -1, -1, 2, 3]  # ids stay dense


class FakeTrainer(SimpleNamespace):
    def save_checkpoint(self, path):
        self.saved.append(Path(path))


def fake_run(tmp_path, block_sizes):
    """A trainer/module pair just rich enough for PseudoLabelCallback.recluster (one process)."""
    block_of_index = np.repeat(np.arange(len(block_sizes)), block_sizes)
    names = [("vi", 0), ("vi", 1), ("cr", 0), ("cr", 1)][: len(block_sizes)]
    samples = [Sample(path=f"img{i}.png", pid=i % 3, camid=0, scenario=names[b][0], group=names[b][1], source="t")
               for i, b in enumerate(block_of_index)]
    dm = SimpleNamespace(block_of_index=block_of_index, blocks=names, train_samples=samples,
                         cluster_dataloader=lambda: None, set_pseudo_labels=lambda labels: setattr(dm, "labels", labels))
    trainer = FakeTrainer(datamodule=dm, is_global_zero=True, logger=None, loggers=[], global_step=12, current_epoch=3,
                          checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path / "checkpoints")), saved=[])
    memory = SimpleNamespace(reset=lambda *a: None)
    module = SimpleNamespace(training_set_features=lambda dm: torch.zeros(len(samples), 4), features_reused=False,
                             memory=memory, device="cpu")
    return trainer, module


def test_degenerate_blocks_warn_with_numbers_and_the_others_train(tmp_path, monkeypatch):
    trainer, module = fake_run(tmp_path, [4, 4, 4])
    monkeypatch.setattr(block_clustering, "cluster_blocks", lambda *a: np.array([0, 0, 1, 1, 2, 2, 2, -1, -1, -1, -1, -1]))
    with pytest.warns(UserWarning) as record:
        PseudoLabelCallback(ClusteringConfig(k1=2, k2=1)).recluster(trainer, module)
    messages = [str(w.message) for w in record]
    assert any("block vi-g1 has a single cluster (3 images" in m and "1 outliers" in m for m in messages)
    assert any("block cr-g0 has no cluster, 4 outliers" in m and "other 1 blocks train" in m for m in messages)
    assert trainer.datamodule.labels.tolist() == [0, 0, 1, 1] + [-1] * 8
    assert trainer.saved == []


@pytest.mark.parametrize("labels, advice", [
    ([-1] * 8, r"every image is an outlier.*--model\.clustering\.eps 0\.70"),
    ([0, 0, 0, -1, 1, 1, 1, 1], r"at most one cluster.*--model\.clustering\.eps 0\.50"),
    # one tight group in one block, nothing in three: eps is too narrow, not too wide
    ([0, 0, 0, -1] + [-1] * 12, r"most blocks have no cluster.*--model\.clustering\.eps 0\.70"),
])
def test_no_trainable_block_saves_then_stops_with_an_eps_to_try(tmp_path, monkeypatch, labels, advice):
    trainer, module = fake_run(tmp_path, [4] * (len(labels) // 4))
    monkeypatch.setattr(block_clustering, "cluster_blocks", lambda *a: np.array(labels))
    callback = PseudoLabelCallback(ClusteringConfig(eps=0.6, k1=2, k2=1))
    with pytest.raises(EmptyClusteringError, match=advice) as err:
        callback.recluster(trainer, module)
    assert trainer.saved == [tmp_path / "checkpoints" / "stopped.ckpt"]
    assert "stopped.ckpt" in str(err.value) and "vi-g0: " in str(err.value)


def test_changed_clustering_settings_recluster_on_resume():
    callback = PseudoLabelCallback(ClusteringConfig(eps=0.7))
    callback.load_state_dict({"labels": [0, 1], "history": [], "clustering": ClusteringConfig(eps=0.5).model_dump()})
    reclustered = []
    callback.recluster = lambda trainer, module: reclustered.append(True)
    callback.on_fit_start(SimpleNamespace(datamodule=SimpleNamespace(train_samples=[0, 1])), None)
    assert reclustered == [True] and callback.labels is None


def test_k1_larger_than_a_block_names_the_setting():
    from itkm_lightning.clustering.blocks import cluster_blocks

    with pytest.raises(ValueError, match="has 5 training images but clustering k1=6.*lower clustering.k1.*model.clustering for Stage I, stage3.clustering for Stage III"):
        cluster_blocks(np.eye(5, 8, dtype=np.float32), np.zeros(5, dtype=np.int64), ClusteringConfig(k1=6, k2=3))


@pytest.mark.slow
def test_all_outliers_stop_the_cli_then_a_wider_eps_resumes(tmp_path, synthetic_root, capsys, caplog):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
            "--run_dir", str(run_dir), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--model.clustering.eps", "0.01", "--model.clustering.min_samples", "6"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert "Traceback" not in err and first.startswith("itkm: error: no (scenario, group) block")
    assert "--model.clustering.eps 0.11" in err and "--resume_anyway" in err and (run_dir / "stage1" / "checkpoints" / "stopped.ckpt").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        main([*args, "--resume_anyway"])  # the suggested fix: another eps; the same run continues from its state
    assert f"resuming stage1 from {run_dir / 'stage1' / 'checkpoints' / 'stopped.ckpt'}" in caplog.text
    assert "stage1" in json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------- non-finite loss
@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_images_and_keeps_the_good_checkpoint(tmp_path, synthetic_root, monkeypatch,
                                                                            capsys):
    from itkm_lightning.resume import resume_checkpoint
    from itkm_lightning.stages.stage1 import Stage1

    original = Stage1.training_step

    def nan_in_second_epoch(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 1 else loss

    monkeypatch.setattr(Stage1, "training_step", nan_in_second_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
              "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert "Traceback" not in err and "loss is nan at step 4 (epoch 1)" in first  # 3 steps per epoch
    assert str(synthetic_root) in first and ".png" in first and "lower model.optim.lr" in first
    ckpts = run_dir / "stage1" / "checkpoints"
    assert (ckpts / "nonfinite-step4.ckpt").is_file()
    assert resume_checkpoint(ckpts) == (ckpts / "epoch=000.ckpt").resolve()  # the last good one, untouched


# ----------------------------------------------------------------------------- unreadable images
@pytest.fixture()
def damaged_root(tmp_path, synthetic_root):
    """A copy of the tiny synthetic benchmark with one truncated training image and one empty gallery image."""
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.data.sources import SyntheticBenchmark

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    dm = ReIDDataModule([SyntheticBenchmark(preset="tiny")], root=str(root), num_workers=0)
    dm.setup("fit")
    train_path = Path(dm.train_samples[5].path)
    train_path.write_bytes(train_path.read_bytes()[:60])
    gallery_path = Path(dm.benchmarks[1].gallery[2].path)
    gallery_path.write_bytes(b"")
    return root, dm, train_path, gallery_path


def test_unreadable_images_skip_policy_reports_the_count_once(damaged_root):
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.data.dataset import UnreadableImageError
    from itkm_lightning.data.sources import SyntheticBenchmark

    root, clean, train_path, gallery_path = damaged_root
    skip = ReIDDataModule([SyntheticBenchmark(preset="tiny")], root=str(root), num_workers=0, on_unreadable="skip")
    with pytest.warns(UserWarning, match=r"left out 2 of \d+ images that cannot be read") as record:
        skip.setup("fit")
        skip.setup("validate")  # set-up runs again: no second report
    assert len([w for w in record if "left out" in str(w.message)]) == 1
    assert len(skip.train_samples) == len(clean.train_samples) - 1  # its cc clothing-agnostic twin would go too
    assert str(train_path) not in {s.path for s in skip.train_samples}
    assert len(skip.benchmarks[1].gallery) == len(clean.benchmarks[1].gallery) - 1

    fail = ReIDDataModule([SyntheticBenchmark(preset="tiny")], root=str(root), num_workers=0)  # the default
    fail.setup("fit")
    loader = fail.extraction_dataloader(fail.train_samples)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {train_path}.*replace or delete"):
        for _ in loader:
            pass


def test_dropping_samples_renumbers_trial_indices():
    from itkm_lightning.data.datamodule import _drop_samples
    from itkm_lightning.data.schema import BenchmarkSplit

    def s(name):
        return Sample(path=name, pid=0, camid=0, scenario="vi", group=0, source="t")

    bench = BenchmarkSplit(name="b", scenario="vi", protocol="market", query=[s("q0"), s("q1")],
                           gallery=[s("g0"), s("g1"), s("g2"), s("g3")], trials=[(None, [0, 2, 3]), ([1], [1, 2])])
    out = _drop_samples(bench, {"g2", "q0"})
    assert [x.path for x in out.gallery] == ["g0", "g1", "g3"] and [x.path for x in out.query] == ["q1"]
    assert out.trials == [(None, [0, 2]), ([0], [1])]
