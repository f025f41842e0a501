"""End-to-end: `itkm fit` on the tiny synthetic benchmark writes results, checkpoints and logs, and resumes."""

import json
from pathlib import Path

import pytest

from itkm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_writes_results_for_every_stage_and_skips_when_done(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
            "--run_dir", str(run_dir)]
    main(args)
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1"]
    for stage in results.values():
        assert set(stage) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
        for metrics in stage.values():
            assert set(metrics) == {"mAP", "R1", "R5", "R10", "mINP"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics_csv = (run_dir / "logs" / "metrics.csv").read_text()
    assert "pseudo/vi-g0/num_clusters" in metrics_csv and "pseudo/cc-g1/ari" in metrics_csv
    assert "val/synthetic_vi/mAP" in metrics_csv
    out = capsys.readouterr().out
    assert str(run_dir / "results.json") in out

    # Same command again: the stage is done, nothing retrains, results stay.
    before = (run_dir / "results.json").read_text()
    ckpt_mtime = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    main(args)
    assert (run_dir / "results.json").read_text() == before
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_mtime


@pytest.mark.slow
def test_two_process_ddp_fit_agrees_with_single_process_start(tmp_path, synthetic_root):
    """gloo DDP on CPU: untrained evaluation equals the single-process one; re-clustering + training do not deadlock."""
    import subprocess
    import sys

    results = {}
    for devices in (1, 2):
        run_dir = tmp_path / f"ddp{devices}"
        cmd = [sys.executable, "-m", "itkm_lightning", "fit", "--config", str(REPO / "conf/smoke.yaml"),
               "--data.root", str(synthetic_root), "--run_dir", str(run_dir), "--trainer.accelerator", "cpu",
               "--trainer.devices", str(devices), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
        if devices > 1:  # the process-group timeout comes from the config like any trainer setting
            cmd += ["--trainer.strategy=lightning.pytorch.strategies.DDPStrategy",
                    "--trainer.strategy.timeout=0:10:00"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Both ranks went through the re-clustering after the first epoch (sharded kNN, broadcast labels).
        assert "pseudo-labels (after epoch 0)" in proc.stdout + proc.stderr
        results[devices] = json.loads((run_dir / "results.json").read_text())
    assert results[1]["untrained"] == results[2]["untrained"]
    assert set(results[2]["stage1"]) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
