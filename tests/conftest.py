"""Hermetic test set-up: no network, no W&B, two threads, tiny models and generated data."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

TINY_BACKBONE = {
    "pretrained": False,
    "image_size": (64, 32),
    "projection_dim": 16,
    "vision": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 8},
    "text": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding the tiny synthetic benchmark, generated once per test session."""
    from itkm_lightning.data.sources import SyntheticBenchmark

    root = tmp_path_factory.mktemp("data")
    SyntheticBenchmark(preset="tiny", seed=0).prepare(root)
    return root


@pytest.fixture()
def tiny_backbone():
    from itkm_lightning.models.clip import BackboneConfig

    return BackboneConfig(**TINY_BACKBONE)
