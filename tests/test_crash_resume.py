"""A SIGKILLed `itkm fit`, re-run with the same command, ends with the metrics of an uninterrupted run.

The killed run's newest checkpoint is then truncated (a disk that lost the tail of a file): the re-run must
report it, resume from the previous checkpoint and still end with the same numbers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from itkm_lightning.resume import checkpoint_candidates
from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]

# Every stage of the pipeline is killed once: its checkpoints live in "<stage>/checkpoints". The supervised
# reference runs alone (`--stage supervised`), as it needs no other stage.
STAGES = ["stage1", "stage2", "stage3", "supervised"]
EPOCHS = 3  # per stage; the kill lands once two epoch checkpoints exist, i.e. during the stage's last epoch


def fit_args(root: Path, run_dir: Path, stage: str = "all") -> list[str]:
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(root), "--run_dir", str(run_dir),
            "--trainer.max_epochs", str(EPOCHS), "--epochs.stage2", str(EPOCHS), "--epochs.stage3", str(EPOCHS),
            "--trainer.deterministic", "true",
            "--trainer.enable_progress_bar", "false"]
    if stage == "supervised":
        args += ["--supervised.enabled", "true", "--epochs.supervised", str(EPOCHS), "--stage", "supervised"]
    return args


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.02)


@pytest.fixture()
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)  # `--trainer.deterministic true` in-process sets it globally


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_and_rerun_match_an_uninterrupted_run(stage, tmp_path, synthetic_root, restore_determinism):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    ckpt_dir = killed_dir / stage / "checkpoints"

    # The run to kill is a separate process; the reference runs in this process meanwhile.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "itkm_lightning", *fit_args(synthetic_root, killed_dir, stage)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        killer = threading.Thread(target=kill_when,
                                  args=(proc, lambda: len(list(ckpt_dir.glob("epoch=*.ckpt"))) >= 2))
        killer.start()
        try:
            main(fit_args(synthetic_root, reference_dir, stage))
        finally:
            killer.join()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    log_text = (tmp_path / "killed.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log_text[-3000:]
    results_file = killed_dir / "results.json"
    assert not (killed_dir / stage / "handoff.pt").exists(), "the kill came after the stage had finished"

    # Damage the newest checkpoint as a failing disk would; the previous one must be used instead.
    newest = checkpoint_candidates(ckpt_dir)[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"{newest.name}.*cannot be read"):
        main(fit_args(synthetic_root, killed_dir, stage))

    reference = json.loads((reference_dir / "results.json").read_text())
    resumed = json.loads(results_file.read_text())
    assert resumed == reference  # every stage's numbers, the killed one's and those after it
    # The logs of the killed process survive, and no step is lost or logged twice.
    for name in ([stage] if stage == "supervised" else STAGES[:3]):
        assert validation_rows(killed_dir / name) == validation_rows(reference_dir / name)


def validation_rows(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        return [(row["step"], row["val/mean_mAP"]) for row in csv.DictReader(handle) if row.get("val/mean_mAP")]
