"""Per-epoch pseudo-labels in Lightning: extract -> gather -> cluster the blocks (``clustering.blocks``) -> hand
the labels to the datamodule and the memory; monitoring, resume and the stop when no block can train
(docs/method.md section 3)."""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from itkm_lightning.clustering.blocks import (
    EmptyClusteringError,
    block_quality,
    cluster_blocks_distributed,
    cluster_statistics,
    drop_degenerate_blocks,
)
from itkm_lightning.config import ClusteringConfig


class PseudoLabelCallback(L.Callback):
    """Re-cluster at fit start and after every epoch; hand labels to the datamodule and the memory.

    The labels are part of the checkpoint, so a resumed run trains on the same labels it stopped with.
    """

    def __init__(self, clustering: ClusteringConfig, config_key: str = "model.clustering") -> None:
        self.cfg = clustering
        self.config_key = config_key  # where users set these values, for the advice in error messages
        self.labels: np.ndarray | None = None
        self.history: list[dict] = []
        self._stored_cfg: dict | None = None  # the clustering settings that made the checkpoint's labels

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if self.labels is not None and self._stored_cfg not in (None, self.cfg.model_dump(mode="json")):
            rank_zero_info("pseudo-labels: the clustering settings changed since the checkpoint; re-clustering")
            self.labels = None
        if self.labels is not None and len(self.labels) == len(dm.train_samples):
            rank_zero_info("pseudo-labels: resuming with the labels stored in the checkpoint")
            self._apply(trainer, pl_module, self.labels, recompute_memory=pl_module.memory.num_clusters == 0)
            return
        self.recluster(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return  # the last epoch: no training follows, so no labels are needed
        self.recluster(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"labels": None if self.labels is None else self.labels.tolist(), "history": self.history,
                "clustering": self.cfg.model_dump(mode="json")}

    def load_state_dict(self, state_dict: dict) -> None:
        labels = state_dict.get("labels")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.history = list(state_dict.get("history", []))
        self._stored_cfg = state_dict.get("clustering")

    # ------------------------------------------------------------------ work
    def recluster(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        when = "fit start" if trainer.global_step == 0 else f"after epoch {trainer.current_epoch}"
        start = time.perf_counter()
        features = pl_module.training_set_features(dm)  # every rank: all features, dataset order
        extracted = time.perf_counter() - start
        labels = cluster_blocks_distributed(features, dm.block_of_index, self.cfg, device=pl_module.device)
        stats = self._log_quality(trainer, labels)
        rank_zero_info(
            f"pseudo-labels ({when}): "
            + (f"reused the {len(features)} features of the same weights, " if pl_module.features_reused else
               f"extracted {len(features)} features in {extracted:.1f}s, ")
            + f"clustered in {time.perf_counter() - start - extracted:.1f}s; "
            + "; ".join(f"{k}: {v['num_clusters']} clusters, {v['num_outliers']} outliers"
                        + (f", ARI {v['ari']:.2f}" if "ari" in v else f", mean size {v['mean_cluster_size']:.1f}")
                        for k, v in stats.items())
        )
        names = list(stats)
        labels, dropped = drop_degenerate_blocks(labels, dm.block_of_index)
        if len(dropped) == len(names):
            self._stop(trainer, stats)
        for block, count in dropped.items():
            s = stats[names[block]]
            why = ("has no cluster" if count == 0 else
                   f"has a single cluster ({int((dm.block_of_index == block).sum()) - s['num_outliers']} images; "
                   "ClusterNCE needs two to contrast)")
            rank_zero_warn(f"pseudo-labels ({when}): block {names[block]} {why}, {s['num_outliers']} outliers; "
                           f"it sits out this epoch, the other {len(names) - len(dropped)} blocks train")
        self._apply(trainer, pl_module, labels, recompute_memory=True, features=features)
        self.after_relabel(trainer, pl_module, labels, features)

    def after_relabel(self, trainer: L.Trainer, pl_module: L.LightningModule, labels: np.ndarray,
                      features: torch.Tensor) -> None:
        """Extra per-epoch work once new labels and memories exist (subclasses; Stage I needs none).

        Called on every rank with the same ``labels`` and gathered ``features`` (dataset order, CPU).
        Not called when a resumed run restores the checkpoint's labels.
        """

    def _stop(self, trainer: L.Trainer, stats: dict[str, dict]) -> None:
        """No block can train: save the state, then stop with the numbers and an eps to try."""
        from itkm_lightning.checkpoints import STOPPED_CHECKPOINT, checkpoint_dir

        path = checkpoint_dir(trainer) / STOPPED_CHECKPOINT
        trainer.save_checkpoint(path)  # every rank calls it (a collective); rank 0 writes
        eps, key = self.cfg.eps, self.config_key
        counts = ", ".join(f"{k}: {v['num_clusters']} clusters / {v['num_outliers']} outliers" for k, v in stats.items())
        empty = sum(v["num_clusters"] == 0 for v in stats.values())
        merged = sum(v["num_clusters"] == 1 for v in stats.values())
        # Most blocks without any cluster means eps is too narrow, even if a block or two formed a single
        # cluster (a tight group of near-duplicates); only when merged blocks dominate is it too wide.
        if empty and empty >= merged:
            what = "every image is an outlier" if empty == len(stats) else "most blocks have no cluster"
            advice = (f"{what}: the features are too spread for eps={eps}; raise "
                      f"{key}.eps (e.g. --{key}.eps {min(0.95, eps + 0.1):.2f}) or lower "
                      f"min_samples (now {self.cfg.min_samples})")
        else:  # no block has two clusters, and most have exactly one
            advice = (f"blocks merge into at most one cluster: eps={eps} is too wide; lower {key}.eps "
                      f"(e.g. --{key}.eps {max(0.05, eps - 0.1):.2f})")
        raise EmptyClusteringError(
            f"no (scenario, group) block has two pseudo-label clusters, so there is nothing to train on ({counts}); "
            f"{advice}. State saved to {path}: re-running with the new setting and --resume_anyway resumes from it "
            "and re-clusters"
        )

    def _apply(self, trainer, pl_module, labels: np.ndarray, *, recompute_memory: bool,
               features: torch.Tensor | None = None) -> None:
        dm = trainer.datamodule
        self.labels = labels
        dm.set_pseudo_labels(labels)
        if recompute_memory:
            if features is None:
                features = pl_module.training_set_features(dm)
            blocks = torch.from_numpy(dm.block_of_index)
            pl_module.memory.reset(features.to(pl_module.device), torch.from_numpy(labels).to(pl_module.device),
                                   blocks.to(pl_module.device))

    def _log_quality(self, trainer: L.Trainer, labels: np.ndarray) -> dict[str, dict]:
        """Monitoring only: the hidden identities never reach the loss."""
        dm = trainer.datamodule
        stats: dict[str, dict] = {}
        block_of_index = dm.block_of_index
        for b, (scenario, group) in enumerate(dm.blocks):
            idx = np.flatnonzero(block_of_index == b)
            ids = [dm.train_samples[i].identity for i in idx]
            if all(dm.train_samples[i].pid >= 0 for i in idx):
                stats[f"{scenario}-g{group}"] = block_quality(labels[idx], ids)
            else:  # own footage without labels: no ARI/NMI, only what clustering found
                stats[f"{scenario}-g{group}"] = cluster_statistics(labels[idx])
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "blocks": stats})
        if trainer.is_global_zero:
            flat = {f"pseudo/{name}/{k}": v for name, s in stats.items() for k, v in s.items()}
            for logger in trainer.loggers:  # CSV and, when enabled, W&B
                logger.log_metrics(flat, step=trainer.global_step)
        return stats
