"""Figures of a run (`write_run_figures`), their W&B logging, and `itkm report`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from itkm_lightning.command import main
from itkm_lightning.tools import figures
from itkm_lightning.tools.run_figures import log_figures_to_wandb, write_run_figures

PSEUDO_CSV = (
    "epoch,step,train/loss_homo,pseudo/vi-g0/num_clusters,pseudo/vi-g0/num_outliers,pseudo/vi-g0/ari,pseudo/vi-g0/nmi,"
    "pseudo/cr-g1/num_clusters,pseudo/cr-g1/num_outliers,pseudo/cr-g1/ari,pseudo/cr-g1/nmi\n"
    ",0,,4,2,0.1,0.5,3,1,0.2,0.6\n"
    "0,1,3.2,,,,,,,,\n"
    ",3,,5,1,0.4,0.7,3,0,0.3,0.65\n"
)


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pseudo_label_log_is_read_per_block_and_metric(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(PSEUDO_CSV)
    series = figures.read_pseudo_label_log(csv_path)
    assert series["vi-g0"]["num_clusters"] == [4.0, 5.0]
    assert series["cr-g1"]["nmi"] == [0.6, 0.65]
    (tmp_path / "plain.csv").write_text("epoch,step,train/loss\n0,1,2.0\n")
    assert figures.pseudo_label_curves(tmp_path / "plain.csv", tmp_path / "p.png") is None


def test_scenario_similarity_means_leave_out_self_similarity():
    e = np.eye(4)
    text = np.stack([e[0], e[0], e[0] + e[1], e[2], e[3]])  # vi: three prototypes; cc: two orthogonal ones
    _, mean, present = figures.scenario_similarity(text, np.array([0, 0, 0, 2, 2]))
    assert present == [0, 2]
    pair = np.cos(np.pi / 4)
    np.testing.assert_allclose(mean, [[(1 + 2 * pair) / 3, 0.0], [0.0, 0.0]], atol=1e-12)


def test_write_run_figures_writes_every_figure(tmp_path, synthetic_root, tiny_backbone):
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.data.sources import SyntheticBenchmark
    from itkm_lightning.stages.stage1 import Stage1

    run_dir = tmp_path / "run"
    (run_dir / "stage1" / "logs").mkdir(parents=True)
    (run_dir / "stage1" / "logs" / "metrics.csv").write_text(PSEUDO_CSV)
    (run_dir / "stage2").mkdir()
    torch.save({"stage": "stage2", "text_features": torch.nn.functional.normalize(torch.randn(9, 16), dim=1),
                "cluster_scenario": torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])}, run_dir / "stage2" / "handoff.pt")
    datamodule = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root),
                                image_size=(64, 32), num_workers=0, test_batch_size=32)
    datamodule.setup("validate")
    model = Stage1(backbone=tiny_backbone)
    written = write_run_figures(run_dir, model, datamodule, num_queries=4)
    names = {"pseudo_labels_stage1", "text_prototypes", "embedding",
             "ranked_synthetic_vi", "ranked_synthetic_cr", "ranked_synthetic_cc"}
    assert set(written) == names
    assert all(is_png(path) and path.parent == run_dir / "figures" for path in written.values())
    assert model.training  # left as it was found
    with Image.open(written["ranked_synthetic_vi"]) as grid:  # 4 query rows, query + 10 columns
        cell_w = figures.THUMB[0] + 2 * figures.BORDER + figures.GAP
        cell_h = figures.THUMB[1] + 2 * figures.BORDER + figures.CAPTION + figures.GAP
        assert grid.size == (11 * cell_w + figures.GAP, 2 * figures.CAPTION + 4 * cell_h + figures.GAP)


def test_stage_one_only_layout_and_absent_inputs(tmp_path):
    run_dir = tmp_path / "run"
    assert write_run_figures(run_dir, None, None) == {}  # nothing to draw: nothing written, no error
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "metrics.csv").write_text(PSEUDO_CSV)
    written = write_run_figures(run_dir, None, None)
    assert list(written) == ["pseudo_labels_stage1"] and is_png(written["pseudo_labels_stage1"])


def test_figures_are_logged_to_wandb(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(png)
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    logged = []
    monkeypatch.setattr(wandb_logger, "log_image", lambda key, images: logged.append((key, images)))
    log_figures_to_wandb(SimpleNamespace(loggers=[wandb_logger]), {"a": png})
    assert logged == [("figures/a", [str(png)])]
    log_figures_to_wandb(SimpleNamespace(loggers=[object()]), {"a": png})  # other loggers: nothing
    assert len(logged) == 1


def test_a_plotting_failure_only_warns(tmp_path, monkeypatch):
    from itkm_lightning import cli
    from itkm_lightning.tools import run_figures

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(run_figures, "write_run_figures", broken)
    fake_cli = SimpleNamespace(run_dir=tmp_path, trainer=None)
    with pytest.warns(UserWarning, match="figures were not written .*no display"):
        cli.ITKMCLI._write_figures(fake_cli, None, None, None)


# ------------------------------------------------------------------ report
def fake_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({
        "raw_pixels": {"bench_a": {"mAP": 0.25, "R1": 0.5, "R5": 0.6, "R10": 0.7, "mINP": 0.1}},
        "stage1": {"bench_a": {"mAP": 0.612, "R1": 0.75, "R5": 0.8, "R10": 0.9, "mINP": 0.3}},
    }))
    (run_dir / "timings.json").write_text(json.dumps({"train_stage1": 12.5, "figures": 2.0}))
    (run_dir / "config.yaml").write_text("model:\n  temperature: 0.05 # <tag>\n")
    Image.new("RGB", (20, 10), "green").save(run_dir / "figures" / "ranked_bench_a.png")
    return run_dir


def test_report_puts_results_timings_and_figures_on_one_page(tmp_path, capsys):
    run_dir = fake_run(tmp_path)
    main(["report", str(run_dir)])
    assert str(run_dir / "report.html") in capsys.readouterr().out
    page = (run_dir / "report.html").read_text()
    for text in ("61.2", "75.0", "25.0", "bench_a", "stage1", "raw_pixels", "train_stage1", "12.5", "14.5",
                 'src="figures/ranked_bench_a.png"', "green = same identity", "&lt;tag&gt;"):
        assert text in page, text
    main(["report", str(run_dir), "--embed_images"])
    page = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="figures/' not in page


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
