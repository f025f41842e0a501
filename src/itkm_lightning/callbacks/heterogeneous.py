"""Stage III's per-epoch work after re-clustering: DRU, CHM, IHM (in the module) and their monitoring.

Monitoring reads the hidden identities of the training set; nothing here reaches a loss.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.callbacks.pseudo_labels import PseudoLabelCallback
from itkm_lightning.clustering.blocks import cluster_blocks_distributed


def majority_identity(labels: np.ndarray, identity: np.ndarray, num_clusters: int) -> np.ndarray:
    """Most frequent true identity (integer code) of each cluster 0..num_clusters-1; -1 for an empty one."""
    out = np.full(num_clusters, -1, dtype=np.int64)
    member = labels >= 0
    if not member.any():
        return out
    pairs, counts = np.unique(np.stack([labels[member], identity[member]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((-counts, pairs[:, 0]))  # by cluster, most frequent identity first
    pairs = pairs[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    out[pairs[first, 0]] = pairs[first, 1]
    return out


def matching_quality(
    labels: np.ndarray,
    identity: np.ndarray,
    block_of_index: np.ndarray,
    block_names: list[tuple[str, int]],
    chm_pairs: dict[str, np.ndarray],
    positives: np.ndarray,
    text_hits: np.ndarray,
    num_clusters: int,
) -> dict[str, dict[str, float]]:
    """Per scenario: CHM pairs and their precision, IHM set sizes and precision, text-image agreement.

    A CHM pair is right when both clusters have the same majority identity; an IHM positive is right when
    it shares the instance's identity; ``text_hits`` [N] says whether an instance's nearest cluster text
    is its own cluster (only clustered instances count).
    """
    majority = majority_identity(labels, identity, num_clusters)
    stats: dict[str, dict[str, float]] = {}
    for scenario in dict.fromkeys(s for s, _ in block_names):
        in_scenario = np.isin(block_of_index, [b for b, (s, _) in enumerate(block_names) if s == scenario])
        row: dict[str, float] = {}
        pairs = chm_pairs.get(scenario)
        if pairs is not None:
            row["chm_pairs"] = float(len(pairs))
            right = majority[pairs[:, 0]] == majority[pairs[:, 1]]
            row["chm_precision"] = float(right.mean()) if len(pairs) else float("nan")
        if len(positives):
            pos = positives[in_scenario]
            valid = pos >= 0
            sizes = valid.sum(axis=1)
            row["ihm_size"] = float(sizes.mean()) if len(sizes) else 0.0
            row["ihm_nonempty"] = float((sizes > 0).mean()) if len(sizes) else 0.0
            own = np.broadcast_to(identity[in_scenario][:, None], pos.shape)
            hits = identity[pos[valid]] == own[valid]
            row["ihm_precision"] = float(hits.mean()) if hits.size else float("nan")
        clustered = in_scenario & (labels >= 0)
        row["text_agreement"] = float(text_hits[clustered].mean()) if clustered.any() else float("nan")
        stats[scenario] = row
    return stats


class HeterogeneousMatchingCallback(PseudoLabelCallback):
    """Pseudo-labels as in Stage I, then Stage III's DRU / CHM / IHM refresh and its monitoring.

    Also re-clusters once with the final encoder at the end of training (the handoff's labels), while the
    model is still on its device and every rank is alive.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        pl_module.bind_training_set(dm)
        resumed = self.labels is not None and len(self.labels) == len(dm.train_samples)
        super().on_fit_start(trainer, pl_module)
        if resumed:  # labels, text and matches come from the checkpoint; only the instance memory is rebuilt
            pl_module.refresh_instance_memory(pl_module.training_set_features(dm))

    def after_relabel(self, trainer: L.Trainer, pl_module: L.LightningModule, labels: np.ndarray,
                      features: torch.Tensor) -> None:
        pl_module.refresh_heterogeneous(features, labels, trainer.is_global_zero)
        if trainer.is_global_zero:
            self._log_matching(trainer, pl_module, labels)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        features = pl_module.training_set_features(dm)
        pl_module.final_labels = torch.from_numpy(
            cluster_blocks_distributed(features, dm.block_of_index, self.cfg, device=pl_module.device))
        final = pl_module.final_labels
        rank_zero_info(f"final labels (handoff): {len(final.unique()) - int((final < 0).any())} clusters, "
                       f"{int((final < 0).sum())} outliers")

    @torch.no_grad()
    def _log_matching(self, trainer: L.Trainer, pl_module: L.LightningModule, labels: np.ndarray) -> None:
        dm = trainer.datamodule
        _, identity = np.unique([s.identity for s in dm.train_samples], return_inverse=True)
        # v's direction from the normalised f: visual_projection is linear without bias.
        v = F.normalize(pl_module.encoder.visual_projection(pl_module.instance_memory), dim=1)
        blocks = pl_module.instance_blocks
        logits = (v @ pl_module.prototypes.t()).masked_fill(blocks[:, None] != pl_module.memory.blocks[None, :],
                                                            float("-inf"))
        text_hits = (logits.argmax(dim=1) == torch.as_tensor(labels, device=v.device)).cpu().numpy()
        stats = matching_quality(labels, identity, dm.block_of_index, pl_module.block_names, pl_module.chm_pairs,
                                 pl_module.ihm_positives.cpu().numpy() if pl_module.ihm else np.zeros((0, 0)),
                                 text_hits, pl_module.memory.num_clusters)
        self.history[-1]["matching"] = stats
        if trainer.logger is not None:
            flat = {f"match/{scenario}/{k}": v for scenario, s in stats.items() for k, v in s.items()}
            trainer.logger.log_metrics(flat, step=trainer.global_step)
        rank_zero_info("matching: " + "; ".join(
            f"{s}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()) for s, row in stats.items()))
