"""Zero-shot calibration of a pretrained backbone on the synthetic benchmark, scored like the main pipeline.

Rows: ``raw_pixels`` (the non-learned floor of every results table), a randomly initialised CLIP of
the same architecture, and the pretrained one; for each CLIP the ``f`` feature (CLS after the final
layer norm: what Stage I clusters and retrieves with) and the projected ``v`` feature. The loaders,
test transform, protocols and metrics are the ones ``itkm fit`` uses (``ReIDDataModule``,
``evaluate_benchmark``, ``raw_pixel_results``). The encoder here has no scenario embedding and one
patch branch: it measures the backbone itself, while the demo's ``untrained`` row adds a freshly
initialised scenario embedding (small, so its numbers come out close but not identical).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from itkm_lightning.baselines import raw_pixel_results
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.evaluation.benchmark import evaluate_benchmark
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder
from itkm_lightning.models.clip_loading import load_clip_model

SCENARIO_NAMES = {
    "synthetic_vi": "vi (IR->visible)",
    "synthetic_cr": "cr (LR->HR)",
    "synthetic_cc": "cc (cloth-changing)",
}


class ZeroShotConfig(BaseModel):
    """Which benchmark to score the backbone on.

    Args:
        root: data root of the benchmark (it is generated below it on first use, like ``itkm fit``).
        preset: synthetic benchmark preset (``demo``: the benchmark of ``make demo``).
        seed: synthetic benchmark seed.
        batch_size: feature-extraction batch size.
        random_init_seed: torch seed of the random-init comparison model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = "data"
    preset: str = "demo"
    seed: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    random_init_seed: int = 0


def benchmark_datamodule(cfg: ZeroShotConfig, image_size: tuple[int, int]) -> ReIDDataModule:
    datamodule = ReIDDataModule(
        sources=[SyntheticBenchmark(preset=cfg.preset, seed=cfg.seed)],  # type: ignore[arg-type]
        root=cfg.root, image_size=image_size, test_batch_size=cfg.batch_size, num_workers=0,
    )
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule


def plain_encoder_config(model_dir: str, image_size: tuple[int, int]) -> BackboneConfig:
    """Load ``model_dir`` as the stages do, minus the scenario embedding and the second patch branch."""
    return BackboneConfig(name_or_path=model_dir, pretrained=True, image_size=image_size,
                          scenario_embedding="none", dual_branch=False)


@torch.no_grad()
def encoder_scores(encoder: CLIPImageEncoder, datamodule: ReIDDataModule) -> dict[str, dict[str, dict[str, float]]]:
    """``{"f": {benchmark: metrics}, "v": {...}}`` with L2-normalised features, in dataset order."""
    encoder.eval()
    scores: dict[str, dict[str, dict[str, float]]] = {"f": {}, "v": {}}
    for bench, loader in zip(datamodule.benchmarks, datamodule.val_dataloader(), strict=True):
        features: dict[str, list[torch.Tensor]] = {"f": [], "v": []}
        for batch in loader:
            out = encoder(batch["image"], batch["scenario"], batch["group"])
            features["f"].append(F.normalize(out.f, dim=1))
            features["v"].append(F.normalize(out.v, dim=1))
        for name, chunks in features.items():
            scores[name][bench.name] = evaluate_benchmark(bench, torch.cat(chunks))
    return scores


def zero_shot_report(model_dir: str | os.PathLike, cfg: ZeroShotConfig, image_size: tuple[int, int]) -> dict:
    """Scores of raw pixels, a random-init CLIP of the same architecture and the CLIP in ``model_dir``."""
    encoder_config = plain_encoder_config(str(model_dir), image_size)
    pretrained = load_clip_model(encoder_config)
    torch.manual_seed(cfg.random_init_seed)
    random_init = type(pretrained)(pretrained.config)  # same config, fresh weights: no transformers import here
    datamodule = benchmark_datamodule(cfg, image_size)
    rows: dict[str, dict[str, dict[str, float]]] = {"raw_pixels": raw_pixel_results(datamodule.benchmarks)}
    for label, model in (("random_init", random_init), ("pretrained", pretrained)):
        for feature, results in encoder_scores(CLIPImageEncoder(encoder_config, model), datamodule).items():
            rows[f"{label}_{feature}"] = results
    return {"benchmark": {"preset": cfg.preset, "seed": cfg.seed}, "model_dir": str(model_dir), "results": rows}


def format_report(report: dict) -> str:
    """A plain-text table: one row per feature, mAP / R1 (percent) per scenario and their mean mAP."""
    rows = report["results"]
    benchmarks = list(next(iter(rows.values())))
    header = f"{'zero-shot':<16}" + "".join(f"{SCENARIO_NAMES.get(b, b):>22}" for b in benchmarks) + f"{'mean mAP':>10}"
    lines = [header, " " * 16 + "".join(f"{'mAP / R1':>22}" for _ in benchmarks), "-" * len(header)]
    for name, results in rows.items():
        cells = "".join(f"{100 * results[b]['mAP']:>14.1f} / {100 * results[b]['R1']:>5.1f}" for b in benchmarks)
        mean = 100 * sum(results[b]["mAP"] for b in benchmarks) / len(benchmarks)
        lines.append(f"{name:<16}{cells}{mean:>10.1f}")
    return "\n".join(lines)
