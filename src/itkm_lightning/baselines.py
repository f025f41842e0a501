"""Non-learned baselines that give every result table a floor."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.data.schema import BenchmarkSplit
from itkm_lightning.evaluation.benchmark import evaluate_benchmark


def raw_pixel_features(paths: list[str], size: tuple[int, int] = (16, 8)) -> torch.Tensor:
    """Images box-down-sampled to (H, W), flattened, centred on the set's mean, L2-normalised."""
    h, w = size
    rows = [np.asarray(load_rgb(p).resize((w, h), Image.BOX), dtype=np.float32).reshape(-1) / 255.0 for p in paths]
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
