"""Real images from ../shared/realdata through the real loaders, and one `itkm fit` on CUHK01.

The images are never copied into the repository: they are read from ``$ITKM_REALDATA`` or from
``<repo>/../shared/realdata``, and every test here is skipped with a message where neither exists.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from itkm_lightning.data.datasets import CUHK01, Market1501

REPO = Path(__file__).resolve().parents[1]


def realdata_dir() -> Path:
    configured = os.environ.get("ITKM_REALDATA")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "realdata"


def dataset_or_skip(name: str) -> Path:
    folder = realdata_dir() / name
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"real images not found at {folder} (set ITKM_REALDATA to the realdata folder to run this)")
    return folder


def read_labels(folder: Path) -> dict[str, dict[str, str]]:
    """labels.csv rows keyed by the absolute image path."""
    with (folder / "labels.csv").open(newline="") as handle:
        return {str((folder / row["path"]).resolve()): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def cuhk01_dir() -> Path:
    return dataset_or_skip("cuhk01_manideep2510")


@pytest.fixture(scope="module")
def market_dir() -> Path:
    return dataset_or_skip("market1501_dgnet")


def test_cuhk01_loader_reads_every_labelled_image(cuhk01_dir):
    labels = read_labels(cuhk01_dir)
    (bench,) = CUHK01().load(cuhk01_dir)
    samples = bench.train + bench.query + bench.gallery
    assert len(samples) == len(labels) == 400
    assert len({s.pid for s in samples}) == 100 and {s.camid for s in samples} == {1, 2}
    for sample in samples:
        row = labels[str(Path(sample.path).resolve())]
        assert sample.pid == int(row["pid"])
        assert sample.camid == {"A": 1, "B": 2}[row["camera_view"]] == int(row["camid"]) + 1
        assert sample.group == int(row["camid"])  # camera A = group 0, camera B = group 1
    assert len(bench.train) == 200 and len(bench.query) == 100 and len(bench.gallery) == 100
    assert {s.pid for s in bench.train}.isdisjoint({s.pid for s in bench.query})


def test_market_loader_parses_the_real_names(market_dir):
    labels = read_labels(market_dir)
    (bench,) = Market1501(path=str(market_dir), train_folder="images", query_folder="images",
                          gallery_folder="images").load(market_dir)
    assert len(bench.gallery) == len(labels) == 49  # distractor 0000 kept in the gallery
    assert len(bench.query) == 48 and all(s.pid != 0 for s in bench.query)
    for sample in bench.gallery:
        row = labels[str(Path(sample.path).resolve())]
        assert (sample.pid, sample.camid) == (int(row["pid"]), int(row["cam"]))
    assert {s.camid for s in bench.gallery} == {1, 2, 3, 4, 5, 6}


@pytest.mark.slow
def test_fit_on_cuhk01_with_the_tiny_backbone(cuhk01_dir, tmp_path):
    from itkm_lightning.command import main

    override = tmp_path / "cuhk01.yaml"
    override.write_text(
        "data:\n"
        f"  root: {json.dumps(str(cuhk01_dir))}\n"
        "  sources:\n"
        "    - class_path: itkm_lightning.data.datasets.cuhk01.CUHK01\n"
        "      init_args: {scenario: cr, split: 0}\n"
    )
    run_dir = tmp_path / "run"
    main(["fit", "--config", str(REPO / "conf" / "smoke.yaml"), "--config", str(override),
          "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false", "--stage", "stage1"])
    results = json.loads((run_dir / "results.json").read_text())
    assert "stage1" in results
    for stage in results.values():
        assert set(stage) == {"cuhk01"}
        metrics = stage["cuhk01"]
        assert set(metrics) == {"mAP", "R1", "R5", "R10", "mINP"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
        assert metrics["R10"] >= metrics["R1"]
