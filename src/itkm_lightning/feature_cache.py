"""Training-set features a run has already extracted, so the same weights never run over the same images twice.

Two passes of a run repeat one before them exactly: Stage III starts from Stage I's final encoder, whose features
Stage I's hand-over has just extracted, and the supervised reference starts from the same weights as Stage I.
Each is a full pass over the training set (about 22 s of the CPU demo's 12 minutes; minutes on a large real set).

The key holds everything the features depend on: every tensor of the encoder (names, dtypes, shapes and bytes, so
parameters and buffers such as batch-norm statistics alike), the feature function, the autocast state and the
training set (paths, scenarios, groups). The cache belongs to one datamodule, whose extraction transform does not
change after construction. Stored features are private copies: callers get clones they may change in place.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from itkm_lightning.data.schema import Sample

# Sizes from the shapes: an entry of the demo is 4,800 x 1,280 floats (25 MB); SYSU-MM01 through a ViT-B/16,
# 22k x 768 (68 MB).
DEFAULT_MAX_BYTES = 1 << 30


def samples_digest(samples: Sequence[Sample]) -> str:
    """What an extraction of ``samples`` reads from each: the file, and the scenario and group the encoder is told."""
    h = hashlib.blake2b(digest_size=16)
    for s in samples:
        h.update(f"{s.path}\0{s.scenario}\0{s.group}\n".encode())
    return h.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """Digest of every tensor of ``module.state_dict()``: equal digests mean bit-identical weights and buffers."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def autocast_state(device_type: str) -> str:
    """Whether (and in which dtype) autocast is on: extraction under bf16 autocast gives other features."""
    if not torch.is_autocast_enabled(device_type):
        return "fp32"
    return str(torch.get_autocast_dtype(device_type))


def feature_key(encoder: torch.nn.Module, feature_fn: Callable, samples: Sequence[Sample], device_type: str) -> str:
    """The cache key of ``feature_fn``'s features of ``samples`` through ``encoder`` (see the module docstring)."""
    return "|".join([feature_fn.__qualname__, weights_digest(encoder), samples_digest(samples),
                     device_type, autocast_state(device_type)])


class FeatureCache:
    """Least recently used features, at most ``max_bytes`` of them (``0`` turns the cache off)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        features = self._entries.get(key)
        if features is None:
            return None
        self._entries.move_to_end(key)
        return features.clone()

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        self._entries[key] = features.detach().to("cpu", copy=True)
        self._entries.move_to_end(key)
        while self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
