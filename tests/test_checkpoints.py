"""Checkpoint files: atomic writes, resume from the newest one that loads, refusal of another stage's."""

from __future__ import annotations

import csv
import os
import time

import pytest
import torch

from itkm_lightning.checkpoints import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_compatible,
    checkpoint_identity,
    read_checkpoint,
)
from itkm_lightning.resume import resume_checkpoint
from itkm_lightning.loggers import _ResumableWriter


def training_checkpoint(step: int, **extra) -> dict:
    return {"state_dict": {"w": torch.full((3,), float(step))}, "epoch": step, "global_step": step,
            "loops": {}, "optimizer_states": [], **extra}


def write(path, payload, age_s: float = 0.0):
    AtomicCheckpointIO().save_checkpoint(payload, path)
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return path


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    path = write(tmp_path / "last.ckpt", training_checkpoint(1))

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a signal looks like inside Python

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(training_checkpoint(2), path)
    monkeypatch.undo()
    assert read_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_atomic_write_replaces_a_link_not_its_target(tmp_path):
    target = write(tmp_path / "epoch=000.ckpt", training_checkpoint(0))
    (tmp_path / "last.ckpt").symlink_to(target.name)
    write(tmp_path / "last.ckpt", training_checkpoint(5))
    assert read_checkpoint(target)["global_step"] == 0
    assert not (tmp_path / "last.ckpt").is_symlink() and read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 5


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path):
    assert resume_checkpoint(tmp_path / "missing") is None
    assert resume_checkpoint(tmp_path) is None
    older = write(tmp_path / "epoch=000.ckpt", training_checkpoint(3), age_s=30)
    newer = write(tmp_path / "epoch=001.ckpt", training_checkpoint(6), age_s=20)
    (tmp_path / "last.ckpt").symlink_to(newer.name)
    write(tmp_path / "nonfinite-step7.ckpt", training_checkpoint(7))  # diagnostics are never resumed
    assert resume_checkpoint(tmp_path) == newer

    newer.write_bytes(newer.read_bytes()[:100])  # truncated by a failing disk
    with pytest.warns(UserWarning, match=r"epoch=001\.ckpt cannot be read"):
        assert resume_checkpoint(tmp_path) == older

    write(tmp_path / "weights-only.ckpt", {"state_dict": {}})  # loads, but is no training checkpoint
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        assert resume_checkpoint(tmp_path) == older
    messages = " | ".join(str(w.message) for w in record)
    assert "weights-only.ckpt lacks epoch" in messages and "empty.ckpt cannot be read" in messages


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "given.ckpt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CorruptCheckpointError, match="given.ckpt cannot be read"):
        read_checkpoint(bad)


@pytest.fixture()
def stage1(tiny_backbone):
    from itkm_lightning.stages.stage1 import Stage1

    return Stage1(backbone=tiny_backbone)


def test_checkpoint_of_the_same_model_is_accepted(stage1):
    ckpt = {"state_dict": stage1.state_dict(), "itkm": checkpoint_identity(stage1)}
    ckpt["state_dict"]["memory.features"] = torch.zeros(7, stage1.encoder.feature_dim)  # sized by the labels
    check_compatible(ckpt, stage1, "ok.ckpt")


def test_checkpoint_of_another_stage_is_refused(stage1):
    ckpt = {"state_dict": stage1.state_dict(), "itkm": {**checkpoint_identity(stage1), "stage": "stage3"}}
    with pytest.raises(CheckpointMismatchError, match="written by stage3, not stage1.*--run_dir"):
        check_compatible(ckpt, stage1, "s3.ckpt")


def test_checkpoint_of_another_backbone_is_refused(stage1, tiny_backbone):
    from itkm_lightning.stages.stage1 import Stage1

    other = Stage1(backbone=tiny_backbone.model_copy(update={"projection_dim": 8}))
    stamped = {"state_dict": other.state_dict(), "itkm": checkpoint_identity(other)}
    with pytest.raises(CheckpointMismatchError, match="another backbone.*projection_dim: 8 there, 16 here"):
        check_compatible(stamped, stage1, "other.ckpt")
    unstamped = {"state_dict": other.state_dict()}  # e.g. written before the stamp existed
    with pytest.raises(CheckpointMismatchError, match=r"shapes differ: .*\(8, 32\) there vs \(16, 32\) here"):
        check_compatible(unstamped, stage1, "other.ckpt")
    partial = stage1.state_dict()
    partial.pop("encoder.visual_projection.weight")
    partial["prompt.tokens"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError, match=r"1 weights missing \(e\.g\. encoder\.visual_projection\.weight\);"
                                                      r" 1 unknown weights \(e\.g\. prompt\.tokens\)"):
        check_compatible({"state_dict": partial}, stage1, "partial.ckpt")


def test_metrics_log_survives_a_resume_and_drops_steps_after_the_checkpoint(tmp_path):
    first = _ResumableWriter(str(tmp_path))
    for step in range(6):
        first.log_metrics({"loss": float(step)}, step)
    first.log_metrics({"val/mAP": 0.5}, 2)
    first.save()
    resumed = _ResumableWriter(str(tmp_path))  # Lightning's writer would delete metrics.csv here
    resumed.drop_rows_after(2)  # the checkpoint was taken at step 2; steps 3-5 are trained again
    for step in range(3, 5):
        resumed.log_metrics({"loss": 10.0 + step, "new/key": 1.0}, step)
    resumed.save()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv", newline="")))
    assert [(r["step"], r["loss"]) for r in rows if r["loss"]] == [
        ("0", "0.0"), ("1", "1.0"), ("2", "2.0"), ("3", "13.0"), ("4", "14.0")]
    assert [r["val/mAP"] for r in rows if r["val/mAP"]] == ["0.5"]


def test_results_file_write_that_dies_keeps_the_previous_results(tmp_path, monkeypatch):
    from itkm_lightning.results import ResultsFile

    results = ResultsFile(tmp_path / "results.json")
    results.record("stage1", {"b": {"mAP": 0.5, "R1": 0.6}})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        results.record("stage3", {"b": {"mAP": 0.7, "R1": 0.8}})
    monkeypatch.undo()
    assert list(ResultsFile(tmp_path / "results.json").data) == ["stage1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    (tmp_path / "results.json").write_text('{"stage1": {"b": ')  # damaged by hand or by another tool
    with pytest.raises(ValueError, match="results.json is not valid JSON.*move it away"):
        ResultsFile(tmp_path / "results.json")
