"""A CSV logger whose ``metrics.csv`` survives a resume and matches the checkpoint it resumed from."""

from __future__ import annotations

import csv
import io

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from itkm_lightning.fileio import atomic_write_text


class _ResumableWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and appends to it (Lightning's writer deletes it on start)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def drop_rows_after(self, step: int) -> None:
        """Forget rows logged after ``step``: a resumed run logs those steps again."""
        self.metrics = [m for m in self.metrics if int(m.get("step", 0)) <= step]
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= step]
        if len(kept) != len(rows):
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.metrics_file_path, out.getvalue())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the metrics of an interrupted run instead of deleting them."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment


class LogsFollowCheckpoints(L.Callback):
    """Flush the loggers when a checkpoint is saved; on resume, drop rows logged after that checkpoint.

    So a killed run's metrics are on disk up to its last checkpoint and a resumed run neither loses nor
    repeats a step.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            experiment = logger.experiment if isinstance(logger, ResumableCSVLogger) else None
            if isinstance(experiment, _ResumableWriter):
                experiment.drop_rows_after(int(checkpoint.get("global_step", 0)))
