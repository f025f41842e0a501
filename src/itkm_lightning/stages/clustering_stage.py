"""What Stage I, Stage III and the supervised reference share: learning from labels against a cluster memory."""

from __future__ import annotations

import lightning as L
import torch

from itkm_lightning.config import ClusteringConfig, OptimConfig
from itkm_lightning.errors import ConfigError
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.losses import cluster_nce
from itkm_lightning.models.memory import ClusterMemory
from itkm_lightning.stages.base import ReIDStage


class ClusteringStage(ReIDStage):
    """An image stage that trains on per-sample labels with ClusterNCE against one memory of cluster centroids.

    A subclass names its ``labeler``, the callback that sets the labels and rebuilds ``memory`` at fit start
    (and, for pseudo-labels, after every epoch), and calls ``save_hyperparameters`` in its own ``__init__``
    so that its checkpoints record its own arguments. ``section`` is where users set its arguments
    (``model`` for Stage I, ``stage3``), for error messages.
    """

    def __init__(self, backbone: BackboneConfig, clustering: ClusteringConfig, optim: OptimConfig, temperature: float,
                 memory_momentum: float, flip_test: bool, retrieval_feature: str, *, section: str) -> None:
        super().__init__(backbone=backbone, optim=optim, flip_test=flip_test, retrieval_feature=retrieval_feature)
        if temperature <= 0:
            raise ConfigError(f"{section}.temperature must be > 0; got {temperature}")
        self.clustering = clustering
        self.temperature = temperature
        self.memory = ClusterMemory(self.encoder.feature_dim, momentum=memory_momentum)

    def labeler(self) -> L.Callback:
        """The callback that labels the training set for this stage's fit."""
        raise NotImplementedError

    def configure_callbacks(self):
        if self.trainer.state.fn != "fit":
            return []  # validate/test need no labels
        return [self.labeler()]

    def homogeneous_loss(self, f: torch.Tensor, blocks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ClusterNCE of L2-normalised features ``f`` against the centroids of each sample's own block."""
        return cluster_nce(self.memory.logits(f, blocks, self.temperature), labels)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        if "memory.features" in state:  # the cluster count changes at every re-clustering
            self.memory.resize_like(state["memory.features"], state["memory.blocks"])
