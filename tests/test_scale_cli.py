"""Scale-out plumbing: DDP timeout from the config, SLURM environment, W&B logger and sweep command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from itkm_lightning.cli import ITKMCLI
from itkm_lightning.command import main
from itkm_lightning.config import WandbConfig
from lightning.pytorch.strategies import DDPStrategy
from itkm_lightning.resume import newest_checkpoint, requeue_checkpoint
from itkm_lightning.tracking import WANDB_ID_FILE, default_run_dir, stable_run_id, wandb_logger

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "conf" / "sweeps").glob("*.yaml"))


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when pytest's own sys.argv is there too."""
    monkeypatch.setattr(sys, "argv", ["itkm"])


def smoke_args(synthetic_root, run_dir) -> list[str]:
    return ["--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root), "--run_dir", str(run_dir),
            "--trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------ DDP


def test_ddp_timeout_from_the_config_reaches_the_process_group(synthetic_root, tmp_path, monkeypatch):
    """What torch.distributed is asked for when the strategy sets up the process group (none is started)."""
    import torch.distributed

    cli = ITKMCLI(args=[*smoke_args(synthetic_root, tmp_path / "run"),
                        "--trainer.strategy=lightning.pytorch.strategies.DDPStrategy",
                        "--trainer.strategy.timeout=1:30:00"], run=False)
    asked = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: asked.update(kwargs))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # written by the set-up; put back afterwards
        monkeypatch.setenv(name, os.environ.get(name, "localhost" if name == "MASTER_ADDR" else "29500"))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # the set-up re-seeds from it
    cli.trainer.strategy.setup_distributed()
    assert asked["timeout"] == timedelta(hours=1, minutes=30)
    # A later stage gets its own strategy object built from the same section (one is bound to its first Trainer).
    later = cli.trainer_setup.build("stage2")
    assert isinstance(later.strategy, DDPStrategy) and later.strategy is not cli.trainer.strategy
    asked.clear()
    later.strategy.setup_distributed()
    assert asked["timeout"] == timedelta(hours=1, minutes=30)


# ------------------------------------------------------------------ SLURM

SLURM_PROBE = """
import json, sys
from itkm_lightning.cli import ITKMCLI
cli = ITKMCLI(args=sys.argv[1:], run=False)
t = cli.trainer
print(json.dumps({"env": type(t.strategy.cluster_environment).__name__, "world_size": t.world_size,
                  "global_rank": t.global_rank, "local_rank": t.local_rank, "node_rank": t.node_rank,
                  "num_nodes": t.num_nodes}))
"""


@pytest.mark.slow  # a fresh interpreter imports Lightning and the CLI: 15 s alone, minutes on a loaded machine
def test_trainer_picks_up_the_slurm_environment(synthetic_root, tmp_path):
    """Task 3 of 2 nodes x 2 tasks, as srun would start it: Lightning's SLURMEnvironment sets the ranks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    env.update(SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NUM_NODES="2", SLURM_NNODES="2",
               SLURM_JOB_NAME="itkm", SLURM_JOB_ID="4242", SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_NODEID="1",
               SLURM_NODELIST="gpu[07-08]", PYTHONPATH=str(REPO / "src"))
    args = [*smoke_args(synthetic_root, tmp_path / "run"), "--trainer.accelerator=cpu", "--trainer.devices=2",
            "--trainer.num_nodes=2", "--trainer.strategy=ddp"]
    proc = subprocess.run([sys.executable, "-c", SLURM_PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"env": "SLURMEnvironment", "world_size": 4, "global_rank": 3, "local_rank": 1, "node_rank": 1,
                    "num_nodes": 2}


def test_requeue_resumes_from_the_newest_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert newest_checkpoint(last, requeue_checkpoint(tmp_path)) is None
    last.parent.mkdir()
    last.write_text("epoch end")
    for n in (1, 10, 2):  # numbered as Lightning numbers them: the highest is the latest requeue
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_text("mid-epoch")
    assert requeue_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_10.ckpt"
    os.utime(last, ns=(1, 1))  # the requeue checkpoint was written after the last epoch ended
    assert newest_checkpoint(last, requeue_checkpoint(tmp_path)) == tmp_path / "hpc_ckpt_10.ckpt"
    os.utime(last, None)
    os.utime(tmp_path / "hpc_ckpt_10.ckpt", ns=(1, 1))  # an epoch ended after the resume: last.ckpt is newer
    assert newest_checkpoint(last, requeue_checkpoint(tmp_path)) == last


# ------------------------------------------------------------------ W&B


def test_wandb_disabled_adds_no_logger(tmp_path):
    assert wandb_logger(WandbConfig(), tmp_path, "stage1") is None


def test_wandb_run_id_is_stable_per_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    first = stable_run_id(tmp_path / "a")
    assert stable_run_id(tmp_path / "a") == first  # a requeued job reads the same id back
    assert (tmp_path / "a" / WANDB_ID_FILE).read_text().strip() == first
    assert stable_run_id(tmp_path / "b") != first
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")  # a sweep agent chose the id
    assert stable_run_id(tmp_path / "c") == "agentrun1"


class FakeWandb:
    """Stands in for ``wandb.init``: records what a run would be started with and what it would be sent."""

    def __init__(self) -> None:
        self.started: list[dict] = []
        self.sent: list[dict] = []

    def init(self, **kwargs):
        self.started.append(kwargs)
        return self

    def log(self, metrics: dict) -> None:
        self.sent.append(dict(metrics))


def test_cli_builds_a_resumable_wandb_logger_next_to_csv(synthetic_root, tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    fake = FakeWandb()
    monkeypatch.setattr(wandb, "init", fake.init)
    monkeypatch.setattr(wandb, "run", None)
    run_dir = tmp_path / "run"
    args = [*smoke_args(synthetic_root, run_dir), "--wandb.mode=offline", "--wandb.project=itkm-test",
            "--wandb.tags=[ddp,smoke]"]
    cli = ITKMCLI(args=args, run=False)
    assert [isinstance(logger, kind) for logger, kind in zip(cli.trainer.loggers, [CSVLogger, WandbLogger])] \
        == [True, True] and len(cli.trainer.loggers) == 2
    assert fake.started == []  # the run itself starts lazily, at the first log
    cli.trainer.loggers[1].log_metrics({"train/loss_homo": 1.5}, step=3)
    (started,) = fake.started
    assert started["id"] == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert (started["resume"], started["mode"], started["project"], started["tags"]) == ("allow", "offline",
                                                                                        "itkm-test", ["ddp", "smoke"])
    assert fake.sent == [{"stage1-train/loss_homo": 1.5, "trainer/global_step": 3}]  # the stage names the metric
    ITKMCLI(args=args, run=False).trainer.loggers[1].log_metrics({"train/loss_homo": 1.0})  # the requeued job
    assert [run["id"] for run in fake.started] == [started["id"]] * 2


def test_bad_wandb_mode_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--wandb.mode=cloud"])
    assert "wandb" in capsys.readouterr().err


# ------------------------------------------------------------------ sweeps


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv a W&B sweep agent runs for one parameter set (wandb's own helpers + the agent's substitution)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep.get("program", "")])
    argv: list[str] = []
    for part in sweep_utils.create_sweep_command(sweep["command"]):
        part = str(part)
        argv += sweep_vars.get(part[2:-1], []) if part.startswith("${") and part.endswith("}") else [part]
    return argv


def sample(spec: dict):
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    return (spec["min"] + spec["max"]) / 2


def test_every_sweep_command_parses_with_its_values(monkeypatch, capsys):
    assert len(SWEEPS) >= 2
    monkeypatch.chdir(REPO)
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        values = {name: sample(spec) for name, spec in sweep["parameters"].items()}
        argv = agent_command(sweep, values)
        assert argv[:3] == ["/usr/bin/env", "itkm", "fit"], argv
        assert any(a.startswith("--model.") and "=" in a for a in argv)  # dotted overrides, --key=value form
        with pytest.raises(SystemExit) as exit_info:
            main([*argv[2:], "--print_config"])
        assert exit_info.value.code in (0, None), capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        for name, value in values.items():
            node = printed
            for key in name.split("."):
                node = node[key]
            assert node == pytest.approx(value), (path.name, name)
        assert printed["wandb"]["mode"] == "online"


def test_sweep_runs_get_their_own_run_dir(monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert default_run_dir("ums") == Path("runs/ums")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "r7")
    assert default_run_dir("ums") == Path("runs/ums/sweep-sw1/r7")
