"""Stage I: unsupervised homogeneous learning (docs/method.md section 4)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from itkm_lightning.config import ClusteringConfig, OptimConfig
from itkm_lightning.distributed import all_gather_variable
from itkm_lightning.handoffs import Stage1Handoff
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.stages.clustering_stage import ClusteringStage


class Stage1(ClusteringStage):
    """Cluster-contrast inside each (scenario, group) block, with the scenario embedding and dual branch.

    Args:
        backbone: the CLIP image encoder (weights source, input size, scenario embedding, dual branch).
        clustering: pseudo-label settings used at fit start and after every epoch.
        optim: optimiser and schedule.
        temperature: ClusterNCE temperature tau.
        memory_momentum: mu in ``m <- mu*m + (1-mu)*f``.
        flip_test: average features of an image and its mirror at test time.
        retrieval_feature: ``f`` or ``f+v`` (concatenated with the projected feature).
    """

    stage_name = "stage1"

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        clustering: ClusteringConfig = ClusteringConfig(),
        optim: OptimConfig = OptimConfig(),
        temperature: float = 0.05,
        memory_momentum: float = 0.1,
        flip_test: bool = False,
        retrieval_feature: str = "f",
    ) -> None:
        super().__init__(backbone, clustering, optim, temperature, memory_momentum, flip_test, retrieval_feature,
                         section="model")
        self.save_hyperparameters()
        # Stage I's loss reads only f; the projection to text space gets no gradient, so it is frozen here
        # (and DDP sees no unused parameter). Stage III trains it again.
        self.encoder.visual_projection.requires_grad_(False)

    def labeler(self) -> L.Callback:
        from itkm_lightning.callbacks.pseudo_labels import PseudoLabelCallback

        return PseudoLabelCallback(self.clustering)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["pseudo_label"]
        out = self.encoder(batch["image"], batch["scenario"], batch["group"])
        f = F.normalize(out.f, dim=1)
        loss = self.homogeneous_loss(f, self.memory.blocks[labels], labels)
        # Every rank applies the same memory update from all ranks' samples, so memories stay identical.
        self.memory.update(all_gather_variable(f.detach()), all_gather_variable(labels))
        self.log("train/loss_homo", loss, prog_bar=True, batch_size=labels.numel())
        return loss

    def make_handoff(self, datamodule: L.LightningDataModule) -> Stage1Handoff:
        """The trained encoder and the final pseudo-labels: one re-clustering of features of the final weights.

        The last epoch trains on labels from before it, so the labels Stage II learns text for come from one more
        extraction (every rank) and clustering (rank 0, broadcast), exactly as between epochs.
        """
        from itkm_lightning.clustering.blocks import EmptyClusteringError, cluster_blocks_distributed

        features = self.training_set_features_after_fit(datamodule)
        labels = torch.from_numpy(cluster_blocks_distributed(features, datamodule.block_of_index, self.clustering,
                                                             device=self.device)).long().cpu()
        if not bool((labels >= 0).any()):
            raise EmptyClusteringError(
                f"the final re-clustering of Stage I found no cluster (eps={self.clustering.eps}); raise "
                "model.clustering.eps and run again (training is not repeated)"
            )
        return Stage1Handoff(
            **super().make_handoff(datamodule).to_dict(),
            labels=labels,
            blocks=torch.as_tensor(datamodule.block_of_index, dtype=torch.long),
            block_names=[(str(scenario), int(group)) for scenario, group in datamodule.blocks],
            paths=[str(s.path) for s in datamodule.train_samples],
        )
