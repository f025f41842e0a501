"""The synthetic benchmark's other sensors: near-infrared intensity and low resolution.

All randomness flows through the ``numpy.random.Generator`` passed in, in a fixed order.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

def make_infrared_lut(rng: np.random.Generator, grid: int = 6) -> np.ndarray:
    """A random ``grid``^3 colour-to-intensity table in [0, 1], indexed [r, g, b]."""
    return rng.uniform(0.0, 1.0, size=(grid, grid, grid)).astype(np.float32)


def _lut_filter(lut: np.ndarray) -> ImageFilter.Color3DLUT:
    """PIL's trilinear 3D lookup (C code) with the intensity copied to three channels."""
    grid = lut.shape[0]
    # PIL's flat table varies the red index fastest, then green, then blue.
    flat = np.repeat(lut.transpose(2, 1, 0).reshape(-1), 3)
    return ImageFilter.Color3DLUT(grid, flat.tolist(), channels=3)


INFRARED_NOISE_STD = 4.0
"""Extra per-pixel noise of an infrared sensor (0-255 units), on top of the camera's own noise."""


def infrared_reflectance(
    image: Image.Image, lut: np.ndarray, luminance_weight: float = 0.4, detail_gain: float = 0.6
) -> Image.Image:
    """Map an *unlit* RGB rendering to near-infrared reflectance (one intensity copied to 3 channels).

    reflectance = w * luminance + (1 - w) * lut(colour) + detail_gain * local luminance contrast.
    The table makes the order of colours only partly consistent with luminance; the local-contrast
    term keeps edges, textures and pattern structure visible, as real NIR does. No noise and no
    lighting: both come afterwards (``render_person(..., infrared_lut=...)``), as in a real camera.
    """
    rgb = image.convert("RGB")
    gray = rgb.convert("L")
    luma = np.asarray(gray, dtype=np.float32)
    mapped = np.asarray(rgb.filter(_lut_filter(lut)), dtype=np.float32)[..., 0]
    radius = max(1.0, rgb.height / 64)
    local_mean = np.asarray(gray.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    intensity = luminance_weight * luma + (1 - luminance_weight) * mapped + detail_gain * (luma - local_mean)
    channel = np.clip(intensity + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(channel[..., None], 3, axis=2))


def add_gray_noise(image: Image.Image, rng: np.random.Generator, noise_std: float) -> Image.Image:
    channel = np.asarray(image, dtype=np.float32)[..., 0]
    channel = channel + rng.normal(0.0, noise_std, size=channel.shape).astype(np.float32)
    channel = np.clip(channel + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(channel[..., None], 3, axis=2))


def to_infrared(
    image: Image.Image,
    lut: np.ndarray,
    rng: np.random.Generator,
    luminance_weight: float = 0.4,
    detail_gain: float = 0.6,
    noise_std: float = INFRARED_NOISE_STD,
) -> Image.Image:
    """The infrared mapping applied to an already *lit* picture (generator version 1, kept for
    comparison): the picture's brightness and the camera's tint then pass through the colour table,
    so a garment's infrared intensity changes from picture to picture. The generator now renders
    infrared with ``render_person(..., infrared_lut=...)`` instead.
    """
    reflect = infrared_reflectance(image, lut, luminance_weight, detail_gain)
    return add_gray_noise(reflect, rng, noise_std) if noise_std > 0 else reflect


def to_low_resolution(
    image: Image.Image, rng: np.random.Generator, factor_range: tuple[float, float] = (2.0, 4.0)
) -> Image.Image:
    """Bicubic downsample by a random factor in ``factor_range``; the small image is returned."""
    factor = float(rng.uniform(*factor_range))
    width = max(1, round(image.width / factor))
    height = max(1, round(image.height / factor))
    return image.resize((width, height), Image.BICUBIC)
