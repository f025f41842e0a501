"""Query x gallery distance matrices: the cosine distance of two feature sets, and the checks every scorer applies
to its inputs (distance matrices, label vectors, labels encoded as shared integer codes)."""

from __future__ import annotations

from typing import Any

import numpy as np


def cosine_distance(query_features: Any, gallery_features: Any) -> np.ndarray:
    """Return the query × gallery matrix ``1 − cos`` after L2-normalising both feature sets.

    Accepts numpy arrays or torch tensors of shape (N, D) and (M, D). A zero feature vector stays zero
    after normalisation (the norm is clamped, as ``torch.nn.functional.normalize`` does), so its
    distance to everything is 1. The result keeps float32 unless an input is float64.
    """
    query = _feature_matrix(query_features, "query_features")
    gallery = _feature_matrix(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features have {query.shape[1]} dimensions but gallery_features have "
            f"{gallery.shape[1]}; extract both with the same model."
        )
    dtype = np.result_type(query.dtype, gallery.dtype, np.float32)
    query_unit = _l2_normalise(query.astype(dtype, copy=False))
    gallery_unit = _l2_normalise(gallery.astype(dtype, copy=False))
    return 1.0 - query_unit @ gallery_unit.T


def _as_numpy(values: Any) -> np.ndarray:
    """Convert a torch tensor (on any device) or a sequence to a numpy array."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _feature_matrix(features: Any, name: str) -> np.ndarray:
    array = _as_numpy(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples × dimensions) array, got shape {array.shape}.")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values; check the feature extractor.")
    return array


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _distance_matrix(distmat: Any) -> np.ndarray:
    distances = _as_numpy(distmat)
    if distances.ndim != 2:
        raise ValueError(
            f"distmat must be a 2-D (queries × gallery) matrix, got shape {distances.shape}."
        )
    if distances.dtype.kind not in "iuf":
        raise ValueError(f"distmat must hold numbers, got dtype {distances.dtype}.")
    # min() propagates NaN and is much cheaper than a full isnan() mask on a large matrix.
    if distances.dtype.kind == "f" and distances.size and np.isnan(distances.min()):
        raise ValueError("distmat contains NaN; check the features it was computed from.")
    return distances


def _label_vector(values: Any, name: str, expected_length: int, axis_name: str) -> np.ndarray:
    array = _as_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}.")
    if array.size != expected_length:
        raise ValueError(
            f"{name} has {array.size} entries but distmat has {expected_length} {axis_name}; "
            "pass one label per row/column of distmat."
        )
    return array


def _clothes_vector(values: Any, name: str, expected_length: int, axis_name: str) -> np.ndarray:
    array = _label_vector(values, name, expected_length, axis_name)
    if array.dtype == object and any(value is None for value in array):
        raise ValueError(f"{name} contains None; every sample needs a clothes key for this protocol.")
    return array.astype(str)


def _joint_codes(query_values: np.ndarray, gallery_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode query and gallery labels as small integers over query ∪ gallery (equality preserved)."""
    _, codes = np.unique(np.concatenate([query_values, gallery_values]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[: query_values.size], codes[query_values.size :]
