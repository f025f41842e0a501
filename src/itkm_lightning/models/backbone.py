"""The one place that builds the image tower of ``model.backbone`` (stages, ``embed``, ``export``, ``evaluate``).

* ``clip``: :class:`~itkm_lightning.models.clip_image.CLIPImageEncoder` (CLIP's ViT, the method's backbone).
* ``timm``: :class:`~itkm_lightning.models.timm_tower.TimmImageEncoder` (a timm CNN, e.g. the ImageNet
  MobileNetV2 of the real-photo demo).

Both are :class:`~itkm_lightning.models.image_tower.ImageTower`\\ s. The text side is always a CLIP text
tower (``models/clip_text.py``).
"""

from __future__ import annotations

from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder
from itkm_lightning.models.clip_loading import clip_architecture
from itkm_lightning.models.image_tower import ImageTower


def build_image_encoder(cfg: BackboneConfig, *, for_loading: bool = False, clip_model=None) -> ImageTower:
    """The image tower of ``cfg``, with its pretrained weights; ``for_loading``: the architecture only
    (random weights), to load a trained state dict into without needing the pretrained files."""
    if cfg.kind == "timm":
        from itkm_lightning.models.timm_tower import TimmImageEncoder  # timm is imported only when used

        return TimmImageEncoder(cfg, load_weights=not for_loading)
    if clip_model is None and for_loading:
        clip_model = clip_architecture(cfg)
    return CLIPImageEncoder(cfg, clip_model)
