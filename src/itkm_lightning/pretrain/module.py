"""Contrastive image-text pretraining of a tiny ``CLIPModel`` (both towers, from random weights).

The image side runs through the project's own :class:`CLIPImageEncoder` on (H, W) crops, the very
module the ReID stages use, so the pretrained features are the features Stage I starts from. That
encoder keeps its position table on the rectangular patch grid; :meth:`CLIPPretraining.to_clip_model`
writes back a square table that ``CLIPImageEncoder`` resizes to exactly the trained one, so the saved
``CLIPModel`` loads to the same numbers (docs/pretraining.md, "Position table").
"""

from __future__ import annotations

import copy
import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from itkm_lightning.errors import ConfigError
from itkm_lightning.lr_schedule import warmup_scheduler
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder
from itkm_lightning.models.clip_loading import random_clip_model
from itkm_lightning.pretrain.position_table import fit_square_position_table

POSITION_TABLE_TOLERANCE = 1e-4
"""Largest difference allowed between the trained and the saved-then-resized position table."""

DEMO_BACKBONE = BackboneConfig(
    name_or_path="tiny-clip",
    pretrained=False,
    image_size=(128, 64),
    projection_dim=128,
    vision={"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
            "patch_size": 16, "image_size": 128},
    text={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
)


def clip_contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy over a batch of L2-normalised image and text embeddings (pair i matches i).

    Coarse captions repeat inside a batch. That needs no special case: two pictures with the same
    caption text give two identical text columns, and the two cross-entropy terms then add up to the
    same loss and gradient as a shared soft target would.
    """
    logits = logit_scale * image_emb @ text_emb.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def trim_padding(tokens: Tensor, eot_token_id: int) -> Tensor:
    """Drop the padding columns after the longest caption's first <|endoftext|> (causal attention ignores them)."""
    first_eot = (tokens == eot_token_id).int().argmax(dim=1)
    return tokens[:, : int(first_eot.max()) + 1]


def square_side(backbone: BackboneConfig) -> int:
    """Side of the square patch grid of ``backbone.vision`` (HF's ``image_size // patch_size``)."""
    image_size = int(backbone.vision.get("image_size", 224))
    patch_size = int(backbone.vision.get("patch_size", 32))
    return image_size // patch_size


class CLIPPretraining(L.LightningModule):
    """Trains a randomly initialised tiny CLIP on image-caption pairs with the CLIP loss.

    Args:
        backbone: the architecture (``pretrained: false`` with ``vision``/``text`` overrides) and input
            size. ``vision.image_size / vision.patch_size`` (the square grid of the saved model) must be
            at least the larger side of the rectangular patch grid.
        lr: peak AdamW learning rate (linear warm-up, then cosine decay to zero at ``trainer.max_steps``).
        weight_decay: AdamW weight decay of matrices (not of biases, norms, embeddings vectors, temperature).
        warmup_steps: linear warm-up length.
        max_logit_scale: CLIP's cap on the learned temperature exp(logit_scale).
        betas: AdamW betas; CLIP's beta2 = 0.98 keeps training from scratch stable.
        eps: AdamW epsilon (CLIP: 1e-6).
    """

    def __init__(
        self,
        backbone: BackboneConfig = DEMO_BACKBONE,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        max_logit_scale: float = 100.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if backbone.pretrained:
            raise ConfigError("model.backbone.pretrained must be false: pretraining starts from random weights.")
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or max_logit_scale <= 1:
            raise ConfigError(
                f"need lr > 0, weight_decay >= 0, warmup_steps >= 0, max_logit_scale > 1; got {lr}, "
                f"{weight_decay}, {warmup_steps}, {max_logit_scale}"
            )
        self.save_hyperparameters()
        self.backbone_config = backbone
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.betas = tuple(betas)
        self.eps = eps
        self.max_log_logit_scale = math.log(max_logit_scale)
        self.clip = random_clip_model(backbone)
        encoder_config = backbone.model_copy(update={"scenario_embedding": "none", "dual_branch": False})
        self.image_encoder = CLIPImageEncoder(encoder_config, self.clip)
        grid, side = self.image_encoder.grid_size, square_side(backbone)
        if side < max(grid):
            raise ConfigError(
                f"model.backbone.vision.image_size gives a {side}x{side} patch grid, smaller than the input's "
                f"{grid[0]}x{grid[1]}; set vision.image_size to {max(backbone.image_size)}."
            )
        # HF's square table is rewritten from the trained rectangular one when saving; it is not trained.
        self.clip.vision_model.embeddings.position_embedding.weight.requires_grad_(False)
        self.eot_token_id = int(self.clip.config.text_config.eos_token_id)
        self.loss_history: list[float] = []  # every step's loss, for the meta file's first/final loss

    # ---------------------------------------------------------------- features
    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Projected image embedding ``v`` (not normalised)."""
        zeros = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
        return self.image_encoder(pixel_values, zeros, zeros).v

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Projected text embedding (not normalised): the first <|endoftext|> state, as CLIPTextEncoder reads it."""
        pooled = self.clip.text_model(input_ids=input_ids).pooler_output
        return self.clip.text_projection(pooled)

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.clamp(max=self.max_log_logit_scale).exp()

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        tokens = trim_padding(batch["input_ids"], self.eot_token_id)
        image_emb = F.normalize(self.encode_image(batch["image"]), dim=1)
        text_emb = F.normalize(self.encode_text(tokens), dim=1)
        scale = self.logit_scale()
        loss = clip_contrastive_loss(image_emb, text_emb, scale)
        batch_size = tokens.shape[0]
        self.loss_history.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", scale.detach(), batch_size=batch_size)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append(param)
        # The fused kernel makes the step ~7x cheaper on CPU (the 49,408-token embedding dominates it).
        fused = all(param.device.type in ("cpu", "cuda") for param in decay + no_decay)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=self.betas, eps=self.eps, fused=fused,
        )
        # Per step: warm-up to lr (the first step already at lr / warmup_steps), then cosine to zero at
        # trainer.max_steps; constant when max_steps is unset or within the warm-up.
        total = self.trainer.max_steps if self._trainer is not None else -1  # -1: unset
        scheduler = warmup_scheduler(optimizer, warmup=self.warmup_steps, start=0.0, counts_current=True,
                                     decay="cosine" if total > self.warmup_steps else "constant", total=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- export
    def to_clip_model(self):
        """A standalone ``CLIPModel`` whose square position table resizes back to the trained one."""
        model = copy.deepcopy(self.clip).cpu().eval()
        trained = self.image_encoder.position_embedding.detach().cpu()
        grid = self.image_encoder.grid_size
        square = fit_square_position_table(trained, grid, square_side(self.backbone_config))
        table = model.vision_model.embeddings.position_embedding.weight
        with torch.no_grad():
            table.copy_(square)
        table.requires_grad_(True)
        resized = CLIPImageEncoder(self.image_encoder.cfg, model).position_embedding.detach()
        error = float((resized - trained).abs().max())
        if error > POSITION_TABLE_TOLERANCE:
            raise RuntimeError(f"the saved position table resizes back with error {error:.2e}; please report this.")
        return model
