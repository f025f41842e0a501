"""Per-epoch pseudo-labels: extract -> gather -> sharded kNN -> cluster on rank 0 -> broadcast (docs/method.md section 3)."""

from __future__ import annotations

import time
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score

from itkm_lightning.clustering import cluster
from itkm_lightning.config import ClusteringConfig
from itkm_lightning.distributed import broadcast_tensor, jaccard_row_share, rank_and_world_size, sharded_knn


class EmptyClusteringError(RuntimeError):
    """No block produced two clusters or more: there is nothing to train on."""


def drop_degenerate_blocks(labels: np.ndarray, block_of_index: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Labels with every block of fewer than two clusters set to -1 (outliers), and those blocks' cluster counts.

    ClusterNCE contrasts a sample's cluster against the other clusters of its block: with one cluster the
    softmax is 1 and the loss and gradient are 0, so such a block would only take batch slots.
    """
    labels = labels.copy()
    dropped: dict[int, int] = {}
    for block in np.unique(block_of_index):
        idx = np.flatnonzero(block_of_index == block)
        count = len(np.unique(labels[idx][labels[idx] >= 0]))
        if count < 2:
            labels[idx] = -1
            dropped[int(block)] = count
    if dropped and (labels >= 0).any():  # keep ids dense (0..C-1) for the memory and the sampler
        found = labels >= 0
        labels[found] = np.unique(labels[found], return_inverse=True)[1]
    return labels, dropped


def block_quality(labels: np.ndarray, identities: list[str]) -> dict[str, float]:
    """Clusters, outliers and agreement with the hidden identities (outliers count as singletons)."""
    singletons = labels.copy()
    outliers = singletons < 0
    singletons[outliers] = singletons.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    # torchmetrics computes both scores (equal to scikit-learn's within 1e-6; tests/test_timm_tower.py).
    preds = torch.from_numpy(singletons.astype(np.int64))
    target = torch.from_numpy(np.unique(np.asarray(identities), return_inverse=True)[1].astype(np.int64).reshape(-1))
    with warnings.catch_warnings():  # torchmetrics' contingency table: a sparse-tensor notice, not a problem
        warnings.simplefilter("ignore", UserWarning)
        ari = float(adjusted_rand_score(preds, target))
        nmi = float(normalized_mutual_info_score(preds, target))
    return {
        "num_clusters": int(len(set(labels[labels >= 0].tolist()))),
        "num_outliers": int(outliers.sum()),
        "ari": ari,
        "nmi": nmi,
    }


def cluster_statistics(labels: np.ndarray) -> dict[str, float]:
    """What clustering found in a block without ground truth: clusters, outliers, cluster sizes."""
    kept = labels[labels >= 0]
    sizes = np.bincount(kept) if len(kept) else np.zeros(0, dtype=np.int64)
    sizes = sizes[sizes > 0]
    return {
        "num_clusters": int(len(sizes)),
        "num_outliers": int((labels < 0).sum()),
        "outlier_fraction": float((labels < 0).mean()) if len(labels) else 0.0,
        "mean_cluster_size": float(sizes.mean()) if len(sizes) else 0.0,
        "max_cluster_size": int(sizes.max()) if len(sizes) else 0,
    }


def _block_indices(block_of_index: np.ndarray, k1: int) -> list[np.ndarray]:
    """Sample indices of every block, checked to hold more than k1 images (raised on every rank alike)."""
    blocks = [np.flatnonzero(block_of_index == block) for block in np.unique(block_of_index)]
    for idx in blocks:
        if len(idx) <= k1:
            raise ValueError(
                f"a (scenario, group) block has {len(idx)} training images but clustering k1={k1} needs more; "
                "lower clustering.k1 (and k2) of the stage that clusters: model.clustering for Stage I, "
                "stage3.clustering for Stage III"
            )
    return blocks


def cluster_blocks(features: np.ndarray, block_of_index: np.ndarray, cfg: ClusteringConfig,
                   neighbours: list[np.ndarray] | None = None, share_rows=None) -> np.ndarray:
    """Cluster each block separately; labels made globally unique (block after block), -1 = outlier.

    ``neighbours``: precomputed k1-nearest-neighbour indices of every block (block order, indices local to
    the block), as :func:`block_neighbours` returns; searched here when None. ``share_rows``: under DDP,
    ``distributed.jaccard_row_share``-like callable (block size -> this rank's ``RowShare``); every rank
    must then call with the same arguments.
    """
    labels = np.full(len(features), -1, dtype=np.int64)
    offset = 0
    for b, idx in enumerate(_block_indices(block_of_index, cfg.k1)):
        local = cluster(features[idx], method=cfg.method, eps=cfg.eps, min_samples=cfg.min_samples,
                        k1=cfg.k1, k2=cfg.k2, backend=cfg.backend,
                        ranks=None if neighbours is None else neighbours[b], knn_options=cfg.knn_options(),
                        share=None if share_rows is None else share_rows(len(idx)))
        found = local >= 0
        if found.any():
            _, dense = np.unique(local[found], return_inverse=True)
            labels[idx[found]] = dense + offset
            offset += int(dense.max()) + 1
    return labels


def block_neighbours(features: torch.Tensor, block_of_index: np.ndarray, cfg: ClusteringConfig,
                     device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The k1 nearest neighbours inside every block, the search sharded over the DDP ranks (all ranks call)."""
    return [sharded_knn(features[torch.from_numpy(idx)], cfg.k1, backend=cfg.backend, device=device,
                        knn_options=cfg.knn_options())[1]
            for idx in _block_indices(block_of_index, cfg.k1)]


def cluster_blocks_distributed(features: torch.Tensor, block_of_index: np.ndarray, cfg: ClusteringConfig,
                               device: torch.device | str = "cpu") -> np.ndarray:
    """:func:`cluster_blocks` for every rank: kNN and the Jaccard graph's rows sharded over the ranks.

    Every rank passes the same (gathered) ``features`` and gets the same labels, equal to the
    single-process ``cluster_blocks``. The kNN search, the O(N^2 d) part, is split over the ranks, and so
    are the candidate pairs and exact overlaps of the DBSCAN path's Jaccard graph (each rank a slice of
    rows, the pairs gathered); the O(N k) neighbourhood weights and DBSCAN run on every rank alike, and
    rank 0's labels are broadcast (HDBSCAN's all-pairs graph is not split: every rank computes it).
    """
    neighbours = block_neighbours(features, block_of_index, cfg, device=device)
    labels = torch.from_numpy(cluster_blocks(features.numpy(), block_of_index, cfg, neighbours,
                                             lambda n: jaccard_row_share(n, device)))
    return broadcast_tensor(labels if rank_and_world_size()[0] == 0 else None).numpy()


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
        features = pl_module.extract(dm.cluster_dataloader())  # every rank: all features, dataset order
        extracted = time.perf_counter() - start
        labels = cluster_blocks_distributed(features, dm.block_of_index, self.cfg, device=pl_module.device)
        stats = self._log_quality(trainer, labels)
        rank_zero_info(
            f"pseudo-labels ({when}): extracted {len(features)} features in {extracted:.1f}s, "
            f"clustered in {time.perf_counter() - start - extracted:.1f}s; "
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
                features = pl_module.extract(dm.cluster_dataloader())
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
