"""``write_run_figures``: the PNGs a finished run leaves in ``<run_dir>/figures`` (and logs to W&B)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from itkm_lightning.handoffs import load_handoff
from itkm_lightning.tools.features import embed_samples
from itkm_lightning.tools.figures import (
    embedding_scatter,
    group_label,
    prototype_similarity,
    pseudo_label_curves,
    ranked_list_grid,
    ranked_rows,
    ranked_title,
    two_d_embedding,
)

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"


def metrics_logs(run_dir: Path) -> dict[str, Path]:
    """``{stage: metrics.csv}``: ``<run_dir>/<stage>/logs/metrics.csv``, or ``<run_dir>/logs`` for Stage I-only runs."""
    logs = {p.parent.parent.name: p for p in sorted(run_dir.glob("*/logs/metrics.csv"))}
    if (run_dir / "logs" / "metrics.csv").is_file() and "stage1" not in logs:
        logs["stage1"] = run_dir / "logs" / "metrics.csv"
    return logs


def write_run_figures(run_dir: str | Path, model, datamodule, *, num_queries: int = 6, top_k: int = 10,
                      max_points: int = 1500, seed: int = 0) -> dict[str, Path]:
    """Write every figure of a run into ``<run_dir>/figures``; returns ``{name: png}``.

    ``model``: a stage module (its ``retrieval_features`` and device are used, so the figures show what
    evaluation scored) or None to skip the figures that need features. ``datamodule``: set up, with
    ``benchmarks``. Ranked lists skip gallery images of the query's identity *and* camera (the usual
    junk rule); each benchmark's own protocol may remove more (see evaluation/protocols.py).
    Figures whose inputs are absent (no pseudo-label log, no Stage II handoff) are skipped with a log line.
    """
    run_dir = Path(run_dir)
    out = run_dir / FIGURES_DIR
    figures: dict[str, Path] = {}
    for stage, csv_path in metrics_logs(run_dir).items():
        written = pseudo_label_curves(csv_path, out / f"pseudo_labels_{stage}.png",
                                      title=f"{stage}: pseudo-label quality per block (ARI/NMI: monitoring only)")
        if written is not None:
            figures[f"pseudo_labels_{stage}"] = written
    stage2 = run_dir / "stage2" / "handoff.pt"
    if stage2.is_file():
        handoff = load_handoff(stage2)
        figures["text_prototypes"] = prototype_similarity(
            handoff["text_features"].float().numpy(), handoff["cluster_scenario"].numpy(), out / "text_prototypes.png")
    else:
        logger.info("no %s: the text-prototype similarity figure is skipped", stage2)
    if model is not None and datamodule is not None:
        figures.update(_feature_figures(out, model, datamodule, num_queries, top_k, max_points, seed))
    return figures


@torch.no_grad()
def _feature_figures(out: Path, model, datamodule, num_queries: int, top_k: int, max_points: int,
                     seed: int) -> dict[str, Path]:
    if not datamodule.benchmarks:
        datamodule.setup("validate")
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    figures: dict[str, Path] = {}
    points_feats, points_ids, points_groups = [], [], []
    try:
        for bench in datamodule.benchmarks:
            if not bench.query or not bench.gallery:
                continue
            feats = embed_samples(model.retrieval_features, bench.query + bench.gallery, datamodule.image_size,
                                  device=model.device, batch_size=datamodule.test_batch_size, progress=False,
                                  view_transform=getattr(datamodule, "_clothing_agnostic_view", None))  # as evaluation
            q, g = feats[: len(bench.query)], feats[len(bench.query):]
            picked = sorted(rng.choice(len(bench.query), size=min(num_queries, len(bench.query)), replace=False))
            rows = ranked_rows(bench, q.numpy(), g.numpy(), picked, top_k)
            figures[f"ranked_{bench.name}"] = ranked_list_grid(rows, out / f"ranked_{bench.name}.png",
                                                               title=ranked_title(bench, top_k))
            points_feats.append(feats.numpy())
            samples = bench.query + bench.gallery
            points_ids += [s.identity for s in samples]
            points_groups += [f"{bench.name}: {group_label(s.scenario, s.group)}" for s in samples]
    finally:
        model.train(was_training)
    if not points_feats:
        return figures
    feats = np.concatenate(points_feats)
    if len(feats) > max_points:
        keep = np.sort(rng.choice(len(feats), size=max_points, replace=False))
        feats = feats[keep]
        points_ids = [points_ids[i] for i in keep]
        points_groups = [points_groups[i] for i in keep]
    if len(feats) >= 3:
        figures["embedding"] = embedding_scatter(
            two_d_embedding(feats, seed=seed), points_ids, points_groups, out / "embedding.png",
            title=f"t-SNE of {len(feats)} test features (query + gallery)")
    return figures


def log_figures_to_wandb(trainer, figures: dict[str, Path]) -> None:
    """Log the PNGs as ``figures/<name>`` images when one of the trainer's loggers is a WandbLogger."""
    from lightning.pytorch.loggers import WandbLogger

    for run_logger in getattr(trainer, "loggers", []) or []:
        if isinstance(run_logger, WandbLogger):
            for name, path in figures.items():  # log_image wraps each file in wandb.Image at the trainer's step
                run_logger.log_image(key=f"figures/{name}", images=[str(path)])
