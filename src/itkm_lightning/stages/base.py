"""What every ITKM stage shares: the image encoder, feature extraction and benchmark evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from itkm_lightning.config import OptimConfig
from itkm_lightning.distributed import all_gather_variable, on_every_rank
from itkm_lightning.errors import ConfigError
from itkm_lightning.evaluation.benchmark import evaluate_benchmark
from itkm_lightning.feature_cache import feature_key
from itkm_lightning.models.backbone import build_image_encoder
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.lr_schedule import warmup_scheduler
from itkm_lightning.handoffs import EncoderHandoff, Handoff
from itkm_lightning.safe_load import register_safe_types

# Resuming a stage built outside LightningCLI: Lightning's weights_only load meets our configs in its hparams.
register_safe_types()


class ReIDStage(L.LightningModule):
    """Base of the stages: owns ``encoder`` and scores every benchmark of the datamodule in validation.

    Args:
        backbone: the image encoder (CLIP ViT or timm CNN: weights source, input size, scenario embedding,
            dual branch).
        optim: optimiser and schedule.
        flip_test: average features of an image and its mirror at test time.
        retrieval_feature: ``f`` (CLS after the final layer norm) or ``f+v`` (concatenated with the projection,
            as CLIP-ReID does).
    """

    stage_name = "stage"
    evaluates_images = True  # the pipeline validates the final weights and records results[stage_name]
    reads_ground_truth = False  # only the supervised reference (stages/supervised.py) trains on true identities
    receives: ClassVar[Mapping[str, type[Handoff]]] = {}  # an image stage starts from the backbone
    checkpoint_omits: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        optim: OptimConfig = OptimConfig(),
        flip_test: bool = False,
        retrieval_feature: str = "f",
    ) -> None:
        super().__init__()
        if retrieval_feature not in ("f", "f+v"):
            raise ConfigError(f"retrieval_feature must be 'f' or 'f+v'; got {retrieval_feature!r}")
        self.backbone_config = backbone
        self.optim = optim
        self.flip_test = flip_test
        self.retrieval_feature = retrieval_feature
        self.encoder = build_image_encoder(self.backbone_config)
        self.benchmark_results: dict[str, dict[str, Any]] = {}
        self.rerank = None  # a RerankConfig from the run's ``evaluation.rerank`` (set by the CLI/pipeline)
        self.benchmark_results_step = -1
        self._val_buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.features_reused = False  # the last training_set_features came from the feature cache

    # ---------------------------------------------------------------- features
    def clustering_features(self, batch: dict) -> torch.Tensor:
        out = self.encoder(batch["image"], batch["scenario"], batch["group"])
        return F.normalize(out.f, dim=1)

    def retrieval_features(self, batch: dict) -> torch.Tensor:
        def encode(images: torch.Tensor) -> torch.Tensor:
            out = self.encoder(images, batch["scenario"], batch["group"])
            feats = out.f if self.retrieval_feature == "f" else torch.cat([out.f, out.v], dim=1)
            return feats

        feats = encode(batch["image"])
        if self.flip_test:
            feats = feats + encode(torch.flip(batch["image"], dims=[3]))
        return F.normalize(feats, dim=1)

    @torch.no_grad()
    def extract(self, loader: DataLoader, which: str = "clustering") -> torch.Tensor:
        """Features of a sharded loader, gathered from every rank and put back in dataset order (on CPU)."""
        was_training = self.training
        self.eval()
        encode = self.clustering_features if which == "clustering" else self.retrieval_features
        indices, feats = [], []
        for batch in loader:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            feats.append(encode(batch).float())
            indices.append(batch["index"])
        local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=self.device)
        local = torch.cat(feats) if feats else torch.zeros(0, 1, device=self.device)
        all_idx = all_gather_variable(local_idx)
        all_feats = all_gather_variable(local)
        out = torch.empty_like(all_feats)
        out[all_idx] = all_feats
        self.train(was_training)
        return out.cpu()

    @torch.no_grad()
    def training_set_features(self, datamodule: L.LightningDataModule) -> torch.Tensor:
        """Clustering features of ``datamodule``'s training set in dataset order (CPU), like ``extract`` of its
        ``cluster_dataloader()``; a pass this run made before with bit-identical weights comes from the
        datamodule's ``feature_cache`` instead (feature_cache.py). ``features_reused`` says which it was."""
        cache = getattr(datamodule, "feature_cache", None)
        key = None
        if cache is not None:
            key = feature_key(self.encoder, type(self).clustering_features, datamodule.train_samples,
                              self.device.type)
            features = cache.get(key)
            # Every rank holds the same weights, so all hit or all miss; checked all the same, because a rank
            # that extracted alone would wait forever in the gather.
            if on_every_rank(features is not None, self.device):
                self.features_reused = True
                return features
        self.features_reused = False
        features = self.extract(datamodule.cluster_dataloader())
        if cache is not None:
            cache.put(key, features)
        return features

    @torch.no_grad()
    def training_set_features_after_fit(self, datamodule: L.LightningDataModule) -> torch.Tensor:
        """``training_set_features`` once ``trainer.fit`` has returned: Lightning has moved the module to the CPU
        by then, so it goes back to the trainer's device (and precision) and returns to the CPU after."""
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        precision = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
        home = self.device
        self.to(device)
        try:
            with precision:
                return self.training_set_features(datamodule)
        finally:
            self.to(home)

    # ---------------------------------------------------------------- stage contract (stages/protocol.py)
    def receive_handoff(self, handoffs: Mapping[str, Handoff]) -> None:
        """Take the hand-overs of ``receives`` (none here); called before every fit, resumes too."""

    def fit_kwargs(self, datamodule: L.LightningDataModule, stage_dir: Path) -> dict:
        """Arguments of ``trainer.fit`` besides the module and ``ckpt_path``."""
        return {"datamodule": datamodule}

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The image encoder's weights for a hand-over: CPU copies, floating point ones in fp32."""
        return {k: (v.float() if v.is_floating_point() else v).detach().cpu().clone()
                for k, v in self.encoder.state_dict().items()}

    def make_handoff(self, datamodule: L.LightningDataModule) -> EncoderHandoff:
        """What the next stage receives (weights only, never optimizer state); every rank calls it after fit."""
        return EncoderHandoff(stage=self.stage_name, encoder=self.encoder_state(),
                              backbone=self.backbone_config.model_dump())

    def extra_results(self) -> dict[str, dict]:
        """Nothing beside the benchmark scores."""
        return {}

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_buffers = {}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        feats = self.retrieval_features(batch).float()
        self._val_buffers.setdefault(dataloader_idx, []).append((batch["index"], feats))

    def on_validation_epoch_end(self) -> None:
        benchmarks = self.trainer.datamodule.benchmarks
        results: dict[str, dict[str, float]] = {}
        for i, bench in enumerate(benchmarks):
            chunks = self._val_buffers.get(i, [])
            idx = torch.cat([c[0] for c in chunks]) if chunks else torch.zeros(0, dtype=torch.long, device=self.device)
            dim = chunks[0][1].shape[1] if chunks else 1
            feats = torch.cat([c[1] for c in chunks]) if chunks else torch.zeros(0, dim, device=self.device)
            idx, feats = all_gather_variable(idx), all_gather_variable(feats)
            ordered = torch.empty_like(feats)
            ordered[idx] = feats
            results[bench.name] = evaluate_benchmark(bench, ordered.cpu(), rerank=self.rerank)
            for metric, value in results[bench.name].items():
                if isinstance(value, float):  # not the labels (protocol, rerank) nor the count of trials
                    self.log(f"val/{bench.name}/{metric}", value, sync_dist=True)
        if results:
            mean_map = float(np.mean([r["mAP"] for r in results.values()]))
            self.log("val/mean_mAP", mean_map, sync_dist=True)
            summary = ", ".join(f"{n} mAP {r['mAP']:.3f} R1 {r['R1']:.3f}" for n, r in results.items())
            rank_zero_info(f"[{self.stage_name}] epoch {self.current_epoch}: {summary}")
        self.benchmark_results = results
        self.benchmark_results_step = self.global_step  # lets fit() reuse an end-of-training validation
        self._val_buffers = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        new = list(self.encoder.new_parameters())
        new_ids = {id(p) for p in new}
        pretrained = [p for p in self.parameters() if p.requires_grad and id(p) not in new_ids]
        groups = [{"params": pretrained, "lr": self.optim.lr}]
        if new:
            groups.append({"params": [p for p in new if p.requires_grad], "lr": self.optim.lr_new})
        optimizer = torch.optim.Adam(groups, weight_decay=self.optim.weight_decay)
        cfg = self.optim
        # Per epoch: warm-up from 0.1, then cosine to 0.01 over the trainer's epochs (or step decay / constant).
        # Without a Trainer (tests, tools) the optimiser is still built; only a cosine needs the epochs.
        epochs = self._trainer.max_epochs if self._trainer is not None else None
        scheduler = warmup_scheduler(optimizer, warmup=cfg.warmup_epochs, start=0.1, floor=0.01, decay=cfg.schedule,
                                     total=epochs or 1, milestones=tuple(cfg.step_epochs), gamma=cfg.step_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
