"""Stage II's image side: ``v`` of every kept training image from a frozen image tower, extracted once.

The features go to ``<run_dir>/stage2/features.pt``, keyed by image path and backbone settings, so a resume
(and every DDP process) reuses them instead of extracting again (docs/design.md, "Stage II decisions").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from itkm_lightning import safe_load
from itkm_lightning.data.dataset import ReIDImageDataset
from itkm_lightning.data.schema import Sample
from itkm_lightning.data.transforms import test_transform
from itkm_lightning.errors import ConfigError
from itkm_lightning.fileio import atomic_write
from itkm_lightning.models.backbone import build_image_encoder
from itkm_lightning.models.backbone_config import BackboneConfig

logger = logging.getLogger(__name__)

FEATURE_CACHE = "features.pt"


def cached_features(samples: list[Sample], datamodule, stage_dir: Path, backbone: BackboneConfig,
                    frozen_clip: Callable, device_choice: str) -> torch.Tensor:
    """v (P-d, unnormalised) of each sample: ``cc`` images through their group-0 (original) view.

    A ``cc`` group-1 sample is the clothing-agnostic view of a group-0 image; Stage II describes it by
    the original image (docs/method.md section 5), so both share one extraction, keyed by path.
    ``frozen_clip()`` builds the frozen CLIP (the same weights in every process); ``device_choice`` is
    ``stage2.extract_device``.
    """
    needed = list(dict.fromkeys(s.path for s in samples))
    meta = {"backbone": backbone.model_dump(mode="json"), "image_size": list(datamodule.image_size)}
    cache_path = stage_dir / FEATURE_CACHE
    cache = (safe_load.load(cache_path, what="feature cache", fix="delete it to extract the features again")
             if cache_path.is_file() else None)
    if cache is not None and cache.get("meta") == meta and set(needed) <= set(cache["paths"]):
        rank_zero_info(f"[stage2] reusing cached image features {cache_path}")
    else:
        if cache is not None:
            logger.warning("%s was made for other images or another backbone; extracting again", cache_path)
        first = {}
        for s in samples:
            first.setdefault(s.path, replace(s, group=0) if s.scenario == "cc" else s)
        v = extract_features([first[p] for p in needed], datamodule, backbone, frozen_clip,
                             extract_device(device_choice))
        cache = {"meta": meta, "paths": needed, "v": v}
        # Every DDP process writes the same numbers; each rename is whole.
        atomic_write(cache_path, lambda handle: torch.save(cache, handle))
    row = {path: i for i, path in enumerate(cache["paths"])}
    return cache["v"][[row[s.path] for s in samples]].float()


@torch.no_grad()
def extract_features(samples: list[Sample], datamodule, backbone: BackboneConfig, frozen_clip: Callable,
                     device: torch.device) -> torch.Tensor:
    """``v`` of ``samples`` (their groups already set) from a fresh frozen image tower: no scenario embedding,
    one branch. Runs before ``trainer.fit``, so every process extracts everything on its own device."""
    cfg = backbone.model_copy(update={"scenario_embedding": "none", "dual_branch": False})
    clip_model = frozen_clip() if cfg.kind == "clip" else None  # timm: its own pretrained weights
    encoder = build_image_encoder(cfg, clip_model=clip_model).to(device).eval()
    dataset = ReIDImageDataset(samples, test_transform(datamodule.image_size))  # no view transform
    loader = DataLoader(dataset, batch_size=datamodule.test_batch_size, num_workers=datamodule.num_workers)
    chunks = []
    for batch in loader:
        images = batch["image"].to(device)
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=device)
        chunks.append(encoder(images, zeros, zeros).v.float().cpu())
    rank_zero_info(f"[stage2] extracted frozen-CLIP features of {len(samples)} images on {device}")
    return torch.cat(chunks)


def extract_device(choice: str) -> torch.device:
    """``stage2.extract_device``: ``auto`` is this process's GPU if any (``LOCAL_RANK``), else the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("stage2.extract_device is cuda but no GPU is visible; use auto or cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
