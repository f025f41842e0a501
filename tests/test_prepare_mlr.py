"""`itkm prepare mlr` (recipe mlr-v1, docs/protocols.md section 6) on fake Market-1501, CUHK03 and VIPeR trees."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itkm_lightning.command import main as itkm_main
from itkm_lightning.data.datasets import MLRCUHK03, MLRMarket1501, MLRVIPeR, mlr_format
from itkm_lightning.prepare import build_mlr


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A deterministic RGB image of ``size`` = (W, H)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_images(folder: Path, names_and_sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (name, size) in enumerate(names_and_sizes.items()):
        noise_image(seed + offset, size).save(folder / name)


def read_manifest(dest: Path) -> list[dict[str, str]]:
    with (dest / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def file_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- fake Market-1501
MARKET_TRAIN = {  # LR cameras 4-6 are down-sampled, 1-3 kept; junk and stray files are ignored
    "0002_c1s1_000451_03.jpg": (64, 128),
    "0002_c4s1_000476_01.jpg": (64, 128),
    "0002_c4s1_000501_02.jpg": (30, 50),
    "0007_c6s2_010101_00.jpg": (3, 5),
    "0007_c2s2_010102_00.jpg": (40, 80),
    "-1_c5s1_000001_00.jpg": (64, 128),
}
MARKET_QUERY = {
    "0003_c1s1_001051_00.jpg": (64, 128),  # HR-camera query: discarded
    "0003_c4s1_001076_00.jpg": (64, 128),
    "0005_c5s1_002001_00.jpg": (50, 100),
    "0009_c6s1_003001_00.jpg": (64, 128),  # no HR image of 9 in the gallery
}
MARKET_GALLERY = {
    "0003_c2s1_001101_00.jpg": (64, 128),
    "0003_c2s1_001126_01.jpg": (64, 128),
    "0003_c5s1_001151_00.jpg": (64, 128),  # LR-camera gallery image: discarded
    "0005_c1s1_002051_00.jpg": (64, 128),
    "0000_c3s1_000000_00.jpg": (64, 128),  # distractor: kept
    "-1_c1s1_000000_00.jpg": (64, 128),  # junk: dropped
}


@pytest.fixture()
def market_root(tmp_path: Path) -> Path:
    # Digits and "cam" in the root name must not confuse the parser.
    root = tmp_path / "cam9_1501" / "Market-1501-v15.09.15"
    write_images(root / "bounding_box_train", MARKET_TRAIN, seed=0)
    write_images(root / "query", MARKET_QUERY, seed=10)
    write_images(root / "bounding_box_test", MARKET_GALLERY, seed=20)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    return root


def expected_market_rates() -> dict[str, int]:
    low_res_sorted = [  # LR-camera train images and LR queries, sorted by path relative to the root
        "bounding_box_train/0002_c4s1_000476_01.jpg",
        "bounding_box_train/0002_c4s1_000501_02.jpg",
        "bounding_box_train/0007_c6s2_010101_00.jpg",
        "query/0003_c4s1_001076_00.jpg",
        "query/0005_c5s1_002001_00.jpg",
        "query/0009_c6s1_003001_00.jpg",
    ]
    rates = np.random.default_rng(0).integers(2, 5, size=len(low_res_sorted))
    return dict(zip(low_res_sorted, rates.tolist()))


def test_market_build_follows_the_recipe(market_root, tmp_path):
    out = tmp_path / "out"
    report = build_mlr("market1501", market_root, out, progress=False)
    dest = out / "MLR-Market1501"
    assert report.status == "built" and report.dest == dest

    rows = read_manifest(dest)
    assert [(r["folder"], r["file"]) for r in rows] == [
        ("bounding_box_train", "0002_c1_0001.png"),
        ("bounding_box_train", "0002_c4_0001.png"),
        ("bounding_box_train", "0002_c4_0002.png"),
        ("bounding_box_train", "0007_c2_0001.png"),
        ("bounding_box_train", "0007_c6_0001.png"),
        ("query", "0003_c4_0001.png"),
        ("query", "0005_c5_0001.png"),
        ("query", "0009_c6_0001.png"),
        ("bounding_box_test", "0000_c3_0001.png"),
        ("bounding_box_test", "0003_c2_0001.png"),
        ("bounding_box_test", "0003_c2_0002.png"),
        ("bounding_box_test", "0005_c1_0001.png"),
    ]
    rates = expected_market_rates()
    assert set(rates.values()) <= {2, 3, 4}
    for row in rows:
        rate = rates.get(row["source_path"], 1)
        src_w, src_h = int(row["src_w"]), int(row["src_h"])
        assert int(row["rate"]) == rate
        assert int(row["group"]) == (1 if rate > 1 else 0)
        assert (int(row["out_w"]), int(row["out_h"])) == (max(1, src_w // rate), max(1, src_h // rate))
        with Image.open(dest / row["folder"] / row["file"]) as image:
            assert image.format == "PNG" and image.size == (int(row["out_w"]), int(row["out_h"]))
    tiny = next(r for r in rows if r["source_path"].endswith("0007_c6s2_010101_00.jpg"))
    assert (tiny["rate"], tiny["out_w"], tiny["out_h"]) == ("3", "1", "1")  # 3x5 // 3 = 1x1
    # An LR image is the bicubic reduction of the decoded source, pixel for pixel.
    row = next(r for r in rows if r["source_path"] == "query/0005_c5s1_002001_00.jpg")
    with Image.open(market_root / row["source_path"]) as source:
        expected = source.convert("RGB").resize((int(row["out_w"]), int(row["out_h"])), Image.Resampling.BICUBIC)
    with Image.open(dest / "query" / row["file"]) as written:
        assert np.array_equal(np.asarray(written), np.asarray(expected))

    meta = json.loads((dest / "meta.json").read_text())
    assert meta["recipe"] == "mlr-v1" and meta["seed"] == 0 and meta["numpy_version"] == np.__version__
    assert meta["high_res_cameras"] == [1, 2, 3] and meta["low_res_cameras"] == [4, 5, 6]
    assert meta["counts"]["query"] == {"ids": 3, "images": 3, "high_res_images": 0, "low_res_images": 3}
    assert meta["counts"]["bounding_box_test"]["images"] == 4
    assert meta["queries_without_hr_match"] == 1


def test_tiny_images_never_shrink_below_one_pixel():
    assert mlr_format.reduced_size(3, 5, 4) == (1, 1)
    assert mlr_format.reduced_size(64, 128, 3) == (21, 42)


def test_market_output_loads_as_mlr_benchmark(market_root, tmp_path):
    build_mlr("market1501", market_root, tmp_path, progress=False)
    (bench,) = MLRMarket1501().load(tmp_path)
    assert bench.name == "mlr_market1501" and bench.protocol == "market" and bench.scenario == "cr"
    assert len(bench.train) == 5 and len(bench.query) == 3 and len(bench.gallery) == 4
    assert {s.group for s in bench.query} == {1} and {s.group for s in bench.gallery} == {0}
    assert sorted((s.pid, s.camid, s.group) for s in bench.train) == [
        (2, 1, 0), (2, 4, 1), (2, 4, 1), (7, 2, 0), (7, 6, 1)]
    assert 0 in {s.pid for s in bench.gallery} and 0 not in {s.pid for s in bench.query}
    assert bench.query[0].identity == "mlr_market1501:3"


def test_second_run_writes_nothing(market_root, tmp_path):
    build_mlr("market1501", market_root, tmp_path, progress=False)
    dest = tmp_path / "MLR-Market1501"
    before = file_times(dest)
    report = build_mlr("market1501", market_root, tmp_path, progress=False)
    assert report.status == "up to date" and report.written == 0
    assert file_times(dest) == before


def test_missing_and_corrupted_outputs_are_rebuilt(market_root, tmp_path):
    build_mlr("market1501", market_root, tmp_path, progress=False)
    dest = tmp_path / "MLR-Market1501"
    deleted, corrupted = dest / "query" / "0005_c5_0001.png", dest / "bounding_box_test" / "0003_c2_0002.png"
    originals = {path: sha1(path) for path in (deleted, corrupted)}
    untouched = dest / "bounding_box_train" / "0002_c1_0001.png"
    untouched_time = untouched.stat().st_mtime_ns
    deleted.unlink()
    data = bytearray(corrupted.read_bytes())
    data[-20] ^= 0xFF  # same size, same header: only a hash notices
    corrupted.write_bytes(bytes(data))

    report = build_mlr("market1501", market_root, tmp_path, progress=False)
    assert report.status == "repaired" and report.written == 2
    assert {path: sha1(path) for path in originals} == originals
    assert untouched.stat().st_mtime_ns == untouched_time
    assert build_mlr("market1501", market_root, tmp_path, progress=False).status == "up to date"


def test_killed_build_never_looks_finished_and_resumes(market_root, tmp_path, monkeypatch):
    real_write = mlr_format._write_image
    calls = []

    def write_then_die(plan, item, dest):
        if len(calls) == 5:
            (dest / item.row.folder / f".{item.row.file}.tmp").write_bytes(b"half a png")
            raise KeyboardInterrupt
        calls.append(item)
        real_write(plan, item, dest)

    monkeypatch.setattr(mlr_format, "_write_image", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_mlr("market1501", market_root, tmp_path, progress=False)
    dest = tmp_path / "MLR-Market1501"
    assert not (dest / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        MLRMarket1501().load(tmp_path)

    monkeypatch.setattr(mlr_format, "_write_image", real_write)
    report = build_mlr("market1501", market_root, tmp_path, progress=False)
    assert report.status == "resumed" and report.written == 12 - 5
    assert not list(dest.rglob("*.tmp"))
    (bench,) = MLRMarket1501().load(tmp_path)
    assert len(bench.train) + len(bench.query) + len(bench.gallery) == 12


def test_other_settings_are_refused_not_overwritten(tmp_path, viper_root):
    build_mlr("viper", viper_root, tmp_path, split=0, progress=False)
    before = (tmp_path / "MLR-VIPeR" / "manifest.csv").read_text()
    with pytest.raises(ValueError, match="other settings"):
        build_mlr("viper", viper_root, tmp_path, split=1, progress=False)
    assert (tmp_path / "MLR-VIPeR" / "manifest.csv").read_text() == before


def test_options_that_do_not_apply_are_errors(market_root, tmp_path):
    with pytest.raises(ValueError, match="--boxes"):
        build_mlr("market1501", market_root, tmp_path, boxes="labeled", progress=False)
    with pytest.raises(ValueError, match="--split"):
        build_mlr("market1501", market_root, tmp_path, split=1, progress=False)
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        build_mlr("market1501", tmp_path, tmp_path / "out", progress=False)


def test_command_line_prints_counts_and_reports_errors_in_one_line(market_root, tmp_path, capsys):
    itkm_main(["prepare", "mlr", "--source", "market1501", "--root", str(market_root), "--out", str(tmp_path),
               "--no-progress"])
    out = capsys.readouterr().out
    assert "MLR-Market1501: built (12 images written)" in out and "queries without an HR match: 1" in out
    with pytest.raises(SystemExit) as exit_info:
        itkm_main(["prepare", "mlr", "--source", "market1501", "--root", str(tmp_path / "nope"), "--out",
                   str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("itkm prepare: error:") and "does not exist" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- fake CUHK03
CUHK03_SIZES = {  # (pair, person) -> {column: (W, H)}; person (1, 3) has first-camera images only
    (1, 1): {1: (20, 40), 2: (22, 40), 6: (24, 48), 7: (18, 36)},
    (1, 2): {1: (20, 40), 6: (26, 50), 10: (21, 41)},
    (1, 3): {3: (20, 40)},
    (2, 1): {1: (30, 60), 6: (28, 56)},
    (2, 2): {2: (20, 40), 8: (19, 39)},
}
CUHK03_TEST_SPLITS = [{(1, 2), (2, 1)}, {(1, 1), (2, 2)}]


def cuhk03_pixels(pair: int, person: int, column: int) -> Image.Image:
    return noise_image(100 * pair + 10 * person + column, CUHK03_SIZES[pair, person][column])


def extracted_name(pair: int, person: int, column: int) -> str:
    return f"{pair}_{person:03d}_{1 if column <= 5 else 2}_{column:02d}.png"


@pytest.fixture()
def cuhk03_extracted(tmp_path: Path) -> Path:
    """torchreid's extracted form: images_labeled/ and splits_classic_labeled.json."""
    root = tmp_path / "cuhk03_extracted"
    folder = root / "images_labeled"
    folder.mkdir(parents=True)
    for (pair, person), columns in CUHK03_SIZES.items():
        for column in columns:
            cuhk03_pixels(pair, person, column).save(folder / extracted_name(pair, person, column))
    splits = []
    for test in CUHK03_TEST_SPLITS:
        query = [[str(folder / extracted_name(p, i, c)), 0, 0] for (p, i) in sorted(test) for c in CUHK03_SIZES[p, i]]
        splits.append({"train": [], "query": query, "gallery": query})
    (root / "splits_classic_labeled.json").write_text(json.dumps(splits))
    return root


@pytest.fixture()
def cuhk03_mat(tmp_path: Path) -> Path:
    """The release form: a MATLAB v7.3 (HDF5) file laid out as cuhk-03.mat (arrays stored transposed)."""
    h5py = pytest.importorskip("h5py", reason="h5py is needed to write the fake cuhk-03.mat")
    root = tmp_path / "cuhk03_release_copy"
    (root / "cuhk03_release").mkdir(parents=True)
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as mat:
        refs = mat.create_group("#refs#")
        pairs = sorted({pair for pair, _ in CUHK03_SIZES})
        labeled = mat.create_dataset("labeled", (1, len(pairs)), dtype=h5py.ref_dtype)
        for pair in pairs:
            persons = sorted(person for p, person in CUHK03_SIZES if p == pair)
            table = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
            for column in range(1, 11):
                for person in persons:
                    name = f"img_{pair}_{person}_{column}"
                    if column in CUHK03_SIZES[pair, person]:
                        pixels = np.asarray(cuhk03_pixels(pair, person, column))  # H x W x 3
                        cell = refs.create_dataset(name, data=pixels.T)  # MATLAB order: 3 x W x H
                    else:
                        cell = refs.create_dataset(name, data=np.zeros(2, dtype=np.uint64))  # empty []
                    table[column - 1, person - 1] = cell.ref
            labeled[0, pair - 1] = refs.create_dataset(f"pair_{pair}", data=table).ref
        testsets = mat.create_dataset("testsets", (1, len(CUHK03_TEST_SPLITS)), dtype=h5py.ref_dtype)
        for index, test in enumerate(CUHK03_TEST_SPLITS):
            table = np.asarray(sorted(test), dtype=np.float64).T  # stored 2 x 100 in the release
            testsets[0, index] = refs.create_dataset(f"split_{index}", data=table).ref
    return root


def test_cuhk03_extracted_build_follows_the_recipe(cuhk03_extracted, tmp_path):
    report = build_mlr("cuhk03", cuhk03_extracted, tmp_path, progress=False)
    rows = read_manifest(report.dest)
    assert report.dest.name == "MLR-CUHK03"
    # ids renumbered 1-5 in (pair, person) order; test ids of split 0 are (1, 2) -> 2 and (2, 1) -> 4
    assert [(r["folder"], r["file"], r["source_path"]) for r in rows] == [
        ("bounding_box_train", "0001_c1_0001.png", "images_labeled/1_001_1_01.png"),
        ("bounding_box_train", "0001_c1_0002.png", "images_labeled/1_001_1_02.png"),
        ("bounding_box_train", "0001_c2_0001.png", "images_labeled/1_001_2_06.png"),
        ("bounding_box_train", "0001_c2_0002.png", "images_labeled/1_001_2_07.png"),
        ("bounding_box_train", "0003_c1_0001.png", "images_labeled/1_003_1_03.png"),
        ("bounding_box_train", "0005_c1_0001.png", "images_labeled/2_002_1_02.png"),
        ("bounding_box_train", "0005_c2_0001.png", "images_labeled/2_002_2_08.png"),
        ("query", "0002_c2_0001.png", "images_labeled/1_002_2_06.png"),
        ("query", "0002_c2_0002.png", "images_labeled/1_002_2_10.png"),
        ("query", "0004_c2_0001.png", "images_labeled/2_001_2_06.png"),
        ("bounding_box_test", "0002_c1_0001.png", "images_labeled/1_002_1_01.png"),
        ("bounding_box_test", "0004_c1_0001.png", "images_labeled/2_001_1_01.png"),
    ]
    low_res_sorted = sorted(r["source_path"] for r in rows if r["source_path"].split("_")[-2] == "2")
    rates = dict(zip(low_res_sorted, np.random.default_rng(0).integers(2, 5, size=len(low_res_sorted)).tolist()))
    for row in rows:
        assert int(row["rate"]) == rates.get(row["source_path"], 1)
        assert int(row["out_w"]) == max(1, int(row["src_w"]) // int(row["rate"]))
        assert int(row["out_h"]) == max(1, int(row["src_h"]) // int(row["rate"]))
    meta = json.loads((report.dest / "meta.json").read_text())
    assert (meta["boxes"], meta["split"], meta["source_layout"], meta["test_ids"]) == ("labeled", 0, "images", 2)

    (bench,) = MLRCUHK03().load(tmp_path)
    assert bench.name == "mlr_cuhk03"
    assert [(s.pid, s.camid, s.group) for s in bench.query] == [(2, 2, 1), (2, 2, 1), (4, 2, 1)]
    assert [(s.pid, s.camid, s.group) for s in bench.gallery] == [(2, 1, 0), (4, 1, 0)]


def test_cuhk03_split_selects_the_classic_test_ids(cuhk03_extracted, tmp_path):
    report = build_mlr("cuhk03", cuhk03_extracted, tmp_path, split=1, progress=False)
    rows = read_manifest(report.dest)
    assert sorted({int(r["pid"]) for r in rows if r["folder"] != "bounding_box_train"}) == [1, 5]
    with pytest.raises(ValueError, match="2 classic splits"):
        build_mlr("cuhk03", cuhk03_extracted, tmp_path / "other", split=7, progress=False)


def test_cuhk03_mat_and_extracted_forms_build_the_same_set(cuhk03_extracted, cuhk03_mat, tmp_path):
    from_images = build_mlr("cuhk03", cuhk03_extracted, tmp_path / "a", progress=False).dest
    from_mat = build_mlr("cuhk03", cuhk03_mat, tmp_path / "b", progress=False).dest
    assert (from_mat / "manifest.csv").read_text() == (from_images / "manifest.csv").read_text()
    assert (from_mat / "checksums.sha1").read_text() == (from_images / "checksums.sha1").read_text()
    assert json.loads((from_mat / "meta.json").read_text())["source_layout"] == "mat"
    # The .mat form is idempotent too.
    assert build_mlr("cuhk03", cuhk03_mat, tmp_path / "b", progress=False).status == "up to date"


def test_cuhk03_without_images_or_splits_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cuhk-03.mat") as info:
        build_mlr("cuhk03", tmp_path, tmp_path / "out", progress=False)
    assert "data/README.md" in str(info.value)
    (tmp_path / "images_labeled").mkdir()
    noise_image(0, (8, 16)).save(tmp_path / "images_labeled" / "1_001_1_01.png")
    with pytest.raises(FileNotFoundError, match="splits_classic_labeled.json"):
        build_mlr("cuhk03", tmp_path, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- fake VIPeR
@pytest.fixture()
def viper_root(tmp_path: Path) -> Path:
    root = tmp_path / "VIPeR"
    prefixes = ["000", "003", "010", "011", "020", "027"]
    write_images(root / "cam_a", {f"{p}_45.bmp": (12, 32) for p in prefixes}, seed=0)
    write_images(root / "cam_b", {f"{p}_90.bmp": (12, 32) for p in prefixes}, seed=50)
    return root


def test_viper_build_splits_ids_by_the_seeded_permutation(viper_root, tmp_path):
    report = build_mlr("viper", viper_root, tmp_path, progress=False)
    rows = read_manifest(report.dest)
    train_ids = set(np.random.default_rng(0).permutation(np.arange(1, 7))[:3].tolist())
    assert {int(r["pid"]) for r in rows if r["folder"] == "bounding_box_train"} == train_ids
    assert {int(r["pid"]) for r in rows if r["folder"] == "query"} == set(range(1, 7)) - train_ids
    assert {(r["cam"], r["group"]) for r in rows if r["folder"] == "query"} == {("2", "1")}
    assert {(r["cam"], r["rate"]) for r in rows if r["folder"] == "bounding_box_test"} == {("1", "1")}
    # ids follow the sorted cam_a names: 027 is the 6th
    assert {r["source_path"] for r in rows if r["pid"] == "6"} == {"cam_a/027_45.bmp", "cam_b/027_90.bmp"}
    (bench,) = MLRVIPeR().load(tmp_path)
    assert bench.name == "mlr_viper" and len(bench.query) == len(bench.gallery) == 3


def test_viper_refuses_when_the_two_id_rules_disagree(viper_root, tmp_path):
    (viper_root / "cam_b" / "027_90.bmp").rename(viper_root / "cam_b" / "028_90.bmp")
    with pytest.raises(ValueError, match="disagree"):
        build_mlr("viper", viper_root, tmp_path, progress=False)
