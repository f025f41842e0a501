"""Feature checks shared by the kNN search and the Jaccard distance: CPU float32 copies, shapes, norms, k sizes."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

FeatureArray = Union[np.ndarray, torch.Tensor]

# A feature counts as L2-normalised when its norm is within this distance of 1.
NORM_TOLERANCE = 1e-2


def _to_cpu_float32(array: FeatureArray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def _check_2d_finite(array: np.ndarray, name: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array; got shape {tuple(array.shape)}; reshape it to (N, D).")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values; fix the feature extraction before clustering.")


def _check_normalised(features: np.ndarray) -> None:
    norms = np.linalg.norm(features, axis=1)
    worst = float(np.abs(norms - 1.0).max()) if len(norms) else 0.0
    if worst > NORM_TOLERANCE:
        raise ValueError(
            f"features must be L2-normalised (a row norm is off by {worst:.3g}); "
            "apply torch.nn.functional.normalize(features, dim=1) first."
        )


def _check_neighbourhood_sizes(k1: int, k2: int) -> None:
    if k1 < 1:
        raise ValueError(f"k1 must be >= 1; got {k1}.")
    if k2 < 1:
        raise ValueError(f"k2 must be >= 1; got {k2}.")
    if k2 > k1:
        raise ValueError(f"k2 must not exceed k1; got k2={k2} > k1={k1}; lower clustering k2.")


def _check_enough_features(n: int, k1: int) -> None:
    if k1 >= n:
        raise ValueError(f"k1={k1} needs more than {k1} features in a block; got {n}; lower clustering k1.")


def _check_ranks(ranks: np.ndarray, n: int, k1: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.shape != (n, k1):
        raise ValueError(f"precomputed ranks must have shape (N, k1) = ({n}, {k1}); got {tuple(ranks.shape)}; "
                         "search them with knn(features, features, k1).")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n):
        raise ValueError(f"precomputed ranks must index the {n} features; got values outside [0, {n}).")
    return ranks.astype(np.int64, copy=False)
