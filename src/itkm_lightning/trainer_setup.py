"""How every stage's Trainer is set up: the user's ``trainer:`` section, plus what a resumable stage needs (its
folder, rolling checkpoints, a resumable CSV log, the fault guards) and what correctness forces.

The CLI parses the config once and makes one :class:`TrainerSetup`; the pipeline builds each stage's Trainer
from it (docs/design.md, "Pipeline").
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import Strategy

from itkm_lightning.callbacks.guards import NonFiniteLossGuard
from itkm_lightning.checkpoints import AtomicCheckpointIO, CheckpointStamp
from itkm_lightning.config import StageEpochs, WandbConfig
from itkm_lightning.fit_config import build_section
from itkm_lightning.loggers import LogsFollowCheckpoints, ResumableCSVLogger
from itkm_lightning.seeding import EpochSeed
from itkm_lightning.tracking import wandb_logger


def stage_trainer_kwargs(stage_dir: Path, seed: int = 0) -> dict:
    """Where and how a stage's Trainer writes: rolling end-of-epoch checkpoints in ``checkpoints/`` (written
    atomically; what resuming reads), ``logs/metrics.csv`` (kept across resumes), and the fault guards
    (docs/reliability.md). TrainerSetup adds the user's trainer section; tests build small Trainers from this."""
    return {
        "default_root_dir": str(stage_dir),
        "logger": ResumableCSVLogger(save_dir=str(stage_dir), name="", version="logs"),
        "callbacks": [rolling_checkpoints(Path(stage_dir) / "checkpoints"), *fault_tolerance_callbacks(seed)],
        "plugins": [AtomicCheckpointIO()],
    }


def rolling_checkpoints(dirpath: str | Path) -> ModelCheckpoint:
    """End-of-epoch checkpoints ``epoch=NNN.ckpt``; the two newest are kept, ``last.ckpt`` links the newest.

    Saved at the end of the training epoch, after the pseudo-labels for the next epoch were made (the
    re-clustering callback runs before checkpoint callbacks), so a resumed run trains on exactly the labels
    an uninterrupted one would.
    """
    return ModelCheckpoint(
        dirpath=str(dirpath), filename="epoch={epoch:03d}", auto_insert_metric_name=False,
        monitor="step", mode="max", save_top_k=2, save_last="link",
        every_n_epochs=1, save_on_train_epoch_end=True,
        enable_version_counter=False,  # a resumed run overwrites (atomically) instead of adding `-v1` copies
    )


def fault_tolerance_callbacks(seed: int) -> list[L.Callback]:
    """What every training run installs besides its checkpoint callback (see docs/reliability.md)."""
    return [CheckpointStamp(), LogsFollowCheckpoints(), NonFiniteLossGuard(), EpochSeed(seed)]


@dataclass
class TrainerSetup:
    """Everything a stage's Trainer is built from, taken from the parsed ``fit`` config once.

    Args:
        run_dir: each stage writes into ``<run_dir>/<stage>/``.
        trainer: the instantiated ``trainer:`` section (Trainer keyword arguments).
        strategy: the parsed ``trainer.strategy`` section when it names a class (a fresh instance per later
            stage: Lightning binds a strategy object to the accelerator of the Trainer that used it).
        epochs: ``epochs:`` (unset: ``trainer.max_epochs``).
        seed: the run's seed (per-epoch reseeding, seeding.py).
        wandb: ``wandb:`` (a W&B logger per stage unless disabled).
        supervised_val_every: ``supervised.check_val_every_n_epoch``.
        save_config: LightningCLI's config-saving callback, copied into every Trainer (each writes its own).
    """

    run_dir: Path
    trainer: dict[str, Any] = field(default_factory=dict)
    strategy: Any = None
    epochs: StageEpochs | None = None
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)
    supervised_val_every: int | None = None
    save_config: L.Callback | None = None

    def kwargs(self, stage: str) -> dict[str, Any]:
        """The Trainer keyword arguments of ``stage``: the ``trainer:`` section with the run's own settings."""
        trainer_cfg = self.trainer
        kwargs: dict[str, Any] = {}
        kwargs["max_epochs"] = self.epochs.of(stage, trainer_cfg.get("max_epochs")) if self.epochs else None
        ours = stage_trainer_kwargs(self.run_dir / stage, self.seed)
        kwargs["default_root_dir"] = ours["default_root_dir"]
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = [ours["logger"]]
            wandb = wandb_logger(self.wandb, self.run_dir, stage)
            if wandb is not None:
                kwargs["logger"].append(wandb)
        callbacks = list(trainer_cfg.get("callbacks") or []) + ours["callbacks"]
        plugins = list(trainer_cfg.get("plugins") or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, *ours["plugins"]]
        if not sys.stdout.isatty() and trainer_cfg.get("enable_progress_bar") is None:
            # A log file (SLURM): a progress bar writes a line per refresh. Set trainer.enable_progress_bar to decide.
            kwargs["enable_progress_bar"] = False
        elif trainer_cfg.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, RichProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        kwargs["callbacks"] = callbacks
        if stage != "stage1" and self.strategy is not None:
            kwargs["strategy"] = build_section(Strategy, "strategy", self.strategy)
        if stage == "supervised" and self.supervised_val_every is not None:
            kwargs["check_val_every_n_epoch"] = self.supervised_val_every
        # Pseudo-label batches need our own rank-aware sampler and a fresh loader after every re-clustering.
        kwargs["use_distributed_sampler"] = False
        kwargs["reload_dataloaders_every_n_epochs"] = 1
        return kwargs

    def build(self, stage: str) -> L.Trainer:
        """A fresh Trainer for ``stage``, writing into ``<run_dir>/<stage>/``."""
        config = {**self.trainer, **self.kwargs(stage)}
        if self.save_config is not None and not config.get("fast_dev_run", False):
            config["callbacks"].append(copy.copy(self.save_config))
        return L.Trainer(**config)
