"""Stage II: text representation learning (docs/method.md section 5).

A second, frozen CLIP describes every Stage I cluster c with a learnable prompt "A photo of a X1..XM
person."; only the M word embeddings per cluster train, against cached image features of the cluster's
members (supervised image-to-text + text-to-image contrast, plus the multi-scenario separation hinge).
The output, the offline text features ``T_off``, goes to Stage III in ``stage2/handoff.pt``.

Checkpoint contents (``<run_dir>/stage2/checkpoints/*.ckpt``): the usual Lightning entries (optimizer,
scheduler, loop counters, hyper-parameters) and a ``state_dict`` holding only
``prompts`` (C, M, W: the learned word embeddings), ``cluster_scenario`` (C,) and ``cluster_block`` (C,).
The frozen CLIP text tower is left out (it is reloaded from ``backbone``; a random one is seeded) and put
back on load. The cached image features live next to it in ``<run_dir>/stage2/features.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from itkm_lightning.data.feature_batches import CachedFeatureDataset, ScenarioMixingClusterSampler
from itkm_lightning.data.schema import SCENARIOS
from itkm_lightning.errors import ConfigError, DataFormatError
from itkm_lightning.handoffs import Handoff, Stage1Handoff, Stage2Handoff
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_loading import load_clip_model
from itkm_lightning.models.clip_text import CLIPTextEncoder, PromptTemplate, build_prompt_template
from itkm_lightning.models.losses import scenario_separation, supervised_contrastive
from itkm_lightning.models.tokenizer import clip_tokenizer
from itkm_lightning.lr_schedule import warmup_scheduler
from itkm_lightning.stages.frozen_features import cached_features

TEXT_TOWER_PREFIX = "text_encoder."


class Stage2(L.LightningModule):
    """Learn one prompt per Stage I cluster with a frozen CLIP; hand over the offline text features.

    Args:
        backbone: which CLIP to load (the pipeline links it to Stage I's: same source and input size). Only
            its weights source and ``image_size`` matter here: the frozen image encoder has no scenario
            embedding and one branch.
        num_prompt_words: M, learnable word embeddings per cluster.
        prompt_prefix: words before the learnable ones.
        prompt_suffix: words after them.
        prompt_init_std: std of the N(0, std) initialisation of the word embeddings.
        lr: Adam learning rate of the word embeddings.
        weight_decay: Adam weight decay.
        warmup_epochs: linear warm-up (from ``warmup_factor * lr``), then cosine decay to ``min_lr_factor * lr``;
            both per step. Epochs may be fractional.
        warmup_factor: learning-rate factor at step 0.
        min_lr_factor: learning-rate factor at the last step.
        i2t_weight: weight of the image-to-text contrastive loss.
        t2i_weight: weight of the text-to-image contrastive loss.
        separation: use the multi-scenario separation loss (False for the ``no_separation`` ablation).
        separation_weight: lambda_sep.
        separation_margin: m in ``max(0, cos - m)``.
        logit_scale: cosine-logit scale of the contrastive losses; ``None`` uses the frozen CLIP's exp(logit_scale).
        clusters_per_batch: P, Stage I clusters per batch (spread over the scenarios, each at least once).
        instances_per_cluster: K, cached image features per cluster in a batch.
        iters_per_epoch: batches per epoch; ``None`` = what ``epoch_covers`` needs.
        epoch_covers: ``images``: every kept image appears at least once per epoch (as CLIP-ReID's and
            CCLNet's prompt learning go through every image); ``clusters``: each cluster about once (one
            batch of K per cluster, most images unseen).
        text_batch_size: prompts encoded at once when computing every cluster's text feature.
        extract_device: device of the one-off image feature extraction (``auto``: this process's GPU if any).
        frozen_seed: seed of the random CLIP when ``backbone.pretrained`` is false (every process builds the same).
        seed: seed of the prompt initialisation and of the batch sampler; ``None``: ``itkm fit`` fills in
            ``seed_everything`` (0 when the module is built outside it).
    """

    stage_name = "stage2"
    evaluates_images = False
    receives = {"stage1": Stage1Handoff}

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        num_prompt_words: int = 4,
        prompt_prefix: str = "A photo of a",
        prompt_suffix: str = "person.",
        prompt_init_std: float = 0.02,
        lr: float = 3.5e-4,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 5.0,
        warmup_factor: float = 0.1,
        min_lr_factor: float = 0.01,
        i2t_weight: float = 1.0,
        t2i_weight: float = 1.0,
        separation: bool = True,
        separation_weight: float = 1.0,
        separation_margin: float = 0.3,
        logit_scale: float | None = None,
        clusters_per_batch: int = 16,
        instances_per_cluster: int = 4,
        iters_per_epoch: int | None = None,
        epoch_covers: Literal["images", "clusters"] = "images",
        text_batch_size: int = 512,
        extract_device: str = "auto",
        frozen_seed: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        checks = {
            "num_prompt_words": num_prompt_words >= 1, "prompt_init_std": prompt_init_std >= 0, "lr": lr > 0,
            "weight_decay": weight_decay >= 0, "warmup_epochs": warmup_epochs >= 0,
            "warmup_factor": 0 < warmup_factor <= 1, "min_lr_factor": 0 <= min_lr_factor <= 1,
            "i2t_weight": i2t_weight >= 0, "t2i_weight": t2i_weight >= 0, "separation_weight": separation_weight >= 0,
            "separation_margin": -1 <= separation_margin <= 1, "logit_scale": logit_scale is None or logit_scale > 0,
            "clusters_per_batch": clusters_per_batch >= 1, "instances_per_cluster": instances_per_cluster >= 1,
            "iters_per_epoch": iters_per_epoch is None or iters_per_epoch >= 1, "text_batch_size": text_batch_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid stage2 setting(s) {bad}; see `itkm fit --help` for each allowed range")
        if epoch_covers not in ("images", "clusters"):
            raise ConfigError(f"stage2.epoch_covers must be images or clusters; got {epoch_covers!r}")
        if extract_device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"stage2.extract_device must be auto, cpu or cuda; got {extract_device!r}")
        if isinstance(backbone, dict):  # from a checkpoint's hyper-parameters
            backbone = BackboneConfig.model_validate(backbone)
        # Plain types only, so that Lightning's weights_only checkpoint loading (resume) accepts them.
        self.save_hyperparameters(ignore=["backbone"])
        self.hparams["backbone"] = backbone.model_dump(mode="json")
        self.backbone_config = backbone
        self.seed = 0 if seed is None else int(seed)
        self.text_encoder = CLIPTextEncoder(self._frozen_clip())
        if backbone.kind == "timm" and self.text_encoder.projection_dim != backbone.projection_dim:
            raise ConfigError(
                f"the timm tower projects v to backbone.projection_dim={backbone.projection_dim} but the text tower "
                f"{backbone.name_or_path} has projection_dim {self.text_encoder.projection_dim}; set "
                f"model.backbone.projection_dim: {self.text_encoder.projection_dim}"
            )
        template = build_prompt_template(
            clip_tokenizer(backbone.name_or_path), num_prompt_words, prompt_prefix, prompt_suffix
        )
        self.register_buffer("prompt_ids", template.input_ids, persistent=False)
        self.register_buffer("prompt_slots", template.slot_positions, persistent=False)
        self.prompt_eot = template.eot_position
        width = self.text_encoder.token_embedding.embedding_dim
        # Sized by receive_handoff (C clusters); empty until then.
        self.prompts = nn.Parameter(torch.zeros(0, num_prompt_words, width))
        self.register_buffer("cluster_scenario", torch.zeros(0, dtype=torch.long))
        self.register_buffer("cluster_block", torch.zeros(0, dtype=torch.long))
        self.labels: torch.Tensor | None = None  # Stage I labels over datamodule.train_samples (CPU)
        self.handoff_paths: list[str] | None = None
        self._stats_features: torch.Tensor | None = None  # cached v of the kept images (CPU)
        self._stats_labels: torch.Tensor | None = None
        self.text_stats: dict[str, float] = {}

    # ---------------------------------------------------------------- frozen CLIP
    def _frozen_clip(self):
        cfg = self.backbone_config
        if cfg.pretrained:
            return load_clip_model(cfg).eval()
        # A random CLIP must be the same in every process and after a resume (features.pt, DDP ranks).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.frozen_seed)
            return load_clip_model(cfg).eval()

    @property
    def template(self) -> PromptTemplate:
        return PromptTemplate(self.prompt_ids, self.prompt_slots, self.prompt_eot)

    @property
    def num_clusters(self) -> int:
        return int(self.prompts.shape[0])

    def scale(self) -> torch.Tensor | float:
        fixed = self.hparams.logit_scale
        return self.text_encoder.logit_scale if fixed is None else fixed

    # ---------------------------------------------------------------- stage contract (stages/protocol.py)
    def receive_handoff(self, handoffs: Mapping[str, Handoff]) -> None:
        """Size the prompts and cluster tables from Stage I's final labels."""
        if "stage1" not in handoffs:
            raise ConfigError("stage2 needs the stage1 handoff; run `itkm fit --stage stage1` first")
        stage1 = handoffs["stage1"]
        cluster_block = stage1.cluster_block()
        num_clusters = len(cluster_block)
        block_names = stage1.block_names
        scenario_of_block = torch.tensor([SCENARIOS.index(name) for name, _ in block_names] + [-1])
        cluster_scenario = scenario_of_block[cluster_block]  # index -1 (no member) maps to the appended -1
        generator = torch.Generator().manual_seed(self.seed)
        words = torch.randn(num_clusters, *self.prompts.shape[1:], generator=generator) * self.hparams.prompt_init_std
        device = self.prompts.device
        self.prompts = nn.Parameter(words.to(device))
        self.cluster_block = cluster_block.to(device)
        self.cluster_scenario = cluster_scenario.to(device)
        self.labels = stage1.labels
        self.handoff_paths = list(stage1.paths) or None

    def fit_kwargs(self, datamodule, stage_dir: Path) -> dict:
        """Extract (or reuse) the frozen image features of the kept images; a loader of P x K feature batches."""
        if self.labels is None:
            raise RuntimeError("Stage2.receive_handoff must run before fit_kwargs")
        if not datamodule.train_samples:
            datamodule.setup("fit")
        samples = datamodule.train_samples
        paths = [s.path for s in samples]
        if self.handoff_paths is not None and paths != self.handoff_paths:
            raise ConfigError("the stage1 handoff was made for other training images than this data configuration; "
                              "use the data settings of the Stage I run or rerun stage1 in a new run_dir")
        if len(samples) != self.labels.numel():
            raise DataFormatError(f"stage1 handoff has {self.labels.numel()} labels for {len(samples)} training images")
        kept = torch.nonzero(self.labels >= 0, as_tuple=True)[0]
        features = cached_features([samples[i] for i in kept.tolist()], datamodule, Path(stage_dir),
                                   self.backbone_config, self._frozen_clip, self.hparams.extract_device)
        labels = self.labels[kept]
        self._stats_features, self._stats_labels = features, labels
        hp = self.hparams
        sampler = ScenarioMixingClusterSampler(
            labels.numpy(), self.cluster_scenario.cpu().numpy(), hp.clusters_per_batch, hp.instances_per_cluster,
            num_batches=hp.iters_per_epoch, seed=self.seed, cover=hp.epoch_covers,
        )
        loader = DataLoader(CachedFeatureDataset(features, labels), batch_size=sampler.batch_size, sampler=sampler,
                            num_workers=0)
        rank_zero_info(
            f"[stage2] {kept.numel()} of {len(samples)} training images in {int(labels.unique().numel())} clusters "
            f"({len(samples) - kept.numel()} Stage I outliers left out); {sampler.num_batches} batches of "
            f"{sampler.clusters_per_batch} x {sampler.instances_per_cluster} per epoch"
        )
        return {"train_dataloaders": loader}

    @torch.no_grad()
    def make_handoff(self, datamodule) -> Stage2Handoff:
        if self.labels is None:
            raise RuntimeError("Stage2.make_handoff called before receive_handoff")
        return Stage2Handoff(
            stage=self.stage_name,
            text_features=self.all_text_features().cpu(),
            cluster_scenario=self.cluster_scenario.detach().cpu().clone(),
            cluster_block=self.cluster_block.detach().cpu().clone(),
            prompts=self.prompts.detach().float().cpu().clone(),
            labels=self.labels.clone(),
            logit_scale=float(self.text_encoder.logit_scale),
        )

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        wraps_sampler = getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False)
        if stage == "fit" and trainer.world_size > 1 and wraps_sampler:
            # Lightning would re-shard the flat index stream and break the P x K batches; our sampler is rank-aware.
            raise ConfigError("Stage II batches need `trainer.use_distributed_sampler: false` with several devices")

    # ---------------------------------------------------------------- text features
    def text_features(self, clusters: torch.Tensor) -> torch.Tensor:
        """L2-normalised text features of the given cluster ids (differentiable w.r.t. their prompts)."""
        return F.normalize(self.text_encoder.encode_prompts(self.template, self.prompts[clusters]), dim=1)

    @torch.no_grad()
    def all_text_features(self) -> torch.Tensor:
        """(C, P) L2-normalised text feature of every cluster (the frozen tower is always in eval mode)."""
        ids = torch.arange(self.num_clusters, device=self.prompts.device)
        return torch.cat([self.text_features(chunk).float() for chunk in ids.split(self.hparams.text_batch_size)])

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        v = F.normalize(batch["v"].float(), dim=1)
        clusters, inverse = labels.unique(return_inverse=True)
        text = self.text_features(clusters)
        text_per_image = text[inverse]  # each image's own cluster text, as CLIP-ReID pairs them
        scale = self.scale()
        hp = self.hparams
        loss_i2t = supervised_contrastive(v, text_per_image, labels, labels, scale)
        loss_t2i = supervised_contrastive(text_per_image, v, labels, labels, scale)
        loss = hp.i2t_weight * loss_i2t + hp.t2i_weight * loss_t2i
        size = labels.numel()
        if hp.separation:
            loss_sep = scenario_separation(text, self.cluster_scenario[clusters], hp.separation_margin)
            loss = loss + hp.separation_weight * loss_sep
            self.log("train/loss_sep", loss_sep, batch_size=size)
        self.log("train/loss_i2t", loss_i2t, batch_size=size)
        self.log("train/loss_t2i", loss_t2i, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def on_train_epoch_end(self) -> None:
        self.text_stats = self.compute_text_stats()
        for name, value in self.text_stats.items():
            self.log(f"text/{name}", value)
        summary = ", ".join(f"{k} {v:.3f}" for k, v in self.text_stats.items())
        rank_zero_info(f"[stage2] epoch {self.current_epoch}: {summary}")

    def extra_results(self) -> dict[str, dict[str, float]]:
        """What results.json keeps of Stage II: the last epoch's text statistics (it scores no images)."""
        return {"stage2_text": dict(self.text_stats)} if self.text_stats else {}

    @torch.no_grad()
    def compute_text_stats(self) -> dict[str, float]:
        """Mean intra-/inter-scenario cosine of cluster texts; image->text top-1 agreement with Stage I labels."""
        text = self.all_text_features()
        present = self.cluster_scenario >= 0
        scen = self.cluster_scenario
        cosine = text @ text.T
        off_diagonal = ~torch.eye(len(text), dtype=torch.bool, device=text.device)
        valid = present[:, None] & present[None, :] & off_diagonal
        same = valid & (scen[:, None] == scen[None, :])
        other = valid & (scen[:, None] != scen[None, :])
        stats = {
            "intra_scenario_cos": float(cosine[same].mean()) if bool(same.any()) else float("nan"),
            "inter_scenario_cos": float(cosine[other].mean()) if bool(other.any()) else float("nan"),
        }
        if self._stats_features is not None and self._stats_features.numel():
            hits = 0
            for v, y in zip(self._stats_features.split(4096), self._stats_labels.split(4096)):
                v = F.normalize(v.to(text.device), dim=1)
                hits += int(((v @ text.T).argmax(dim=1).cpu() == y).sum())
            stats["image_to_text_top1"] = hits / self._stats_labels.numel()
        return stats

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        if self.num_clusters == 0:
            raise RuntimeError("Stage2 has no prompts to train: call receive_handoff before trainer.fit")
        hp = self.hparams
        optimizer = torch.optim.Adam([self.prompts], lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = round(hp.warmup_epochs * total / epochs)
        scheduler = warmup_scheduler(optimizer, warmup=warmup, start=hp.warmup_factor, floor=hp.min_lr_factor,
                                     total=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints
    checkpoint_omits = (TEXT_TOWER_PREFIX,)
    """State-dict prefixes its checkpoints do not hold (the frozen tower), for the resume compatibility check."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEXT_TOWER_PREFIX)]:
            del state[key]  # frozen CLIP weights: reloaded from `backbone`, not stored per checkpoint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.text_encoder.state_dict(prefix=TEXT_TOWER_PREFIX).items():
            state.setdefault(key, value)
        if "prompts" in state and state["prompts"].shape != self.prompts.shape:  # loaded without receive_handoff
            self.prompts = nn.Parameter(torch.zeros_like(state["prompts"], device=self.prompts.device))
            for name in ("cluster_scenario", "cluster_block"):
                setattr(self, name, torch.zeros_like(state[name], device=self.prompts.device))

