"""Clothing-change loaders (PRCC, LTCC, VC-Clothes, Celeb-reID) on fake trees of their official layouts."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itkm_lightning.data.clothes import ClothesMasker
from itkm_lightning.data.datasets import LTCC, PRCC, CelebReID, VCClothes
from itkm_lightning.evaluation import cosine_distance, evaluate_rank, summarize
from itkm_lightning.evaluation.benchmark import evaluate_benchmark

torch.set_num_threads(1)


def make_image(path: Path, size: tuple[int, int] = (8, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)


def relative(samples, dataset: Path) -> list[str]:
    return [Path(s.path).relative_to(dataset).as_posix() for s in samples]


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """A data root whose absolute path holds digits and 'cam' (reference loaders slice such paths)."""
    root = tmp_path / "cam2_007" / "data_c3_2024"
    root.mkdir(parents=True)
    return root


# ============================================================================= PRCC
PRCC_TEST = {"A": {3: 3, 12: 2}, "B": {3: 1, 12: 2}, "C": {3: 2, 12: 1}}


def make_prcc(root: Path) -> Path:
    dataset = root / "prcc"
    for name in ("001/A_cropped_rgb001.jpg", "001/B_cropped_rgb010.jpg", "001/C_cropped_rgb100.jpg",
                 "002/A_cropped_rgb003.jpg", "002/C_cropped_rgb004.jpg"):
        make_image(dataset / "rgb" / "train" / name)
    make_image(dataset / "rgb" / "val" / "001" / "A_cropped_rgb999.jpg")  # held out
    (dataset / "rgb" / "train" / "001" / "Thumbs.db").write_bytes(b"\0")  # stray: ignored
    for letter, counts in PRCC_TEST.items():
        for pid, count in counts.items():
            for index in range(count):
                make_image(dataset / "rgb" / "test" / letter / f"{pid:03d}" / f"cropped_rgb{index:03d}.jpg")
    return dataset


def test_prcc_train_test_labels_and_masks(data_root):
    dataset = make_prcc(data_root)
    mask = dataset / "masks" / "rgb" / "train" / "001" / "B_cropped_rgb010.png"
    mask.parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 8), 5, dtype=np.uint8)).save(mask)

    splits = PRCC().load(data_root)
    assert [(s.name, s.protocol, s.scenario, s.trials) for s in splits] == \
        [("prcc_sc", "market", "cc", None), ("prcc_cc", "market", "cc", None)]
    sc, cc = splits
    assert cc.train == []
    assert relative(sc.train, dataset)[0] == "rgb/train/001/A_cropped_rgb001.jpg"
    assert [(s.pid, s.camid, s.clothes, s.group) for s in sc.train] == [
        (1, 1, "1", 0), (1, 2, "1", 0), (1, 3, "1C", 0), (2, 1, "2", 0), (2, 3, "2C", 0)]
    assert [s.mask_path for s in sc.train] == [None, str(mask), None, None, None]
    assert {s.source for s in sc.train} == {"prcc"}

    assert [s.pid for s in sc.gallery] == [3, 3, 3, 12, 12]
    assert {(s.camid, s.clothes) for s in sc.gallery if s.pid == 3} == {(1, "3")}
    assert [s.path for s in cc.gallery] == [s.path for s in sc.gallery]
    assert [(s.pid, s.camid, s.clothes) for s in sc.query] == [(3, 2, "3"), (12, 2, "12"), (12, 2, "12")]
    assert [(s.pid, s.camid, s.clothes) for s in cc.query] == [(3, 3, "3C"), (3, 3, "3C"), (12, 3, "12C")]
    assert all(s.group == 0 for s in sc.query + sc.gallery + cc.query)


def test_prcc_single_shot_draws_seeded_per_trial(data_root):
    dataset = make_prcc(data_root)
    sc, cc = PRCC(single_shot=True, trials=5).load(data_root)
    assert sc.trials == cc.trials and len(sc.trials) == 5
    for trial, (query_indices, gallery_indices) in enumerate(sc.trials):
        # independent statement of the draw: random.seed(t), ids ascending, choice over sorted files
        random.seed(trial)
        gallery_a = dataset / "rgb" / "test" / "A"
        expected = [str(gallery_a / pid / random.choice(sorted(os.listdir(gallery_a / pid))))
                    for pid in sorted(os.listdir(gallery_a), key=int)]
        assert query_indices is None
        assert [sc.gallery[i].path for i in gallery_indices] == expected
    assert len({s.path for s in sc.gallery}) == len(sc.gallery)


def test_prcc_bad_input(data_root):
    with pytest.raises(FileNotFoundError, match=r"PRCC(.|\n)*rgb/test/A(.|\n)*data/README.md"):
        PRCC().load(data_root)
    dataset = make_prcc(data_root)
    for image in (dataset / "rgb" / "test" / "C").rglob("*.jpg"):
        image.unlink()
    with pytest.raises(ValueError, match=r"no images(.|\n)*test/C"):
        PRCC().load(data_root)


# ============================================================================= LTCC
LTCC_FILES = {
    "train": ["001_1_c1_000010.png", "001_2_c3_000011.png", "002_1_c2_000001.png"],
    "query": ["010_1_c1_000100.png", "011_1_c5_000001.png"],
    "test": ["010_1_c1_000101.png", "010_1_c2_000102.png", "010_2_c4_000103.png", "011_1_c6_000003.png",
             "011_1_c5_000002.png", "012_3_c2_000004.png"],
}


def make_ltcc(root: Path) -> Path:
    dataset = root / "LTCC_ReID"
    for folder, names in LTCC_FILES.items():
        for name in names:
            make_image(dataset / folder / name)
    (dataset / "info").mkdir()
    (dataset / "info" / "cloth-change_id_test.txt").write_text("10\n")
    (dataset / "test" / "desktop.ini").write_text("stray")
    return dataset


def test_ltcc_labels_and_settings(data_root):
    dataset = make_ltcc(data_root)
    splits = LTCC().load(data_root)
    assert [(s.name, s.protocol) for s in splits] == [("ltcc_general", "market"), ("ltcc_cc", "cloth_changing")]
    general, cloth_changing = splits
    assert cloth_changing.train == []
    assert [(s.pid, s.camid, s.clothes) for s in general.train] == [(1, 1, "1_1"), (1, 3, "1_2"), (2, 2, "2_1")]
    assert relative(general.query, dataset) == ["query/010_1_c1_000100.png", "query/011_1_c5_000001.png"]
    assert relative(general.gallery, dataset) == ["test/" + n for n in sorted(LTCC_FILES["test"])]
    assert [s.path for s in cloth_changing.gallery] == [s.path for s in general.gallery]
    assert all(s.mask_path is None and s.group == 0 for s in general.train)

    with_sc = LTCC(same_clothes=True).load(data_root)
    assert [(s.name, s.protocol) for s in with_sc][-1] == ("ltcc_sc", "same_clothes")


def test_ltcc_cloth_changing_scoring_keeps_only_other_clothes_and_cameras(data_root):
    make_ltcc(data_root)
    general, cloth_changing = LTCC().load(data_root)
    nq = len(general.query)
    # identity features: every same-pid image is at distance 0
    pids = sorted({s.pid for s in general.query + general.gallery})
    features = torch.zeros(nq + len(general.gallery), len(pids))
    for row, s in enumerate(general.query + general.gallery):
        features[row, pids.index(s.pid)] = 1.0
    assert evaluate_benchmark(general, features)["mAP"] == 1.0
    # query 010 (clothes 1, cam 1): the only cloth-changing positive is 010_2_c4; query 011 keeps none
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=tuple(features.shape)).astype(np.float32))
    got = evaluate_benchmark(cloth_changing, features)
    g = cloth_changing.gallery
    q = cloth_changing.query
    result = evaluate_rank(cosine_distance(features[:nq], features[nq:]), [s.pid for s in q], [s.pid for s in g],
                           [s.camid for s in q], [s.camid for s in g], protocol="cloth_changing",
                           q_clothes=[s.clothes for s in q], g_clothes=[s.clothes for s in g])
    assert result["num_valid"] == 1
    assert got == pytest.approx(summarize(result))


def test_ltcc_bad_names_and_layout(data_root):
    with pytest.raises(FileNotFoundError, match=r"LTCC(.|\n)*LTCC_ReID(.|\n)*data/README.md"):
        LTCC().load(data_root)
    dataset = make_ltcc(data_root)
    make_image(dataset / "query" / "frame_0001.png")
    with pytest.raises(ValueError, match="frame_0001.png"):
        LTCC().load(data_root)


# ============================================================================= VC-Clothes
VC_QUERY = ["0300-01-01-01.jpg", "0300-02-01-01.jpg", "0300-03-02-01.jpg", "0301-04-01-02.jpg"]
VC_GALLERY = ["0300-01-01-02.jpg", "0300-02-01-03.jpg", "0300-03-02-04.jpg", "0300-04-01-01.jpg",
              "0301-03-02-01.jpg", "0301-04-01-03.jpg"]


def make_vcclothes(root: Path) -> Path:
    dataset = root / "VC-Clothes"
    for name in ("0001-01-01-01.jpg", "0001-03-02-01.jpg", "0002-04-01-01.jpg"):
        make_image(dataset / "train" / name)
    for name in VC_QUERY:
        make_image(dataset / "query" / name)
    for name in VC_GALLERY:
        make_image(dataset / "gallery" / name)
    return dataset


def test_vcclothes_settings_filter_both_sides_by_camera(data_root):
    make_vcclothes(data_root)
    splits = VCClothes().load(data_root)
    assert [(s.name, s.protocol) for s in splits] == \
        [("vcclothes_all", "market"), ("vcclothes_sc", "market"), ("vcclothes_cc", "market")]
    everything, same, changing = splits
    assert [(s.pid, s.camid, s.clothes) for s in everything.train] == [(1, 1, "1_1"), (1, 3, "1_2"), (2, 4, "2_1")]
    assert same.train == [] and changing.train == []
    assert len(everything.query) == 4 and len(everything.gallery) == 6
    assert sorted({s.camid for s in same.query + same.gallery}) == [2, 3]
    assert [Path(s.path).name for s in same.query] == ["0300-02-01-01.jpg", "0300-03-02-01.jpg"]
    assert [Path(s.path).name for s in same.gallery] == ["0300-02-01-03.jpg", "0300-03-02-04.jpg", "0301-03-02-01.jpg"]
    assert [Path(s.path).name for s in changing.query] == ["0300-03-02-01.jpg", "0301-04-01-02.jpg"]
    assert [Path(s.path).name for s in changing.gallery] == \
        ["0300-03-02-04.jpg", "0300-04-01-01.jpg", "0301-03-02-01.jpg", "0301-04-01-03.jpg"]


def test_vcclothes_missing_split(data_root):
    dataset = make_vcclothes(data_root)
    for image in (dataset / "gallery").iterdir():
        image.unlink()
    (dataset / "gallery").rmdir()
    with pytest.raises(FileNotFoundError, match=r"VC-Clothes(.|\n)*gallery(.|\n)*data/README.md"):
        VCClothes().load(data_root)


# ============================================================================= Celeb-reID
def make_celeb(root: Path, folder: str = "Celeb-reID") -> Path:
    dataset = root / folder
    for split, names in (("train", ["1_1_0.jpg", "1_3_1.jpg", "2_1_0.jpg"]),
                         ("query", ["5_1_0.jpg", "6_2_1.jpg"]),
                         ("gallery", ["5_1_1.jpg", "5_9_3.jpg", "6_2_0.jpg", "7_1_0.jpg"])):
        for name in names:
            make_image(dataset / split / name)
    return dataset


def test_celeb_sentinel_cameras_and_no_clothes(data_root):
    make_celeb(data_root)
    splits = CelebReID().load(data_root)
    assert [(s.name, s.protocol) for s in splits] == [("celebreid", "market")]
    bench = splits[0]
    assert [s.pid for s in bench.train] == [1, 1, 2]
    assert [s.pid for s in bench.query] == [5, 6] and [s.pid for s in bench.gallery] == [5, 5, 6, 7]
    query_cams = {s.camid for s in bench.query}
    gallery_cams = {s.camid for s in bench.gallery}
    assert len(query_cams) == len(gallery_cams) == 1 and query_cams != gallery_cams
    assert {s.clothes for s in bench.train + bench.query + bench.gallery} == {None}
    assert {s.source for s in bench.train} == {"celeb_reid"}
    # identity features: nothing removed, every gallery image of the query's id counts
    features = torch.zeros(6, 8)
    for row, s in enumerate(bench.query + bench.gallery):
        features[row, s.pid] = 1.0
    assert evaluate_benchmark(bench, features)["mAP"] == 1.0


def test_celeb_light_option(data_root):
    with pytest.raises(FileNotFoundError, match=r"Celeb-reID-light(.|\n)*data/README.md"):
        CelebReID(light=True).load(data_root)
    make_celeb(data_root, "Celeb-reID-light")
    bench = CelebReID(light=True).load(data_root)[0]
    assert bench.name == "celebreid_light" and {s.source for s in bench.gallery} == {"celeb_reid_light"}


# ============================================================================= masks
def test_parsing_masks_grey_out_lip_clothes_labels(tmp_path):
    """A palette label map (as SCHP writes it) under masks/ drives the clothing-agnostic view."""
    labels = np.zeros((4, 2), dtype=np.uint8)
    labels[1] = 5   # upper clothes
    labels[2] = 9   # pants
    labels[3] = 14  # left arm: not clothes
    label_map = Image.fromarray(labels, mode="P")
    label_map.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, 255 - i)])
    path = tmp_path / "mask.png"
    label_map.save(path)
    image = Image.new("RGB", (2, 4), (250, 10, 10))
    masker = ClothesMasker(mode="mask", mask_format="parsing", fill=100)
    out = np.asarray(masker(image, masker.load_mask(path)))
    assert (out[1:3] == 100).all()
    assert (out[0] == (250, 10, 10)).all() and (out[3] == (250, 10, 10)).all()
    # the default (binary) format is unchanged: label values below 128 are background
    binary = ClothesMasker(mode="mask")
    assert (np.asarray(binary(image, binary.load_mask(path)))[1] != 100).any()
    with pytest.raises(ValueError, match="mask_format"):
        ClothesMasker(mask_format="lip")  # type: ignore[arg-type]


def test_prcc_image_outside_an_id_folder_is_a_layout_error(data_root):
    dataset = make_prcc(data_root)
    make_image(dataset / "rgb" / "train" / "A_loose.jpg")
    with pytest.raises(ValueError, match=r"<pid>/<image>"):
        PRCC().load(data_root)
