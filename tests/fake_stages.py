"""Stand-in stage modules for pipeline tests: they follow the stage protocol (docs/design.md) and train quickly.

``FakeStage2`` is a text-only-like stage (its own data loader, no image evaluation); ``FakeStage3`` is Stage I's
training continued from the Stage I hand-over, as the real Stage III starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from itkm_lightning.handoffs import Handoff, Stage1Handoff
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.stages.stage1 import Stage1


@dataclass(eq=False)
class FakeTextHandoff(Handoff):
    text_features: torch.Tensor
    cluster_scenario: torch.Tensor  # the run's figures read it, as from the real Stage2Handoff
    labels: torch.Tensor
    epochs_run: list[int]


class FakeStage2(L.LightningModule):
    """One learnable vector per Stage I cluster, pulled towards random targets for a few steps an epoch."""

    stage_name = "stage2"
    evaluates_images = False
    receives = {"stage1": Stage1Handoff}
    checkpoint_omits = ()

    def __init__(self, backbone: BackboneConfig = BackboneConfig(), dim: int = 4, steps_per_epoch: int = 3,
                 crash_at_epoch: int | None = None) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.dim = dim
        self.steps_per_epoch = steps_per_epoch
        self.crash_at_epoch = crash_at_epoch
        self.prompts: torch.nn.Parameter | None = None
        self.labels: torch.Tensor | None = None
        self.epochs_run: list[int] = []
        self.received: dict[str, Handoff] = {}

    def receive_handoff(self, handoffs: dict[str, Handoff]) -> None:
        self.received = handoffs
        self.labels = handoffs["stage1"].labels
        num_clusters = int(self.labels.max()) + 1
        self.prompts = torch.nn.Parameter(torch.zeros(num_clusters, self.dim))

    def fit_kwargs(self, datamodule, stage_dir: Path) -> dict:
        targets = torch.randn(self.steps_per_epoch * 2, self.dim, generator=torch.Generator().manual_seed(0))
        return {"train_dataloaders": DataLoader(TensorDataset(targets), batch_size=2)}

    def on_train_epoch_start(self) -> None:
        if self.crash_at_epoch is not None and self.current_epoch == self.crash_at_epoch:
            raise RuntimeError(f"simulated crash at epoch {self.current_epoch}")
        self.epochs_run.append(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        (target,) = batch
        loss = (self.prompts.mean(0, keepdim=True) - target).pow(2).mean()
        self.log("train/loss_fake", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)

    def make_handoff(self, datamodule) -> FakeTextHandoff:
        return FakeTextHandoff(stage="stage2", text_features=F.normalize(self.prompts.detach().cpu(), dim=1),
                               cluster_scenario=torch.zeros(len(self.prompts), dtype=torch.long),
                               labels=self.labels.clone(), epochs_run=list(self.epochs_run))

    def extra_results(self) -> dict:
        return {"stage2_text": {"num_clusters": int(self.prompts.shape[0])}}


class FakeStage3(Stage1):
    """Stage I's training again, starting from the Stage I encoder of the hand-over."""

    stage_name = "stage3"
    receives = {"stage1": Stage1Handoff, "stage2": FakeTextHandoff}

    def receive_handoff(self, handoffs: dict[str, Handoff]) -> None:
        assert set(handoffs) == {"stage1", "stage2"}, set(handoffs)
        self.encoder.load_state_dict(handoffs["stage1"].encoder)
        self.received_text = handoffs["stage2"].text_features
