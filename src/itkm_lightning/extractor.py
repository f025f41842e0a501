"""``FeatureExtractor``: a trained model as a Python function from images to retrieval features (as torchreid's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.errors import ConfigError


class FeatureExtractor:
    """L2-normalised retrieval features of images, from a run directory, a ``.ckpt`` of any stage or a ``handoff.pt``.

    >>> fx = FeatureExtractor("runs/demo", device="cuda")
    >>> feats = fx(["a.jpg", pil_image, tensor], scenario="vi", group=1)   # (3, D) float32 on the CPU

    Inputs may be image paths, PIL images or tensors (C x H x W, RGB, values in [0, 1]; a 4-d batch counts as its
    images); every input is resized and normalised as evaluation does. ``scenario`` (vi, cr, cc) and ``group``
    (0/1, see ``data/schema.py``) tag all inputs of one call; they select the scenario embedding the model was
    trained with. The model loads the same way as for ``itkm embed`` (weights only, never code).

    Args:
        model: run directory, Lightning checkpoint or stage handoff.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        feature: ``f`` (CLS token) or ``f+v`` (with the projection), as the run evaluated.
        flip: average each image with its mirror.
        batch_size: images per forward pass.
    """

    def __init__(self, model: str | Path, device: str = "auto", feature: str = "f", flip: bool = False,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        from itkm_lightning.tools.features import encoder_features, resolve_device
        from itkm_lightning.tools.model_source import load_image_encoder

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.encoder, self.backbone = load_image_encoder(model)
        self.encoder.to(self.device)
        self.image_size = tuple(self.backbone.image_size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self._encode = encoder_features(self.encoder, feature, flip)

    def embed_samples(self, samples: Sequence[Sample], view_transform: Callable | None = None,
                      progress: bool | None = None) -> torch.Tensor:
        """Features of tagged samples (each with its own scenario and group), in their order: (N, D) on CPU."""
        from itkm_lightning.tools.features import embed_samples, progress_enabled

        return embed_samples(self._encode, samples, self.image_size, device=self.device, batch_size=self.batch_size,
                             num_workers=self.num_workers, view_transform=view_transform,
                             progress=progress_enabled() if progress is None else progress)

    @torch.no_grad()
    def __call__(self, images: Any, scenario: str, group: int = 0) -> torch.Tensor:
        if scenario not in SCENARIOS:
            raise ConfigError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
        if group not in (0, 1):
            raise ConfigError(f"group must be 0 or 1, got {group!r}")
        items = _as_list(images)
        if not items:
            raise ConfigError("no images given")
        from itkm_lightning.data.dataset import load_rgb
        from itkm_lightning.data.transforms import test_transform

        transform = test_transform(self.image_size)
        scenario_id = SCENARIOS.index(scenario)
        chunks = []
        for start in range(0, len(items), self.batch_size):
            batch = torch.stack([transform(_as_image(x, load_rgb)) for x in items[start:start + self.batch_size]])
            n = len(batch)
            chunks.append(self._encode({
                "image": batch.to(self.device),
                "scenario": torch.full((n,), scenario_id, dtype=torch.long, device=self.device),
                "group": torch.full((n,), group, dtype=torch.long, device=self.device),
            }).float().cpu())
        return torch.cat(chunks)


def _as_list(images: Any) -> list:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if torch.is_tensor(images):
        return list(images) if images.dim() == 4 else [images]
    out = []
    for item in images:
        out.extend(list(item) if torch.is_tensor(item) and item.dim() == 4 else [item])
    return out


def _as_image(item: Any, load_rgb: Callable[[str], Image.Image]):
    if isinstance(item, (str, Path)):
        return load_rgb(str(Path(item).expanduser()))
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if torch.is_tensor(item):
        if item.dim() != 3 or item.shape[0] != 3:
            raise ConfigError(f"an image tensor must be 3 x H x W (RGB), got shape {tuple(item.shape)}")
        if item.is_floating_point() and (item.min() < 0 or item.max() > 1):
            raise ConfigError("an image tensor must hold values in [0, 1] (it is normalised here, as files are)")
        return item.float() if item.is_floating_point() else item.float() / 255.0
    raise ConfigError(f"cannot read an image from a {type(item).__name__}; pass paths, PIL images or tensors")
