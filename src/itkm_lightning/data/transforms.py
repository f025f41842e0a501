"""Train and test image transforms (docs/method.md section 4: resize, flip, pad+crop, erasing)."""

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


class RandomDownUp(torch.nn.Module):
    """With probability ``p``, shrink by a random factor in ``factors`` and resize back (bicubic, antialiased).

    Written here because torchvision has no "degrade the resolution" transform; the degradation is the
    one the MLR-* cross-resolution benchmarks use to make their low-resolution images (docs/protocols.md).
    """

    def __init__(self, p: float, factors: tuple[float, float] = (2.0, 4.0)) -> None:
        super().__init__()
        self.p = p
        self.factors = factors

    def forward(self, image):
        if torch.rand(()) >= self.p:
            return image
        height, width = v2.functional.get_size(image)
        factor = float(torch.empty(()).uniform_(*self.factors))
        small = (max(1, round(height / factor)), max(1, round(width / factor)))
        image = v2.functional.resize(image, list(small), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return v2.functional.resize(image, [height, width], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def train_transform(
    size: tuple[int, int],
    *,
    flip: float = 0.5,
    padding: int = 10,
    erasing: float = 0.5,
    grayscale: float = 0.0,
    downsample: float = 0.0,
) -> v2.Compose:
    """The augmentation of docs/method.md section 4; ``grayscale`` is the visible-image channel augmentation and
    ``downsample`` the high-resolution images' resolution augmentation (docs/design.md)."""
    steps = [v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if grayscale > 0:
        steps.append(v2.RandomGrayscale(p=grayscale))
    if downsample > 0:
        steps.append(RandomDownUp(p=downsample))
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip))
    if padding > 0:
        steps += [v2.Pad(padding), v2.RandomCrop(size)]
    steps += _to_normalized_tensor()
    if erasing > 0:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)
