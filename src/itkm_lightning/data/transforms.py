"""Train and test image transforms (method.md section 4: resize, flip, pad+crop, erasing)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

# CLIP's normalisation constants: the backbone was pretrained with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_normalized_tensor() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def test_transform(size: tuple[int, int]) -> v2.Compose:
    """Resize to (H, W) with bicubic interpolation; low-res images are up-sampled here and only here."""
    return v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), *_to_normalized_tensor()])


def train_transform(
    size: tuple[int, int],
    *,
    flip: float = 0.5,
    padding: int = 10,
    erasing: float = 0.5,
    grayscale: float = 0.0,
) -> v2.Compose:
    """The augmentation of method.md section 4; ``grayscale`` is the visible-image channel augmentation."""
    steps = [v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if grayscale > 0:
        steps.append(v2.RandomGrayscale(p=grayscale))
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip))
    if padding > 0:
        steps += [v2.Pad(padding), v2.RandomCrop(size)]
    steps += _to_normalized_tensor()
    if erasing > 0:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)
