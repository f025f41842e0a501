"""Hermetic test set-up: no network, no W&B, two threads, tiny models and generated data."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import lightning.pytorch  # noqa: E402,F401 - before any test captures stderr: its log handler keeps the first stream
import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: one process uses both; under `pytest -n 2` (make test) each worker takes one.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# as `itkm` does at start-up: the in-process training tests reuse freed activations (host_memory.py)
from itkm_lightning.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

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
    from itkm_lightning.models.backbone_config import BackboneConfig

    return BackboneConfig(**TINY_BACKBONE)


class TrainedRun(NamedTuple):
    run_dir: Path
    """A Stage-I-only run directory: ``checkpoints/last.ckpt``."""
    handoff: Path
    """The same weights as a Stage I hand-over file, in another folder."""
    stage: object
    """The Stage1 module (eval mode) both files hold."""


@pytest.fixture()
def trained(tmp_path, tiny_backbone) -> TrainedRun:
    """A Stage I module whose weights were moved away from the init (a model that failed to load would score
    differently), saved as a run directory's checkpoint and as a hand-over file."""
    from itkm_lightning.handoffs import save_handoff
    from itkm_lightning.stages.stage1 import Stage1

    torch.manual_seed(3)
    stage = Stage1(backbone=tiny_backbone)
    with torch.no_grad():
        for param in stage.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams),
                "pytorch-lightning_version": "2.6"}, ckpt)
    handoff = tmp_path / "other" / "stage1" / "handoff.pt"
    save_handoff(handoff, {"stage": "stage1", "encoder": stage.encoder_state(), "backbone": tiny_backbone.model_dump()})
    return TrainedRun(run_dir, handoff, stage.eval())
