"""Experiment tracking: the W&B logger of a run directory, and run directories for sweep runs.

One W&B run covers a whole ``run_dir``: every stage logs into it with its stage name as metric prefix
(``stage1-train/loss_homo``, ``stage3-val/mean_mAP``), so a sweep agent, which watches the one run it
started, sees the final metric, and a requeued job resumes the same run. The run id is generated once and
kept in ``<run_dir>/wandb_id.txt``; a sweep agent's own id (``WANDB_RUN_ID``) takes precedence.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from itkm_lightning.config import WandbConfig
from itkm_lightning.fileio import atomic_write_text

WANDB_ID_FILE = "wandb_id.txt"


def new_run_id() -> str:
    """Eight lowercase letters and digits, the shape of wandb's own run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def stable_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: read from wandb_id.txt, else created (rank 0 writes it)."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = os.environ.get("WANDB_RUN_ID") or new_run_id()
    if rank_zero_only.rank == 0:  # other ranks never create the W&B run (Lightning logs from rank 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, run_id + "\n")
    return run_id


def wandb_logger(cfg: WandbConfig, run_dir: Path, stage: str):
    """A ``WandbLogger`` for one stage's trainer, or None when ``cfg.mode`` is disabled.

    Each stage's trainer gets its own logger object; they share the run (same id, ``resume="allow"``;
    within one process wandb hands back the active run). Call :func:`finish_wandb` once the pipeline
    is done.
    """
    if cfg.mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    run_dir = Path(run_dir)
    return WandbLogger(
        id=stable_run_id(run_dir), resume="allow", name=run_dir.name, save_dir=str(run_dir),
        project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
        mode=cfg.mode, prefix=stage, log_model=False,
    )


def finish_wandb() -> None:
    """Close the W&B run of this process, if one was started (no-op otherwise)."""
    import sys

    wandb = sys.modules.get("wandb")  # never import wandb just to find that nothing ran
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def default_run_dir(config_name: str) -> Path:
    """``runs/<config>``; inside a W&B sweep run ``runs/<config>/sweep-<sweep id>/<run id>``, so that the
    sweep's runs do not resume (or skip as finished) one another."""
    sweep, run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run:
        return Path("runs") / config_name / f"sweep-{sweep}" / run
    return Path("runs") / config_name
