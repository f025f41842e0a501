"""Training on your own unlabelled crops: the ImageFolder source, `fit` without labels (issue 17, item 3)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from itkm_lightning.command import main
from itkm_lightning.data.datasets import ImageFolder

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "conf" / "smoke.yaml")


def synthetic_images(synthetic_root: Path, scenario: str, split: str) -> list[Path]:
    return sorted((synthetic_root / "synthetic" / "tiny" / scenario / split).glob("*.png"))


def copy_tree(files: dict[str, list[Path]], root: Path) -> Path:
    """Our own generated synthetic images copied into ``root/<sub folder>/`` (a user's folder of crops)."""
    for sub, paths in files.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, root / sub / path.name)
    return root


def test_scenario_and_group_from_sub_folder_names(synthetic_root, tmp_path):
    vi = synthetic_images(synthetic_root, "vi", "train")
    cr = synthetic_images(synthetic_root, "cr", "train")
    root = copy_tree({"vi/visible": vi[:6], "vi/1": vi[6:10], "cr/low-res/day2": cr[:5]}, tmp_path / "crops")
    benchmarks = ImageFolder(path=str(root)).load(tmp_path)
    assert {b.name: b.scenario for b in benchmarks} == {"own_vi": "vi", "own_cr": "cr"}
    vi_bench = next(b for b in benchmarks if b.scenario == "vi")
    assert sorted(s.group for s in vi_bench.train) == [0] * 6 + [1] * 4
    cr_bench = next(b for b in benchmarks if b.scenario == "cr")
    assert {s.group for s in cr_bench.train} == {1} and len(cr_bench.train) == 5  # images at any depth below
    for bench in benchmarks:  # nothing is known about the people
        assert not bench.query and not bench.gallery
        assert {(s.pid, s.camid) for s in bench.train} == {(-1, -1)}


def test_scenario_and_group_from_the_config(synthetic_root, tmp_path):
    root = copy_tree({"cam7/a": synthetic_images(synthetic_root, "cr", "train")[:4]}, tmp_path / "crops")
    (bench,) = ImageFolder(path="crops", scenario="cr", group=1, name="site").load(tmp_path)  # relative to data.root
    assert bench.name == "site" and {(s.scenario, s.group) for s in bench.train} == {("cr", 1)}
    assert len(bench.train) == 4 and all(Path(s.path).is_relative_to(root) for s in bench.train)


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda r: (r / "x").mkdir(parents=True), {}, "sub-folders must be named vi, cr or cc; found ['x']"),
    (lambda r: r.mkdir(), {"scenario": "cr"}, "no images"),
    (lambda r: None, {"scenario": "cr"}, "expected"),
    (lambda r: r.mkdir(), {"scenario": "ir"}, "scenario must be one of"),
])
def test_bad_folders_say_what_is_expected(make, kwargs, message, tmp_path):
    root = tmp_path / "crops"
    make(root)
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[").replace("]", r"\]")):
        ImageFolder(path=str(root), **kwargs).load(tmp_path)


def write_labels(path: Path, rows: list[tuple[str, int, int, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pid", "camid", "split"])
        writer.writerows(rows)
    return path


def test_a_labels_file_names_the_images_to_score_and_keeps_them_out_of_training(synthetic_root, tmp_path):
    query = synthetic_images(synthetic_root, "cr", "query")
    gallery = synthetic_images(synthetic_root, "cr", "gallery")
    train = synthetic_images(synthetic_root, "cr", "train")
    root = copy_tree({"q": query, "g": gallery, "t": train}, tmp_path / "crops")

    def pid_cam(p: Path) -> tuple[int, int]:  # synthetic names: <pid>_c<cam>_<n>.png
        pid, cam, _ = p.stem.split("_")
        return int(pid), int(cam[1:])

    rows = [(f"q/{p.name}", *pid_cam(p), "query") for p in query] + [(f"g/{p.name}", *pid_cam(p), "gallery")
                                                                     for p in gallery]
    rows += [(f"t/{p.name}", *pid_cam(p), "train") for p in train[:3]]  # monitoring only
    write_labels(root / "labels.csv", rows)
    (bench,) = ImageFolder(path=str(root), scenario="cr", labels="labels.csv").load(tmp_path)
    assert len(bench.query) == len(query) and len(bench.gallery) == len(gallery) and len(bench.train) == len(train)
    assert all("/t/" in s.path for s in bench.train)
    assert [s.pid for s in bench.query] == [pid_cam(p)[0] for p in query]
    assert sum(s.pid >= 0 for s in bench.train) == 3

    write_labels(root / "bad.csv", [("q/nope.png", 1, 1, "query")])
    with pytest.raises(ValueError, match="1 labelled images are not in"):
        ImageFolder(path=str(root), scenario="cr", labels="bad.csv").load(tmp_path)
    write_labels(root / "half.csv", rows[:2])
    with pytest.raises(ValueError, match="marks query images but no gallery images"):
        ImageFolder(path=str(root), scenario="cr", labels="half.csv").load(tmp_path)


def own_config(tmp_path: Path, root: Path, path: str, labels: str | None = None) -> Path:
    config = tmp_path / "own.yaml"
    labels_arg = "" if labels is None else f", labels: {json.dumps(labels)}"
    config.write_text(f"data:\n  root: {json.dumps(str(root))}\n  sources:\n"
                      "    - class_path: itkm_lightning.data.datasets.ImageFolder\n"
                      f"      init_args: {{path: {json.dumps(path)}, scenario: cr{labels_arg}}}\n")
    return config


@pytest.mark.slow
def test_fit_without_labels_reports_pseudo_labels_and_embed_works(synthetic_root, tmp_path):
    crops = copy_tree({"crops": synthetic_images(synthetic_root, "cr", "train")}, tmp_path)
    config = own_config(tmp_path, tmp_path, "crops")
    run_dir = tmp_path / "run"
    main(["fit", "--config", SMOKE, "--config", str(config), "--run_dir", str(run_dir), "--stage", "stage1"])
    results = json.loads((run_dir / "results.json").read_text())
    assert "stage1" not in results and "untrained" not in results  # no mAP without labels
    stats = results["stage1_pseudo_labels"]["blocks"]["cr-g0"]
    assert set(stats) == {"num_clusters", "num_outliers", "outlier_fraction", "mean_cluster_size", "max_cluster_size"}
    assert stats["num_clusters"] >= 2  # a trainable clustering (it would have stopped otherwise)
    main(["embed", str(crops / "crops"), "--model", str(run_dir), "--scenario", "cr", "--out", str(tmp_path / "emb")])
    main(["search", str(tmp_path / "emb"), "--gallery", str(tmp_path / "emb"), "--topk", "2", "--format", "json"])
    main(["embed", "--config", str(config), "--split", "train", "--model", str(run_dir), "--out", str(tmp_path / "e2")])
    with pytest.raises(SystemExit) as exit_info:  # nothing labelled: no test split
        main(["embed", "--config", str(config), "--model", str(run_dir), "--out", str(tmp_path / "e3")])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------ real images, labels withheld
@pytest.mark.slow
def test_fit_on_cuhk01_crops_with_labels_withheld(tmp_path):
    from test_realdata import dataset_or_skip

    cuhk01 = dataset_or_skip("cuhk01_manideep2510")
    run_dir = tmp_path / "run"
    main(["fit", "--config", SMOKE, "--config", str(own_config(tmp_path, cuhk01, "CUHK01/campus")),
          "--run_dir", str(run_dir), "--stage", "stage1"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stage1_pseudo_labels"]["blocks"]["cr-g0"]["num_clusters"] >= 2
    (log,) = run_dir.glob("stage1/**/metrics.csv")
    columns = log.read_text().splitlines()[0].split(",")
    assert "pseudo/cr-g0/num_clusters" in columns and "pseudo/cr-g0/mean_cluster_size" in columns
    assert not any(c.endswith(("/ari", "/nmi")) for c in columns)  # no identities were read, none scored
    # The labels come back for evaluation only: people 1-50, camera A queries, camera B gallery.
    labels = []
    with (cuhk01 / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["pid"]) <= 50:
                labels.append((row["path"].removeprefix("CUHK01/campus/"), int(row["pid"]), int(row["camid"]),
                               "query" if row["camera_view"] == "A" else "gallery"))
    labels_file = write_labels(tmp_path / "cuhk01_labels.csv", labels)
    main(["evaluate", "--model", str(run_dir), "--config", str(own_config(tmp_path, cuhk01, "CUHK01/campus",
                                                                       str(labels_file))),
          "--out", str(tmp_path / "eval")])
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["evaluated"]["own"]
    assert 0.0 < scores["mAP"] <= 1.0 and scores["R10"] >= scores["R1"]
