"""Cluster conventions: SLURM scripts, progress bars in logs, sweeps, a fast `itkm --help` (issue 17, item 6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "conf" / "slurm"
ENV_LINE = 'source "${ITKM_SLURM_ENV:-conf/slurm/env.sh}"'


def test_chain_passes_the_users_sbatch_options_to_every_job(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho $((RANDOM))\n')  # records argv, prints a job id
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "CONFIG": "conf/ums.yaml"}
    subprocess.run(["bash", str(SLURM / "itkm_chain.sh"), "--account=lab", "--partition=gpu", "--nodes=2"],
                   check=True, env=env, capture_output=True, text=True)
    jobs = calls.read_text().splitlines()
    assert len(jobs) == 3
    for job in jobs:
        assert "--account=lab" in job and "--partition=gpu" in job
    nodes = [re.findall(r"--nodes=(\d+)", job) for job in jobs]
    assert nodes[0] == ["2"] and nodes[2] == ["2"]
    assert nodes[1][-1] == "1"  # Stage II (prompts only) on one node: sbatch takes the last value


def test_job_scripts_have_one_marked_place_to_activate_an_environment():
    for script in ("itkm_all.sbatch", "itkm_stage.sbatch"):
        text = (SLURM / script).read_text()
        code = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert code.count(ENV_LINE) == 1, script
        assert not any(re.search(r"\b(conda activate|module load|bin/activate)\b", line) for line in code), script
        assert any("ENVIRONMENT" in line for line in text.split(ENV_LINE)[0].splitlines()[-4:])  # marked just above
        assert text.index(ENV_LINE) < text.index("srun itkm")
    assert (SLURM / "env.sh").is_file()
    for script in ("itkm_all.sbatch", "itkm_stage.sbatch", "itkm_chain.sh", "env.sh"):
        subprocess.run(["bash", "-n", str(SLURM / script)], check=True)


def test_requeue_checkpoint_location_in_readme_is_where_the_code_looks(tmp_path):
    from itkm_lightning.pipeline import Pipeline
    from itkm_lightning.trainer_setup import stage_trainer_kwargs
    from itkm_lightning.resume import requeue_checkpoint

    readme = (REPO / "README.md").read_text()
    assert "`<run_dir>/<stage>/hpc_ckpt_<n>.ckpt`" in readme
    assert "<run_dir>/hpc_ckpt" not in readme and "<run_dir>/hpc_ckpt" not in (SLURM / "itkm_all.sbatch").read_text()
    run_dir = tmp_path / "run"
    # Lightning writes hpc_ckpt_<n>.ckpt into the trainer's default_root_dir: the stage's folder.
    assert Path(stage_trainer_kwargs(run_dir / "stage1", 0)["default_root_dir"]) == run_dir / "stage1"
    saved = run_dir / "stage1" / "hpc_ckpt_2.ckpt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    stage_dir = Pipeline.stage_dir(type("P", (), {"run_dir": run_dir})(), "stage1")
    assert requeue_checkpoint(stage_dir) == saved


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_only_on_a_terminal(terminal, synthetic_root, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from itkm_lightning.cli import ITKMCLI
    from itkm_lightning.tools.features import progress_enabled

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    assert progress_enabled() is terminal
    monkeypatch.setattr(sys, "argv", ["itkm"])
    cli = ITKMCLI(args=["--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
                        "--run_dir", str(tmp_path / "run")], run=False)
    trainer = cli.trainer_setup.build("stage2")
    assert isinstance(trainer.progress_bar_callback, RichProgressBar) is terminal
    if not terminal:
        assert trainer.progress_bar_callback is None


def test_stage1_sweeps_run_stage1_only_and_take_the_data_root():
    for path in sorted((REPO / "conf" / "sweeps").glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        if sweep["metric"]["name"].startswith("stage1-"):
            assert "--stage=stage1" in sweep["command"], path.name
        if "ums.yaml" in sweep["command"]:  # real datasets: where they are is the user's
            assert "data.root" in sweep["parameters"], path.name


# ------------------------------------------------------------------ start-up without Lightning
HEAVY = ("lightning", "transformers", "pytorch_lightning")


def imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list


def test_help_report_and_search_on_features_import_neither_lightning_nor_transformers(tmp_path):
    import numpy as np

    from itkm_lightning.data.schema import Sample
    from itkm_lightning.tools.embedding_files import save_embeddings

    assert imported_after("from itkm_lightning.command import main; main(['--help'])") == []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"stage1": {"b": {"mAP": 0.5, "R1": 0.6}}}\n')
    assert imported_after(f"from itkm_lightning.command import main; main(['report', {str(run_dir)!r}])") == []
    samples = [Sample(path=f"/x/{i}.png", pid=i % 3, camid=i % 2, scenario="cr", group=0, source="s") for i in range(6)]
    save_embeddings(tmp_path / "emb", np.random.default_rng(0).normal(size=(6, 8)), samples)
    emb = str(tmp_path / "emb")
    search = f"main(['search', {emb!r}, '--gallery', {emb!r}, '--backend', 'torch', '--evaluate', '--format', 'json'])"
    assert imported_after(f"from itkm_lightning.command import main; {search}") == []
    # ... while `itkm fit` does need them (the probe can tell):
    assert "lightning" in imported_after("import itkm_lightning.cli")
