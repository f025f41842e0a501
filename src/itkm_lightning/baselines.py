"""Non-learned baselines that give every result table a floor."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.data.schema import BenchmarkSplit
from itkm_lightning.evaluation.benchmark import evaluate_benchmark


def raw_pixel_features(paths: list[str], size: tuple[int, int] = (16, 8)) -> torch.Tensor:
    """Images box-down-sampled to (H, W), flattened, centred on the set's mean, L2-normalised."""
    return raw_pixel_features_of_images((load_rgb(p) for p in paths), size)  # one picture in memory at a time


def raw_pixel_features_of_images(images: Iterable[Image.Image], size: tuple[int, int] = (16, 8)) -> torch.Tensor:
    """``raw_pixel_features`` of RGB images (e.g. pictures a probe degraded), read one at a time."""
    h, w = size
    rows = [np.asarray(image.resize((w, h), Image.BOX), dtype=np.float32).reshape(-1) / 255.0 for image in images]
    feats = np.stack(rows) if rows else np.zeros((0, h * w * 3), dtype=np.float32)
    feats -= feats.mean(axis=0, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    return torch.from_numpy(feats)


def raw_pixel_results(benchmarks: list[BenchmarkSplit], size: tuple[int, int] = (16, 8),
                      rerank=None) -> dict[str, dict]:
    """The ``raw_pixels`` stage: every benchmark scored on raw-pixel features with its own protocol
    (re-ranked with ``rerank``, a RerankConfig, when given)."""
    return {b.name: evaluate_benchmark(b, raw_pixel_features([s.path for s in b.query + b.gallery], size), rerank=rerank)
            for b in benchmarks}
