"""``itkm prepare mlr --source cuhk03`` on CUHK03 crops listed in a labels.csv (the real-photo demo's input)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from itkm_lightning.data.datasets import MLRCUHK03
from itkm_lightning.data.datasets.mlr_format import draw_rates
from itkm_lightning.data.datasets.mlr_originals import parse_id_range, plan_cuhk03_crops
from itkm_lightning.prepare import build_mlr, main


@pytest.fixture()
def crops_root(tmp_path):
    """Ids 10-15, two pictures per camera view, in manideep2510's layout (NNNN_KK.jpg, KK 00-04 = A, 05-09 = B)."""
    root = tmp_path / "crops"
    (root / "labeled" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(10, 16):
        for slot in (0, 1, 5, 6):
            name = f"labeled/train/{pid:04d}_{slot:02d}.jpg"
            width, height = 20 + slot, 48
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / name)
            view = "A" if slot < 5 else "B"
            rows.append({"path": name, "pid": pid, "slot": slot, "camera_view": view, "camid": int(view == "B"),
                         "width": width, "height": height})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_crops_become_an_mlr_set_with_named_test_ids(crops_root, tmp_path):
    report = build_mlr("cuhk03", crops_root, tmp_path / "out", train_ids="10-12", test_ids="14-15", progress=False)
    assert report.meta["source_layout"] == "crops" and report.meta["test_ids"] == "14-15"
    (bench,) = MLRCUHK03().load(tmp_path / "out")
    assert {s.pid for s in bench.train} == {10, 11, 12}  # id 13 is in neither range: left out
    assert {s.pid for s in bench.query} == {s.pid for s in bench.gallery} == {14, 15}
    assert {s.group for s in bench.query} == {1} and {s.group for s in bench.gallery} == {0}
    assert {s.group for s in bench.train} == {0, 1}
    # camera B (every LR image, sorted by source path) is down-sampled by the mlr-v1 rates
    with (report.dest / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    low = sorted((r for r in rows if r["cam"] == "2"), key=lambda r: r["source_path"])
    assert [int(r["rate"]) for r in low] == draw_rates(len(low)).tolist()
    for row in low:
        with Image.open(report.dest / row["folder"] / row["file"]) as image:
            assert image.size == (int(row["src_w"]) // int(row["rate"]), int(row["src_h"]) // int(row["rate"]))
    assert all(r["rate"] == "1" for r in rows if r["cam"] == "1")


def test_crops_options_are_checked(crops_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="overlap"):
        build_mlr("cuhk03", crops_root, tmp_path / "a", train_ids="10-14", test_ids="14-15", progress=False)
    with pytest.raises(ValueError, match="--test-ids"):
        build_mlr("cuhk03", crops_root, tmp_path / "b", split=1, progress=False)
    with pytest.raises(ValueError, match="FIRST-LAST"):
        parse_id_range("600")
    main(["mlr", "--source", "cuhk03", "--root", str(crops_root), "--out", str(tmp_path / "c"),
          "--test-ids", "15-15", "--no-progress"])
    assert "bounding_box_train      5 ids" in capsys.readouterr().out


def test_the_shared_cuhk03_crops_plan(tmp_path):
    from test_realdata import realdata_dir

    root = realdata_dir() / "cuhk03_manideep2510_dev"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real CUHK03 crops not found at {root}")
    plan = plan_cuhk03_crops(root, parse_id_range("80-599"), parse_id_range("600-742"))
    folders = {f: [i for i in plan.images if i.folder == f] for f in ("bounding_box_train", "query", "bounding_box_test")}
    assert len(plan.images) == 6472
    assert len({i.pid for i in folders["bounding_box_train"]}) == 520
    assert len({i.pid for i in folders["query"]}) == 143 and {i.cam for i in folders["query"]} == {2}
