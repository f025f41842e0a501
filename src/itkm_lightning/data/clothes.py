"""The clothing-agnostic view of a person image (docs/method.md section 1, group 1 of ``cc``).

With a clothes mask (white = clothes) the clothes pixels become one neutral grey: no colour, no
pattern, the silhouette kept. Without one, a parsing-free fallback makes the torso-and-legs band
grey and strongly blurred. Masks can come from the synthetic generator or from LIP/SCHP
human-parsing label maps via :meth:`ClothesMasker.from_parsing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from itkm_lightning.errors import ConfigError, DataFormatError

LIP_CLOTHES_LABELS: tuple[int, ...] = (5, 6, 7, 9, 10, 12)
"""LIP / SCHP-LIP labels of garments: upper-clothes 5, dress 6, coat 7, pants 9, jumpsuits 10, skirt 12."""

MaskerMode = Literal["auto", "mask", "fallback"]
MaskFormat = Literal["binary", "parsing"]


class ClothesMasker:
    """Callable ``masker(image, mask=None) -> image`` giving the clothing-agnostic view.

    Args:
        mode: ``"auto"`` uses the mask when one is given and the fallback otherwise; ``"mask"``
            requires a mask; ``"fallback"`` ignores any mask.
        fill: grey level (0-255) painted over clothes pixels.
        band: (top, bottom) rows of the fallback band, as fractions of the image height.
        blur: Gaussian blur radius of the fallback, as a fraction of the image width.
        dilate: grow the mask by this many pixels first (covers colour bleeding at blurred edges).
        mask_format: ``"binary"`` masks are white where clothes are; ``"parsing"`` masks are
            human-parsing label maps (one class index per pixel, e.g. LIP/SCHP PNGs under a dataset's
            ``masks/`` folder) turned into a binary mask with ``clothes_labels``.
        clothes_labels: parsing classes that count as clothes (``mask_format="parsing"`` only).
    """

    def __init__(
        self,
        mode: MaskerMode = "auto",
        fill: int = 128,
        band: tuple[float, float] = (0.2, 0.95),
        blur: float = 0.15,
        dilate: int = 0,
        mask_format: MaskFormat = "binary",
        clothes_labels: tuple[int, ...] = LIP_CLOTHES_LABELS,
    ) -> None:
        if mode not in ("auto", "mask", "fallback"):
            raise ConfigError(f"ClothesMasker mode must be 'auto', 'mask' or 'fallback', got {mode!r}.")
        if not 0 <= fill <= 255:
            raise ConfigError(f"fill must be a grey level in 0..255, got {fill}.")
        if not 0.0 <= band[0] < band[1] <= 1.0:
            raise ConfigError(f"band must be (top, bottom) fractions with 0 <= top < bottom <= 1, got {band}.")
        if blur < 0 or dilate < 0:
            raise ConfigError(f"blur and dilate must be non-negative, got blur={blur}, dilate={dilate}.")
        if mask_format not in ("binary", "parsing"):
            raise ConfigError(f"mask_format must be 'binary' or 'parsing', got {mask_format!r}.")
        self.mode = mode
        self.mask_format = mask_format
        self.clothes_labels = tuple(clothes_labels)
        self.fill = fill
        self.band = band
        self.blur = blur
        self.dilate = dilate

    def __repr__(self) -> str:
        return (
            f"ClothesMasker(mode={self.mode!r}, fill={self.fill}, band={self.band}, "
            f"blur={self.blur}, dilate={self.dilate}, mask_format={self.mask_format!r})"
        )

    def __call__(self, image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
        if self.mode == "mask" and mask is None:
            raise DataFormatError(
                "ClothesMasker(mode='mask') got an image without a clothes mask; "
                "provide masks for every image or use mode='auto' to fall back."
            )
        if self.mode == "fallback" or mask is None:
            return self.fallback(image)
        if self.mask_format == "parsing":
            mask = self.from_parsing(mask, self.clothes_labels)
        return self.apply_mask(image, mask)

    def load_mask(self, path: str | Path) -> Image.Image:
        """Read a mask file as an 'L' image in this masker's format.

        Label maps keep their class indices: a palette ('P') PNG is read as its indices, not converted
        through the palette (which ``Image.convert("L")`` would do and so destroy the labels).
        """
        with Image.open(path) as mask:
            if self.mask_format == "parsing" and mask.mode in ("P", "L", "I", "I;16"):
                return Image.fromarray(np.asarray(mask).astype(np.uint8))
            return mask.convert("L")

    def apply_mask(self, image: Image.Image, mask: Image.Image) -> Image.Image:
        """Paint the clothes pixels (mask > 127) with the constant grey; keep every other pixel."""
        rgb = image.convert("RGB")
        binary = mask.convert("L")
        if binary.size != rgb.size:
            # Nearest keeps the mask binary when a loader has resized the image.
            binary = binary.resize(rgb.size, Image.NEAREST)
        binary = binary.point([0] * 128 + [255] * 128)
        if self.dilate:
            binary = binary.filter(ImageFilter.MaxFilter(2 * self.dilate + 1))
        out = rgb.copy()
        out.paste((self.fill, self.fill, self.fill), (0, 0), binary)
        return out

    def fallback(self, image: Image.Image) -> Image.Image:
        """Grayscale plus strong blur of the torso-and-legs band; head and feet rows unchanged."""
        rgb = image.convert("RGB")
        top = int(round(self.band[0] * rgb.height))
        bottom = int(round(self.band[1] * rgb.height))
        if bottom <= top:
            return rgb.copy()
        region = rgb.crop((0, top, rgb.width, bottom)).convert("L")
        region = region.filter(ImageFilter.GaussianBlur(self.blur * rgb.width))
        out = rgb.copy()
        out.paste(region.convert("RGB"), (0, top))
        return out

    @staticmethod
    def from_parsing(
        label_map: Image.Image | np.ndarray, clothes_labels: tuple[int, ...] = LIP_CLOTHES_LABELS
    ) -> Image.Image:
        """Binary clothes mask (mode 'L', 255 = clothes) from a human-parsing label map.

        ``label_map`` holds one class index per pixel: a 'P' or 'L' PNG as written by SCHP, or
        an integer array of shape (H, W).
        """
        labels = np.asarray(label_map)
        if labels.ndim != 2:
            raise DataFormatError(
                f"a parsing label map must be one class index per pixel (H, W), got shape {labels.shape}; "
                "load the PNG without converting it to RGB."
            )
        clothes = np.isin(labels, np.asarray(clothes_labels))
        return Image.fromarray(np.where(clothes, 255, 0).astype(np.uint8))
