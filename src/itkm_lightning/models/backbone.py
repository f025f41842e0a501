"""The image tower that stages, ``embed``, ``export`` and ``evaluate`` use, chosen by ``model.backbone.kind``.

* ``clip``: :class:`~itkm_lightning.models.clip.CLIPImageEncoder` (CLIP's ViT, the method's backbone).
* ``timm``: :class:`~itkm_lightning.models.timm_tower.TimmImageEncoder` (a timm CNN, e.g. the ImageNet
  MobileNetV2 of the real-photo demo).

Both map ``(pixel_values, scenario, group)`` to ``ImageFeatures(f, v)`` and expose ``feature_dim``,
``projection_dim``, ``visual_projection``, ``new_parameters()`` and ``cfg``. The text side is always a
CLIP text tower (``models/clip.py``).
"""

from __future__ import annotations

from typing import Union

from itkm_lightning.models.clip import BackboneConfig, CLIPImageEncoder, clip_architecture

ImageEncoder = Union[CLIPImageEncoder, "TimmImageEncoder"]  # noqa: F821 - imported lazily below


def build_image_encoder(cfg: BackboneConfig, *, for_loading: bool = False, clip_model=None):
    """The image tower of ``cfg``, with its pretrained weights; ``for_loading``: the architecture only
    (random weights), to load a trained state dict into without needing the pretrained files."""
    if cfg.kind == "timm":
        from itkm_lightning.models.timm_tower import TimmImageEncoder

        return TimmImageEncoder(cfg, load_weights=not for_loading)
    if clip_model is None and for_loading:
        clip_model = clip_architecture(cfg)
    return CLIPImageEncoder(cfg, clip_model)
