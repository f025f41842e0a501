"""The supervised reference (an upper bound, not part of ITKM): Stage I trained on the true identities."""

from __future__ import annotations

import lightning as L
import torch

from itkm_lightning.handoffs import SupervisedHandoff
from itkm_lightning.stages.base import ReIDStage
from itkm_lightning.stages.stage1 import Stage1


class SupervisedStage1(Stage1):
    """Stage I's module, recipe and backbone start, with ground-truth identities in place of clustering.

    How far the unsupervised stages got is read against this row, as USL ReID papers report a supervised
    upper bound. What changes against Stage I is the labeler only (``GroundTruthLabelCallback``): one label
    and one memory entry per true person of a scenario, covering both of its groups (the clothing-agnostic
    view of a ``cc`` picture is the same person as the picture), logits over the scenario's people, and
    P x K batches whose K pictures of a person alternate between the two groups. Same arguments as
    ``Stage1`` (``clustering`` is unused). Built by the pipeline when ``supervised.enabled`` is set.
    """

    stage_name = "supervised"
    reads_ground_truth = True  # the one stage whose training labels are the true identities

    def labeler(self) -> L.Callback:
        from itkm_lightning.callbacks.ground_truth import GroundTruthLabelCallback

        return GroundTruthLabelCallback()

    def make_handoff(self, datamodule: L.LightningDataModule) -> SupervisedHandoff:
        """The trained encoder and the labels it trained on (nothing reads it but the tools: a finished marker)."""
        from itkm_lightning.callbacks.ground_truth import ground_truth_labels

        return SupervisedHandoff(**ReIDStage.make_handoff(self, datamodule).to_dict(),
                                 labels=torch.from_numpy(ground_truth_labels(datamodule.train_samples)))
