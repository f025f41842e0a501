"""End-to-end: `itkm fit --stage stage1` on the tiny synthetic benchmark writes results, checkpoints, logs and
the hand-over, and skips a finished stage; DDP runs the whole pipeline (stand-in Stages II/III)."""

import json
from pathlib import Path

import pytest

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_writes_results_for_every_stage_and_skips_when_done(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
            "--run_dir", str(run_dir), "--stage", "stage1"]
    main(args)
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1"]
    for stage in results.values():
        assert set(stage) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
        for metrics in stage.values():
            assert set(metrics) == {"mAP", "R1", "R5", "R10", "mINP"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (run_dir / "stage1" / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "stage1" / "handoff.pt").is_file() and not (run_dir / "stage2").exists()
    metrics_csv = (run_dir / "stage1" / "logs" / "metrics.csv").read_text()
    assert "pseudo/vi-g0/num_clusters" in metrics_csv and "pseudo/cc-g1/ari" in metrics_csv
    assert "val/synthetic_vi/mAP" in metrics_csv
    out = capsys.readouterr().out.replace("\n", "")  # the console wraps long paths at its width
    assert str(run_dir / "results.json") in out

    # Same command again: the stage is done, nothing retrains, results stay.
    before = (run_dir / "results.json").read_text()
    ckpt_mtime = (run_dir / "stage1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    main(args)
    assert (run_dir / "results.json").read_text() == before
    assert (run_dir / "stage1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_mtime


@pytest.mark.slow
def test_two_process_ddp_fit_agrees_with_single_process_start(tmp_path, synthetic_root):
    """gloo DDP on CPU through all three real stages (a fresh Trainer each): untrained evaluation equals the
    single-process one; every stage re-clusters or trains, hands over, and nothing deadlocks."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    results = {}
    for devices in (1, 2):
        run_dir = tmp_path / f"ddp{devices}"
        cmd = [sys.executable, "-m", "itkm_lightning", "fit", "--config", str(REPO / "conf/smoke.yaml"),
               "--data.root", str(synthetic_root), "--run_dir", str(run_dir), "--trainer.accelerator", "cpu",
               "--trainer.devices", str(devices), "--trainer.max_epochs", "2", "--epochs.stage2", "2",
               "--epochs.stage3", "2", "--trainer.enable_progress_bar", "false"]
        if devices > 1:  # the process-group timeout comes from the config like any trainer setting
            cmd += ["--trainer.strategy=lightning.pytorch.strategies.DDPStrategy",
                    "--trainer.strategy.timeout=0:10:00"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Stage I and Stage III both re-clustered after their first epoch (sharded kNN, broadcast labels).
        assert (proc.stdout + proc.stderr).count("pseudo-labels (after epoch 0)") >= 2
        results[devices] = json.loads((run_dir / "results.json").read_text())
        assert all((run_dir / stage / "handoff.pt").is_file() for stage in ("stage1", "stage2", "stage3"))
    assert results[1]["untrained"] == results[2]["untrained"]
    assert set(results[2]["stage3"]) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
