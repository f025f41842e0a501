"""Map-style datasets over ``Sample`` lists; training items never carry ground-truth ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.errors import ITKMError

SCENARIO_INDEX = {name: i for i, name in enumerate(SCENARIOS)}


class UnreadableImageError(ITKMError, RuntimeError):
    """An image file that exists but cannot be decoded."""


def load_rgb(path: str) -> Image.Image:
    """Open any image (grayscale, RGBA, 16-bit, palette) as 3-channel 8-bit RGB, or fail naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale (thermal cameras): rescale to 8 bit instead of clipping.
                arr = np.asarray(img, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                img = Image.fromarray(arr.astype(np.uint8), mode="L")
            return img.convert("RGB")
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(
            f"cannot read image {path} ({err}); replace or delete the file and run again"
        ) from err


def unreadable_images(paths: Sequence[str], workers: int = 1) -> list[str]:
    """The paths among ``paths`` that ``load_rgb`` cannot decode (missing files included), in input order.

    Decodes every image once; threads overlap the work because PIL releases the GIL while decoding.
    """
    from concurrent.futures import ThreadPoolExecutor

    def bad(path: str) -> bool:
        try:
            load_rgb(path)
        except (UnreadableImageError, FileNotFoundError):
            return True
        return False

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        flags = list(pool.map(bad, paths, chunksize=64))
    return [p for p, is_bad in zip(paths, flags) if is_bad]


class ReIDImageDataset(Dataset):
    """Items: ``image``, ``index``, ``scenario`` (int), ``group`` and, for training, ``pseudo_label``.

    ``view_transform(sample, image)`` builds derived views (the clothing-agnostic view of ``cc`` group 1)
    before the tensor transform.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable,
        *,
        pseudo_labels: np.ndarray | None = None,
        view_transform: Callable[[Sample, Image.Image], Image.Image] | None = None,
        extra_transforms: dict[tuple[str, int], Callable] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.pseudo_labels = pseudo_labels
        self.view_transform = view_transform
        self.extra_transforms = extra_transforms or {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = load_rgb(sample.path)
        if self.view_transform is not None:
            image = self.view_transform(sample, image)
        transform = self.extra_transforms.get((sample.scenario, sample.group), self.transform)
        item: dict[str, torch.Tensor | int] = {
            "image": transform(image),
            "index": index,
            "scenario": SCENARIO_INDEX[sample.scenario],
            "group": sample.group,
        }
        if self.pseudo_labels is not None:
            item["pseudo_label"] = int(self.pseudo_labels[index])
        return item
