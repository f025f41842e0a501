"""Stage III: unsupervised heterogeneous learning (docs/method.md section 6).

Continues the Stage I image encoder with, every epoch, re-clustered labels (as Stage I), the dynamic
text update (DRU), cluster- and instance-level heterogeneous matching (CHM, IHM) and the text-guided loss:
``L = L_homo + l_chm*L_chm + l_ihm*L_ihm + l_txt*L_txt``.

Per-epoch state (all rebuilt after each re-clustering by ``refresh_heterogeneous``):
* ``instance_text`` u [N, P]: the DRU's instance-level text (checkpointed: it carries history);
* ``prototypes`` t [C, P]: cluster-level text of the current clusters;
* ``chm_partner`` [C]: each cluster's matched cluster in the other group of its scenario, -1 = none;
* ``ihm_positives`` [N, k]: each instance's IHM set (instance indices, -1 padded);
* ``instance_memory`` [N, D]: *Decision*: refreshed with the freshly extracted features at every
  re-clustering and momentum-updated per step for the batch's instances (``instance_momentum``), so it is
  never older than one epoch and follows the encoder within the epoch. Not checkpointed (its size is
  N x D); a resumed run re-extracts it.

DDP: DRU, CHM and IHM are computed on rank 0 from the gathered features and broadcast labels, and the
results broadcast (as the pseudo-labels are), so every rank trains on identical targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from itkm_lightning.config import CHMConfig, ClusteringConfig, OptimConfig
from itkm_lightning.distributed import all_gather_variable, broadcast_tensor
from itkm_lightning.errors import ConfigError, DataFormatError
from itkm_lightning.matching import group_centred_similarity, instance_positives, match_clusters, partner_table
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.handoffs import Handoff, Stage1Handoff, Stage2Handoff, Stage3Handoff
from itkm_lightning.models.losses import chm_loss, ihm_loss, text_contrastive_loss
from itkm_lightning.stages.clustering_stage import ClusteringStage
from itkm_lightning.text_update import cluster_text, init_instance_text, update_instance_text


def _to_global(local_partner: np.ndarray, cluster_ids: torch.Tensor) -> torch.Tensor:
    """Partner positions within the other block (-1 = none) -> global cluster ids (-1 = none)."""
    local = torch.from_numpy(local_partner)
    out = torch.full_like(local, -1)
    out[local >= 0] = cluster_ids[local[local >= 0]]
    return out


class Stage3(ClusteringStage):
    """Heterogeneous learning on top of Stage I's encoder and Stage II's text features.

    Args:
        backbone: the CLIP image encoder (linked from ``model.backbone``: same architecture as Stage I).
        clustering: pseudo-label settings used at fit start and after every epoch.
        optim: optimiser and schedule.
        init_from: ``stage1`` continues the Stage I encoder; ``pretrained`` starts from the backbone's
            own weights (the Stage I labels and Stage II text are used either way).
        temperature: tau of L_homo, L_chm and L_ihm.
        memory_momentum: mu of the cluster memory update.
        instance_momentum: mu of the instance memory update (``m_i <- mu*m_i + (1-mu)*f_i``).
        dru: update the instance text after each re-clustering (off: u stays at its Stage II initialisation).
        dru_alpha: alpha in ``u_i <- normalize(alpha*u_i + (1-alpha)*t_c)``.
        chm: use L_chm (cluster-level matching).
        chm_weight: lambda_chm.
        chm_matching: how CHM scores cluster pairs and which assigned pairs it keeps (similarity,
            reliability criterion, threshold, quantile, Hungarian rounds, text similarity).
        ihm: use L_ihm (instance-level matching).
        ihm_weight: lambda_ihm.
        ihm_k: neighbours searched in image and in text space.
        ihm_text: IHM keeps the image neighbours that are also text neighbours (off: the image top-k alone, so
            IHM reads nothing of Stage II; with ``txt`` off too, Stage III uses no text: the ``no_text`` ablation).
        txt: use L_txt (trains ``visual_projection`` too; off: the projection is frozen).
        txt_weight: lambda_txt.
        txt_label_smoothing: eps of the label-smoothed L_txt (CLIP-ReID's and CCLNet's 0.1; 0 = plain
            cross-entropy).
        flip_test: average features of an image and its mirror at test time.
        retrieval_feature: ``f`` or ``f+v``.
    """

    stage_name = "stage3"
    receives = {"stage1": Stage1Handoff, "stage2": Stage2Handoff}

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        clustering: ClusteringConfig = ClusteringConfig(),
        optim: OptimConfig = OptimConfig(),
        init_from: Literal["stage1", "pretrained"] = "stage1",
        temperature: float = 0.05,
        memory_momentum: float = 0.1,
        instance_momentum: float = 0.2,
        dru: bool = True,
        dru_alpha: float = 0.5,
        chm: bool = True,
        chm_weight: float = 1.0,
        chm_matching: CHMConfig = CHMConfig(),
        ihm: bool = True,
        ihm_weight: float = 1.0,
        ihm_k: int = 10,
        ihm_text: bool = True,
        txt: bool = True,
        txt_weight: float = 1.0,
        txt_label_smoothing: float = 0.1,
        flip_test: bool = False,
        retrieval_feature: str = "f",
    ) -> None:
        super().__init__(backbone, clustering, optim, temperature, memory_momentum, flip_test, retrieval_feature,
                         section="stage3")
        checks = [
            (0.0 <= instance_momentum < 1.0, f"stage3.instance_momentum must be in [0, 1); got {instance_momentum}"),
            (0.0 <= dru_alpha <= 1.0, f"stage3.dru_alpha must be in [0, 1]; got {dru_alpha}"),
            (ihm_k >= 1, f"stage3.ihm_k must be >= 1; got {ihm_k}"),
            (min(chm_weight, ihm_weight, txt_weight) >= 0, "stage3 loss weights must be >= 0"),
            (0.0 <= txt_label_smoothing < 1.0, f"stage3.txt_label_smoothing must be in [0, 1); got {txt_label_smoothing}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.save_hyperparameters()
        self.init_from = init_from
        self.instance_momentum = instance_momentum
        self.dru, self.dru_alpha = dru, dru_alpha
        self.chm, self.chm_weight, self.chm_matching = chm, chm_weight, chm_matching
        self.ihm, self.ihm_weight, self.ihm_k, self.ihm_text = ihm, ihm_weight, ihm_k, ihm_text
        self.txt, self.txt_weight, self.txt_label_smoothing = txt, txt_weight, txt_label_smoothing
        if not txt:
            self.encoder.visual_projection.requires_grad_(False)  # nothing reads v (and DDP sees no unused param)
        proj = self.encoder.projection_dim
        self.register_buffer("instance_text", torch.zeros(0, proj))
        self.register_buffer("prototypes", torch.zeros(0, proj))
        self.register_buffer("chm_partner", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ihm_positives", torch.zeros(0, ihm_k, dtype=torch.long))
        self.register_buffer("train_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("instance_memory", torch.zeros(0, self.encoder.feature_dim), persistent=False)
        self.register_buffer("instance_blocks", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("other_block", torch.zeros(0, dtype=torch.long), persistent=False)
        self.block_names: list[tuple[str, int]] = []
        self.chm_pairs: dict[str, np.ndarray] = {}  # rank 0: global cluster-id pairs per scenario (monitoring)
        self.final_labels: torch.Tensor | None = None
        self._handoff: dict | None = None

    # ---------------------------------------------------------------- stage contract
    def receive_handoff(self, handoffs: Mapping[str, Handoff]) -> None:
        missing = [s for s in self.receives if s not in handoffs]
        if missing:
            raise ConfigError(f"Stage III needs the finished Stage I and Stage II handoffs; missing {missing}: "
                              "run those stages first (itkm fit runs them in order)")
        s1, s2 = handoffs["stage1"], handoffs["stage2"]
        if not torch.equal(s2.labels, s1.labels):
            raise DataFormatError("the stage2 handoff was trained on other Stage I labels than stage1/handoff.pt holds; "
                                  "delete <run_dir>/stage2/handoff.pt and re-run Stage II")
        text = s2.text_features
        if text.ndim != 2 or text.shape[1] != self.encoder.projection_dim:
            raise ConfigError(f"Stage II text features have shape {tuple(text.shape)} but the image encoder projects to "
                              f"{self.encoder.projection_dim} dims; Stage II must use a CLIP of the same projection size")
        if self.init_from == "stage1":
            try:
                self.encoder.load_state_dict(s1.encoder)
            except RuntimeError as error:
                raise ConfigError(f"the Stage I encoder does not fit stage3.backbone ({str(error).splitlines()[0]}); "
                                  "Stage III must use the backbone Stage I was trained with") from None
        self._handoff = {"labels": s1.labels, "text_features": F.normalize(text, dim=1),
                         "paths": s1.paths, "logit_scale": s2.logit_scale}

    def make_handoff(self, datamodule) -> Stage3Handoff:
        """Encoder weights, the labels of one re-clustering with the final encoder, and the instance text u."""
        labels = self.final_labels if self.final_labels is not None else self.train_labels
        return Stage3Handoff(
            stage=self.stage_name,
            encoder={k: v.detach().float().cpu() for k, v in self.encoder.state_dict().items()},
            labels=labels.detach().cpu().clone(),
            text=self.instance_text.detach().float().cpu().clone(),
        )

    def labeler(self) -> L.Callback:
        from itkm_lightning.callbacks.heterogeneous import HeterogeneousMatchingCallback

        return HeterogeneousMatchingCallback(self.clustering, config_key="stage3.clustering")

    # ---------------------------------------------------------------- per-epoch state
    def bind_training_set(self, datamodule) -> None:
        """Block tags of the training set; checks it is the one Stage I labelled."""
        if self._handoff is None:
            raise ValueError("Stage III has no handoffs: call receive_handoff({'stage1': ..., 'stage2': ...}) "
                             "before trainer.fit (itkm fit does this)")
        paths = [s.path for s in datamodule.train_samples]
        if paths != self._handoff["paths"]:
            raise ConfigError("the training set differs from the one Stage I labelled (paths or order changed); "
                              "use the same data config for every stage, or start a new --run_dir")
        self.block_names = list(datamodule.blocks)
        index = {b: i for i, b in enumerate(self.block_names)}
        other = [index.get((s, 1 - g), -1) if g in (0, 1) else -1 for s, g in self.block_names]
        self.other_block = torch.tensor(other, dtype=torch.long, device=self.device)
        self.instance_blocks = torch.from_numpy(datamodule.block_of_index).to(self.device)

    def refresh_instance_memory(self, features: torch.Tensor) -> None:
        self.instance_memory = F.normalize(features.to(self.device).float(), dim=1)

    @torch.no_grad()
    def refresh_heterogeneous(self, features: torch.Tensor, labels: np.ndarray, is_global_zero: bool) -> None:
        """DRU, CHM and IHM for new labels (call after the cluster memory was rebuilt), on every rank."""
        self.refresh_instance_memory(features)
        state = {}
        if is_global_zero:
            state = self._heterogeneous_state(self.instance_memory, torch.from_numpy(labels).to(self.device))
        for name in ("instance_text", "prototypes", "chm_partner", "ihm_positives", "train_labels"):
            setattr(self, name, broadcast_tensor(state.get(name)).to(self.device))

    def _heterogeneous_state(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self._handoff
        u = self.instance_text
        if u.shape[0] != len(labels):  # first re-clustering of this stage: u from Stage II's T_off
            u = init_instance_text(h["text_features"].to(self.device), h["labels"].to(self.device),
                                   features, self.instance_blocks)
        prototypes = cluster_text(u, labels, self.memory.num_clusters)
        if self.dru:
            u = update_instance_text(u, labels, prototypes, self.dru_alpha)
        partner = self._match_clusters(prototypes)
        if self.ihm:
            positives = instance_positives(features, u if self.ihm_text else None, self.instance_blocks,
                                           self.other_block, self.ihm_k)
        else:
            positives = torch.full((len(labels), self.ihm_k), -1, dtype=torch.long, device=self.device)
        return {"instance_text": u.cpu(), "prototypes": prototypes.cpu(), "chm_partner": partner.cpu(),
                "ihm_positives": positives.cpu(), "train_labels": labels.cpu()}

    def _match_clusters(self, prototypes: torch.Tensor) -> torch.Tensor:
        """CHM inside every scenario; fills ``chm_pairs`` and returns the partner of every cluster."""
        centroids, cluster_block = self.memory.features, self.memory.blocks
        partner = torch.full((self.memory.num_clusters,), -1, dtype=torch.long)
        self.chm_pairs = {}
        for b0, (scenario, group) in enumerate(self.block_names):
            b1 = int(self.other_block[b0])
            if group != 0 or b1 < 0:
                continue
            c0 = torch.nonzero(cluster_block == b0).flatten()
            c1 = torch.nonzero(cluster_block == b1).flatten()
            cfg = self.chm_matching
            if cfg.similarity == "centred":
                sim = group_centred_similarity(centroids[c0], centroids[c1])
            else:
                sim = centroids[c0] @ centroids[c1].t()
            if cfg.text:
                sim = 0.5 * (sim + prototypes[c0] @ prototypes[c1].t())
            sim = sim.double().cpu().numpy()
            pairs = match_clusters(sim, cfg.threshold, cfg.rounds, cfg.reliability, cfg.quantile)
            of0, of1 = partner_table(pairs, sim)
            c0, c1 = c0.cpu(), c1.cpu()
            partner[c0], partner[c1] = _to_global(of0, c1), _to_global(of1, c0)
            self.chm_pairs[scenario] = np.stack([c0.numpy()[pairs[:, 0]], c1.numpy()[pairs[:, 1]]], axis=1)
        return partner

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels, index = batch["pseudo_label"], batch["index"]
        out = self.encoder(batch["image"], batch["scenario"], batch["group"])
        f = F.normalize(out.f, dim=1)
        blocks = self.memory.blocks[labels]
        other = self.other_block[blocks]
        centroids = self.memory.features.clone()  # the in-place updates below must not touch what backward needs
        losses = {"homo": self.homogeneous_loss(f, blocks, labels)}
        loss = losses["homo"]
        if self.chm and self.chm_weight > 0:
            losses["chm"] = chm_loss(f, centroids, self.memory.blocks, other, self.chm_partner[labels], self.temperature)
            loss = loss + self.chm_weight * losses["chm"]
        if self.ihm and self.ihm_weight > 0:
            losses["ihm"] = ihm_loss(f, self.instance_memory.clone(), self.instance_blocks, other,
                                     self.ihm_positives[index], self.temperature)
            loss = loss + self.ihm_weight * losses["ihm"]
        if self.txt and self.txt_weight > 0:
            losses["txt"] = text_contrastive_loss(out.v, self.prototypes, self.memory.blocks, blocks, labels,
                                                  self._handoff["logit_scale"], self.txt_label_smoothing)
            loss = loss + self.txt_weight * losses["txt"]
        # Every rank applies the same memory updates from all ranks' samples, so memories stay identical.
        all_f, all_labels, all_index = (all_gather_variable(t) for t in (f.detach(), labels, index))
        self.memory.update(all_f, all_labels)
        self._update_instance_memory(all_f, all_index)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, prog_bar=name == "homo", batch_size=labels.numel())
        self.log("train/loss", loss, batch_size=labels.numel())
        return loss

    @torch.no_grad()
    def _update_instance_memory(self, features: torch.Tensor, index: torch.Tensor) -> None:
        mu = self.instance_momentum
        self.instance_memory[index] = F.normalize(mu * self.instance_memory[index] + (1 - mu) * features, dim=1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for name in ("instance_text", "prototypes", "chm_partner", "ihm_positives", "train_labels"):
            if name in state:
                setattr(self, name, torch.zeros_like(state[name], device=getattr(self, name).device))
