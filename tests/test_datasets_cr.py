"""Cross-resolution loaders on fake on-disk trees: Market-1501, CUHK01 and the MLR sets (docs/protocols.md 3, 5.7, 6)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itkm_lightning.data.datasets import CUHK01, MLRCUHK03, Market1501, MLRMarket1501
from itkm_lightning.data.datasets.common import unmatched_query_count
from itkm_lightning.data.datasets.market1501 import parse_market_name
from itkm_lightning.prepare import build_mlr
from itkm_lightning.evaluation.benchmark import evaluate_benchmark


def tiny_png(path: Path, seed: int = 0, size: tuple[int, int] = (8, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


# ----------------------------------------------------------------------------- Market-1501
@pytest.fixture()
def market_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data_cam3_0042"  # digits and 'cam' in the root must not reach the parser
    dataset = root / "Market-1501-v15.09.15"
    names = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c5s1_000476_01.jpg", "0007_c2s2_010101_00.jpg",
                               "-1_c1s1_000001_00.jpg"],
        "query": ["0003_c1s1_001051_00.jpg", "0005_c4s1_002001_00.jpg", "0009_c6s1_003001_00.jpg"],
        "bounding_box_test": ["0003_c1s1_001101_00.jpg", "0003_c2s1_001126_01.jpg", "0005_c4s1_002051_00.jpg",
                              "0005_c1s1_002101_00.jpg", "0000_c3s1_000000_00.jpg", "-1_c1s1_000000_00.jpg"],
    }
    for folder, files in names.items():
        for index, name in enumerate(files):
            tiny_png(dataset / folder / name, seed=index)
    (dataset / "bounding_box_test" / "Thumbs.db").write_bytes(b"stray")
    (dataset / "query" / "readme_c1.jpg").write_bytes(b"")  # not a Market name: ignored
    return root


def test_market_names_parse_from_the_file_name():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("-1_c3s2_000001_00.jpg") == (-1, 3)
    assert parse_market_name("0000_c6s1_000000_00.jpg") == (0, 6)
    assert parse_market_name("camera_c1.jpg") is None


def test_market_loader_drops_junk_and_keeps_distractors_in_the_gallery_only(market_dir, caplog):
    with caplog.at_level(logging.INFO):
        (bench,) = Market1501().load(market_dir)
    assert (bench.name, bench.scenario, bench.protocol) == ("market1501", "cr", "market")
    assert [(s.pid, s.camid) for s in bench.train] == [(2, 1), (2, 5), (7, 2)]
    assert [(s.pid, s.camid) for s in bench.query] == [(3, 1), (5, 4), (9, 6)]
    assert [(s.pid, s.camid) for s in bench.gallery] == [(0, 3), (3, 1), (3, 2), (5, 1), (5, 4)]
    assert {s.group for s in bench.train + bench.query + bench.gallery} == {0}
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in bench.gallery)
    assert bench.train[0].identity == "market1501:2"
    assert unmatched_query_count(bench) == 1
    assert "1 of 3 queries have no match" in caplog.text


def test_market_scores_skip_queries_without_a_match(market_dir):
    (bench,) = Market1501().load(market_dir)
    # queries: 3@c1, 5@c4, 9@c6; gallery: 0@c3, 3@c1, 3@c2, 5@c1, 5@c4 (sorted by name)
    features = torch.eye(len(bench.query) + len(bench.gallery), 16)
    offset = len(bench.query)
    features[0] = features[offset + 0]  # 3@c1 is closest to the distractor; the rest tie at distance 1
    features[1] = features[offset + 3]  # 5@c4 is closest to 5@c1
    scores = evaluate_benchmark(bench, features)
    # 3@c1: same-camera 3@c1 removed, kept list = [0@c3, 3@c2, ...]: AP 1/2, miss at R1.
    # 5@c4: 5@c1 first, same-camera 5@c4 removed: AP 1. 9@c6 has no match and is skipped.
    assert scores["R1"] == pytest.approx(0.5) and scores["R5"] == pytest.approx(1.0)
    assert scores["mAP"] == pytest.approx(0.75) and scores["mINP"] == pytest.approx(0.75)


def test_market_missing_layout_names_the_tree_and_the_readme(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Market1501().load(tmp_path)
    message = str(info.value)
    assert "Market-1501-v15.09.15" in message and "bounding_box_test" in message and "data/README.md" in message


def test_market_empty_folder_is_a_value_error(tmp_path):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / "Market-1501-v15.09.15" / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        Market1501().load(tmp_path)


def test_market_path_option_and_custom_folders(market_dir):
    dataset = market_dir / "Market-1501-v15.09.15"
    (bench,) = Market1501(path=str(dataset), train_folder="query", query_folder="query",
                          gallery_folder="bounding_box_test").load(Path("/nonexistent"))
    assert len(bench.train) == 3 and len(bench.gallery) == 5


# ----------------------------------------------------------------------------- CUHK01
@pytest.fixture()
def cuhk01_root(tmp_path: Path) -> Path:
    campus = tmp_path / "CUHK01" / "campus"
    for pid in range(1, 11):
        for index in range(1, 5):
            tiny_png(campus / f"{pid:04d}{index:03d}.png", seed=pid * 10 + index)
    (campus / "Thumbs.db").write_bytes(b"stray")
    return tmp_path


def test_cuhk01_groups_cameras_and_split(cuhk01_root):
    (bench,) = CUHK01().load(cuhk01_root)
    assert (bench.name, bench.scenario, bench.protocol) == ("cuhk01", "cr", "market")
    assert len(bench.train) == 20 and len(bench.query) == 10 and len(bench.gallery) == 10
    train_ids = {s.pid for s in bench.train}
    test_ids = {s.pid for s in bench.query}
    assert len(train_ids) == 5 and train_ids.isdisjoint(test_ids) and test_ids == {s.pid for s in bench.gallery}
    expected_train = {i + 1 for i in np.random.default_rng(0).permutation(10)[:5].tolist()}
    assert train_ids == expected_train
    assert {(s.camid, s.group) for s in bench.query} == {(2, 1)}
    assert {(s.camid, s.group) for s in bench.gallery} == {(1, 0)}
    by_name = {Path(s.path).name: (s.camid, s.group) for s in bench.train}
    pid = min(train_ids)
    assert [by_name[f"{pid:04d}{k:03d}.png"] for k in range(1, 5)] == [(1, 0), (1, 0), (2, 1), (2, 1)]
    assert unmatched_query_count(bench) == 0


def test_cuhk01_split_is_deterministic_and_seeded(cuhk01_root):
    def train_ids(**kwargs):
        (bench,) = CUHK01(**kwargs).load(cuhk01_root)
        return {s.pid for s in bench.train}

    assert train_ids(split=0) == train_ids(split=0)
    assert train_ids(split=0) != train_ids(split=1)
    assert len(train_ids(train_ids=7)) == 7
    with pytest.raises(ValueError, match="no test ids"):
        train_ids(train_ids=10)


def test_cuhk01_clothing_scenario_keeps_every_image_in_group_zero(cuhk01_root):
    (bench,) = CUHK01(scenario="cc").load(cuhk01_root)
    assert bench.scenario == "cc" and {s.group for s in bench.train + bench.query + bench.gallery} == {0}


def test_cuhk01_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="campus") as info:
        CUHK01().load(tmp_path)
    assert "data/README.md" in str(info.value)
    (tmp_path / "CUHK01" / "campus").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        CUHK01().load(tmp_path)


# ----------------------------------------------------------------------------- MLR loaders
@pytest.fixture()
def mlr_root(market_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "mlr"
    build_mlr("market1501", market_dir, out, progress=False)
    return out


def test_mlr_groups_come_from_the_manifest(mlr_root, caplog):
    with caplog.at_level(logging.INFO):
        (bench,) = MLRMarket1501().load(mlr_root)
    # LR cameras 4-6 are group 1 wherever they appear; the HR queries from c1 were discarded.
    assert [(s.pid, s.camid, s.group) for s in bench.train] == [(2, 1, 0), (2, 5, 1), (7, 2, 0)]
    assert [(s.pid, s.camid, s.group) for s in bench.query] == [(5, 4, 1), (9, 6, 1)]
    assert [(s.pid, s.camid, s.group) for s in bench.gallery] == [(0, 3, 0), (3, 1, 0), (3, 2, 0), (5, 1, 0)]
    assert "1 of 2 queries have no match" in caplog.text


def test_mlr_missing_set_points_to_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        MLRCUHK03().load(tmp_path)
    message = str(info.value)
    assert "MLR-CUHK03" in message and "itkm prepare mlr --source cuhk03" in message and "data/README.md" in message


def test_mlr_missing_image_is_reported(mlr_root):
    next((mlr_root / "MLR-Market1501" / "query").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="1 images of the manifest are missing"):
        MLRMarket1501().load(mlr_root)


def test_mlr_wrong_recipe_or_header_is_a_value_error(mlr_root):
    dest = mlr_root / "MLR-Market1501"
    meta = (dest / "meta.json").read_text()
    (dest / "meta.json").write_text(meta.replace('"mlr-v1"', '"mlr-v0"'))
    with pytest.raises(ValueError, match="recipe"):
        MLRMarket1501().load(mlr_root)
    (dest / "meta.json").write_text(meta)
    lines = (dest / "manifest.csv").read_text().splitlines()
    (dest / "manifest.csv").write_text("\n".join(["folder,file,pid"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="columns"):
        MLRMarket1501().load(mlr_root)


def test_sources_are_config_sections(tmp_path):
    """Every source is a class_path entry of data.sources with typed, documented arguments."""
    from jsonargparse import ArgumentParser

    from itkm_lightning.data.sources import DatasetSource

    parser = ArgumentParser()
    parser.add_argument("--sources", type=list[DatasetSource])
    for class_path, init_args in (
        ("itkm_lightning.data.datasets.cuhk01.CUHK01", {"scenario": "cr", "split": 3}),
        ("itkm_lightning.data.datasets.market1501.Market1501", {"path": "x"}),
        ("itkm_lightning.data.datasets.mlr.MLRCUHK03", {}),
        ("itkm_lightning.data.datasets.mlr.MLRMarket1501", {}),
        ("itkm_lightning.data.datasets.mlr.MLRVIPeR", {}),
    ):
        cfg = parser.parse_object({"sources": [{"class_path": class_path, "init_args": init_args}]})
        (source,) = parser.instantiate_classes(cfg).sources
        assert type(source).__name__ == class_path.rsplit(".", 1)[1]
    with pytest.raises(SystemExit):
        parser.parse_object({"sources": [{"class_path": "itkm_lightning.data.datasets.cuhk01.CUHK01",
                                          "init_args": {"scenario": "xx"}}]})


def test_mlr_single_gallery_shot_adds_a_labelled_literature_benchmark(mlr_root):
    plain, literature = MLRMarket1501(single_gallery_shot=True).load(mlr_root)
    assert (plain.name, literature.name) == ("mlr_market1501", "mlr_market1501_sgs")
    assert plain.single_gallery_shot == 0 and literature.single_gallery_shot == 10
    assert literature.query == plain.query and literature.gallery == plain.gallery
    features = torch.nn.functional.normalize(torch.randn(len(plain.query) + len(plain.gallery), 4), dim=1)
    scores = evaluate_benchmark(literature, features)
    assert scores["protocol"] == "single_gallery_shot" and scores["trials"] == 10
    assert scores["mAP"] == evaluate_benchmark(plain, features)["mAP"]  # mAP: the full gallery
    assert 0.0 <= scores["R1_std"] <= 0.5
    assert len(MLRMarket1501().load(mlr_root)) == 1  # off by default
