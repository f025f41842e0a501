"""Visible-infrared loaders (SYSU-MM01, RegDB, LLCM) on fake trees of their official layouts."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itkm_lightning.data import sysu_gallery
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.datasets import LLCM, SYSUMM01, RegDB
from itkm_lightning.evaluation import cosine_distance, evaluate_rank, summarize
from itkm_lightning.evaluation.benchmark import evaluate_benchmark

torch.set_num_threads(1)


def make_image(path: Path, size: tuple[int, int] = (8, 16)) -> None:
    """A tiny image in the format its suffix names (JPEG, PNG or BMP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (len(path.name) * 9 % 256, 80, 160)).save(path)


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """A data root whose absolute path holds digits and 'cam' (reference loaders slice such paths)."""
    root = tmp_path / "cam3_0042" / "data2024_cam6"
    root.mkdir(parents=True)
    return root


# ============================================================================= SYSU-MM01
SYSU_IMAGES = {
    # (cam, pid): number of images
    (1, 1): 2, (3, 1): 1,                          # train id 1
    (2, 2): 1, (6, 2): 2,                          # train id 2
    (4, 3): 1, (3, 3): 1,                          # val id 3
    (1, 4): 3, (2, 4): 2, (3, 4): 2, (5, 4): 2, (6, 4): 1,   # test id 4: no cam4 folder
    (1, 5): 2, (4, 5): 3, (3, 5): 1,               # test id 5: no cam2 / cam5 folder
    (2, 10): 2, (4, 10): 2, (5, 10): 1, (6, 10): 2,   # test id 10: no cam1 folder
    (1, 99): 2,                                    # id in no list: never read
}


def make_sysu(root: Path) -> Path:
    dataset = root / "SYSU-MM01"
    for (cam, pid), count in SYSU_IMAGES.items():
        for index in range(1, count + 1):
            make_image(dataset / f"cam{cam}" / f"{pid:04d}" / f"{index:04d}.jpg")
    (dataset / "cam1" / "0004" / "notes.txt").write_text("stray file")  # not an image: never a candidate
    (dataset / "exp").mkdir()
    (dataset / "exp" / "train_id.txt").write_text("2,1\n")
    (dataset / "exp" / "val_id.txt").write_text("3\n")
    (dataset / "exp" / "test_id.txt").write_text("10,4,5\n")  # unsorted on purpose: drawn ascending
    return dataset


def official_sysu_gallery(data_path: str, mode: str, trial: int) -> list[str]:
    """An independent re-statement of the official draw (AGW ``process_gallery_sysu``), global ``random``.

    Differs only in skipping non-image files (a clean copy has none).
    """
    random.seed(trial)
    cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as handle:
        ids = ["%04d" % int(y) for y in handle.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                names = sorted(img_dir + "/" + i for i in os.listdir(img_dir) if i.endswith(".jpg"))
                files.append(random.choice(names))
    return files


def test_sysu_gallery_draws_the_hand_checked_images(data_root):
    dataset = make_sysu(data_root)
    got = [Path(p).relative_to(dataset).as_posix() for p in sysu_gallery(dataset, "all", 0)]
    # Ids 4, 5, 10 ascending; cameras 1, 2, 4, 5; missing folders (4/cam4, 5/cam2, 5/cam5, 10/cam1)
    # draw nothing. random.seed(0) choices over folder sizes 3, 2, 2, 2, 3, 2, 2, 1 give indices
    # 1, 1, 0, 1, 2, 1, 1, 0 (checked in the next test).
    assert got == [
        "cam1/0004/0002.jpg", "cam2/0004/0002.jpg", "cam5/0004/0001.jpg",
        "cam1/0005/0002.jpg", "cam4/0005/0003.jpg",
        "cam2/0010/0002.jpg", "cam4/0010/0002.jpg", "cam5/0010/0001.jpg",
    ]
    indoor = [Path(p).relative_to(dataset).as_posix() for p in sysu_gallery(dataset, "indoor", 0)]
    assert [p.split("/")[:2] for p in indoor] == [["cam1", "0004"], ["cam2", "0004"], ["cam1", "0005"],
                                                  ["cam2", "0010"]]


def test_sysu_gallery_indices_are_those_of_random_choice():
    # The hand-written list above relies on these indices: random.seed(0) then choice over sizes.
    random.seed(0)
    assert [random.randrange(n) for n in (3, 2, 2, 2, 3, 2, 2, 1)] == [1, 1, 0, 1, 2, 1, 1, 0]


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_gallery_matches_the_official_procedure_for_ten_trials(data_root, mode):
    dataset = make_sysu(data_root)
    state = random.getstate()
    for trial in range(10):
        expected = official_sysu_gallery(str(dataset), mode, trial)
        assert sysu_gallery(dataset, mode, trial) == [str(Path(p)) for p in expected]
    random.setstate(state)


def test_sysu_gallery_leaves_global_random_state_alone(data_root):
    dataset = make_sysu(data_root)
    random.seed(123)
    expected = random.random()
    random.seed(123)
    sysu_gallery(dataset, "all", 5)
    assert random.random() == expected


def test_sysu_loader_splits_labels_and_trials(data_root):
    dataset = make_sysu(data_root)
    splits = SYSUMM01(trials=10).load(data_root)
    assert [s.name for s in splits] == ["sysu_all", "sysu_indoor"]
    assert all(s.protocol == "sysu" and s.scenario == "vi" for s in splits)
    all_search, indoor = splits

    # training: train_id ∪ val_id, every camera, sorted by relative path; only the first split carries it
    assert indoor.train == []
    train = [(Path(s.path).relative_to(dataset).as_posix(), s.pid, s.camid, s.group) for s in all_search.train]
    assert train == [
        ("cam1/0001/0001.jpg", 1, 1, 0), ("cam1/0001/0002.jpg", 1, 1, 0), ("cam2/0002/0001.jpg", 2, 2, 0),
        ("cam3/0001/0001.jpg", 1, 3, 1), ("cam3/0003/0001.jpg", 3, 3, 1), ("cam4/0003/0001.jpg", 3, 4, 0),
        ("cam6/0002/0001.jpg", 2, 6, 1), ("cam6/0002/0002.jpg", 2, 6, 1),
    ]
    assert {s.source for s in all_search.train} == {"sysu_mm01"}
    assert {s.clothes for s in all_search.train} == {None}

    # queries: every test-id image of cameras 3 and 6, official order (id, then camera, then file)
    query = [(s.pid, s.camid, s.group) for s in all_search.query]
    assert query == [(4, 3, 1), (4, 3, 1), (4, 6, 1), (5, 3, 1), (10, 6, 1), (10, 6, 1)]
    assert [s.path for s in indoor.query] == [s.path for s in all_search.query]

    # galleries: each trial's indices give exactly the official draw, in draw order
    for split, mode in ((all_search, "all"), (indoor, "indoor")):
        assert len(split.trials) == 10
        assert len({s.path for s in split.gallery}) == len(split.gallery)  # every candidate once
        for trial, (query_indices, gallery_indices) in enumerate(split.trials):
            assert query_indices is None
            assert [split.gallery[i].path for i in gallery_indices] == sysu_gallery(dataset, mode, trial)
        assert all(s.group == 0 and s.camid in (1, 2, 4, 5) for s in split.gallery)
    assert {s.camid for s in indoor.gallery} == {1, 2}


def test_sysu_path_option_and_modes(data_root, tmp_path):
    dataset = make_sysu(data_root)
    moved = tmp_path / "elsewhere" / "sysu_copy"
    moved.parent.mkdir()
    dataset.rename(moved)
    splits = SYSUMM01(path=str(moved), modes=["indoor"], trials=2).load(data_root)
    assert [s.name for s in splits] == ["sysu_indoor"]
    assert len(splits[0].train) == 8 and len(splits[0].trials) == 2
    relative = SYSUMM01(path="../elsewhere/sysu_copy", trials=1).load(tmp_path / "cam3_0042")
    assert len(relative[0].query) == 6


def test_sysu_missing_layout_messages(data_root):
    with pytest.raises(FileNotFoundError) as missing_root:
        SYSUMM01().load(data_root)
    message = str(missing_root.value)
    assert "SYSU-MM01" in message and str(data_root / "SYSU-MM01") in message
    assert "exp/test_id.txt" in message and "data/README.md" in message

    dataset = make_sysu(data_root)
    (dataset / "exp" / "val_id.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        SYSUMM01().load(data_root)
    with pytest.raises(ValueError, match="all.*indoor"):
        sysu_gallery(dataset, "outdoor", 0)  # type: ignore[arg-type]


def test_sysu_without_images_says_so(data_root):
    dataset = data_root / "SYSU-MM01"
    (dataset / "exp").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (dataset / "exp" / f"{split}_id.txt").write_text("1,2\n")
    (dataset / "cam1" / "0001").mkdir(parents=True)
    (dataset / "cam1" / "0001" / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images"):
        SYSUMM01().load(data_root)


def test_sysu_through_datamodule_and_evaluate_benchmark(data_root):
    """End to end: datamodule set-up, feature order query + gallery, per-trial scoring averaged."""
    make_sysu(data_root)
    dm = ReIDDataModule(sources=[SYSUMM01(trials=4)], root=str(data_root), image_size=(32, 16),
                        num_workers=0, test_batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.blocks == [("vi", 0), ("vi", 1)]
    assert len(dm.train_samples) == 8
    assert {s.identity for s in dm.train_samples} == {"sysu_mm01:1", "sysu_mm01:2", "sysu_mm01:3"}
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    batch = next(iter(loaders[0]))
    assert batch["image"].shape[1:] == (3, 32, 16)

    rng = np.random.default_rng(0)
    for bench in dm.benchmarks:
        paths = [s.path for s in bench.query + bench.gallery]
        features_by_path = {p: rng.normal(size=8).astype(np.float32) for p in paths}
        features = torch.from_numpy(np.stack([features_by_path[p] for p in paths]))
        got = evaluate_benchmark(bench, features)

        # Independent: rebuild each trial's gallery from sysu_gallery and score it directly.
        mode = bench.name.split("_")[1]
        qf = np.stack([features_by_path[s.path] for s in bench.query])
        q_pids = [s.pid for s in bench.query]
        q_cams = [s.camid for s in bench.query]
        per_trial = []
        for trial in range(4):
            drawn = sysu_gallery(data_root / "SYSU-MM01", mode, trial)
            gf = np.stack([features_by_path[p] for p in drawn])
            g_pids = [int(Path(p).parent.name) for p in drawn]
            g_cams = [int(Path(p).parent.parent.name[3:]) for p in drawn]
            result = evaluate_rank(cosine_distance(qf, gf), q_pids, g_pids, q_cams, g_cams, protocol="sysu")
            per_trial.append(summarize(result))
        for key in per_trial[0]:
            assert got[key] == pytest.approx(np.mean([s[key] for s in per_trial]), abs=1e-9), key
        for key in ("mAP", "R1"):  # the spread over the draws, beside the mean
            assert got[f"{key}_std"] == pytest.approx(np.std([s[key] for s in per_trial]), abs=1e-9), key
        assert got["trials"] == 4

        # One-hot identity features retrieve perfectly in every trial.
        pids = sorted({s.pid for s in bench.query + bench.gallery})
        onehot = torch.zeros(len(paths), len(pids))
        for row, s in enumerate(bench.query + bench.gallery):
            onehot[row, pids.index(s.pid)] = 1.0
        perfect = evaluate_benchmark(bench, onehot)
        assert perfect["R1"] == 1.0 and perfect["mAP"] == 1.0


# ============================================================================= RegDB
def make_regdb(root: Path, trials: tuple[int, ...] = (1, 2)) -> Path:
    dataset = root / "RegDB"
    for folder, letter in (("Visible", "v"), ("Thermal", "t")):
        for person in (1, 2, 3, 4):
            for index in (1, 2):
                make_image(dataset / folder / str(person) / f"male_front_{letter}_{person:05d}_{index}.bmp")
    (dataset / "idx").mkdir()
    for trial in trials:
        # trial 1 trains on persons 1, 2 and tests on 3, 4; trial 2 the other way round
        train_people, test_people = ((1, 2), (3, 4)) if trial == 1 else ((3, 4), (1, 2))
        for split, people in (("train", train_people), ("test", test_people)):
            for folder, modality, letter in (("Visible", "visible", "v"), ("Thermal", "thermal", "t")):
                lines = [f"{folder}/{p}/male_front_{letter}_{p:05d}_{i}.bmp {label}"
                         for label, p in enumerate(people) for i in (1, 2)]
                (dataset / "idx" / f"{split}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return dataset


def test_regdb_trial_lists_and_directions(data_root):
    dataset = make_regdb(data_root)
    splits = RegDB(trial=1).load(data_root)
    assert [s.name for s in splits] == ["regdb_v2t", "regdb_t2v"]
    assert all(s.protocol == "regdb" and s.trials is None for s in splits)
    v2t, t2v = splits
    assert t2v.train == []
    assert [(s.pid, s.camid, s.group) for s in v2t.train] == [(0, 1, 0)] * 2 + [(1, 1, 0)] * 2 + \
        [(0, 2, 1)] * 2 + [(1, 2, 1)] * 2
    assert {Path(s.path).parent.name for s in v2t.train} == {"1", "2"}
    assert [Path(s.path).relative_to(dataset).parts[0] for s in v2t.query] == ["Visible"] * 4
    assert [Path(s.path).relative_to(dataset).parts[0] for s in v2t.gallery] == ["Thermal"] * 4
    assert [s.path for s in t2v.query] == [s.path for s in v2t.gallery]
    assert [s.path for s in t2v.gallery] == [s.path for s in v2t.query]
    assert {Path(s.path).parent.name for s in v2t.query} == {"3", "4"}
    assert {(s.camid, s.group) for s in v2t.query} == {(1, 0)} and {(s.camid, s.group) for s in v2t.gallery} == {(2, 1)}

    second = RegDB(trial=2, directions=["t2v"]).load(data_root)
    assert [s.name for s in second] == ["regdb_t2v"]
    assert {Path(s.path).parent.name for s in second[0].train} == {"3", "4"}
    assert {Path(s.path).parent.name for s in second[0].query} == {"1", "2"}


def test_regdb_bad_input(data_root):
    with pytest.raises(FileNotFoundError, match=r"RegDB(.|\n)*data/README.md"):
        RegDB().load(data_root)
    make_regdb(data_root)
    with pytest.raises(FileNotFoundError, match="train_visible_3.txt"):
        RegDB(trial=3).load(data_root)
    with pytest.raises(ValueError, match="1..10"):
        RegDB(trial=11)
    (data_root / "RegDB" / "Thermal" / "4" / "male_front_t_00004_2.bmp").unlink()
    with pytest.raises(FileNotFoundError, match="male_front_t_00004_2.bmp"):
        RegDB(trial=1).load(data_root)


# ============================================================================= LLCM
LLCM_TEST = {
    # (modality, cam, pid): number of images
    ("vis", 1, 5): 2, ("vis", 3, 5): 1, ("vis", 9, 5): 3, ("vis", 2, 7): 2, ("vis", 3, 7): 1,
    ("nir", 1, 5): 1, ("nir", 2, 5): 3, ("nir", 4, 7): 2, ("nir", 9, 7): 1,
    ("vis", 1, 8): 1,  # id not in test_id.txt: never read
}


def make_llcm(root: Path) -> Path:
    dataset = root / "LLCM"
    train_vis = ["train_vis/cam2/0001/0001_c02_a.jpg 0", "train_vis/cam4/0002/0002_c04_a.jpg 1"]
    train_nir = ["train_nir/cam2/0001/0001_c02_b.jpg 0", "train_nir/0002/0002_b.jpg 1"]  # second: no camN
    for line in train_vis + train_nir:
        make_image(dataset / line.split()[0])
    (dataset / "idx").mkdir()
    (dataset / "idx" / "train_vis.txt").write_text("\n".join(train_vis) + "\n")
    (dataset / "idx" / "train_nir.txt").write_text("\n".join(train_nir) + "\n")
    (dataset / "idx" / "test_id.txt").write_text("7,5\n")
    for (modality, cam, pid), count in LLCM_TEST.items():
        for index in range(count):
            make_image(dataset / f"test_{modality}" / f"cam{cam}" / f"{pid:04d}" / f"{pid:04d}_c{cam:02d}_{index}.jpg")
    return dataset


def official_llcm_draw(data_path: str, mode: int, trial: int) -> list[str]:
    """Independent re-statement of DEEN's ``process_gallery_llcm`` (mode 1 = VIS, 2 = NIR)."""
    random.seed(trial)
    cams = [1, 2, 3, 4, 5, 6, 7, 8, 9] if mode == 1 else [1, 2, 4, 5, 6, 7, 8, 9]
    folder = "test_vis" if mode == 1 else "test_nir"
    with open(os.path.join(data_path, "idx/test_id.txt")) as handle:
        ids = ["%04d" % int(y) for y in handle.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cams:
            img_dir = os.path.join(data_path, folder, f"cam{cam}", pid)
            if os.path.isdir(img_dir):
                files.append(random.choice(sorted(img_dir + "/" + i for i in os.listdir(img_dir))))
    return [str(Path(f)) for f in files]


def test_llcm_train_cameras_and_groups(data_root):
    make_llcm(data_root)
    splits = LLCM(trials=3).load(data_root)
    assert [s.name for s in splits] == ["llcm_i2v", "llcm_v2i"]
    assert all(s.protocol == "llcm" for s in splits)
    assert splits[1].train == []
    assert [(s.pid, s.camid, s.group) for s in splits[0].train] == [(0, 2, 0), (1, 4, 0), (0, 2, 1), (1, 0, 1)]


def test_llcm_i2v_queries_all_nir_against_official_vis_draws(data_root):
    dataset = make_llcm(data_root)
    i2v = LLCM(directions=["i2v"], trials=10).load(data_root)[0]
    assert [(s.pid, s.camid, s.group) for s in i2v.query] == \
        [(5, 1, 1), (5, 2, 1), (5, 2, 1), (5, 2, 1), (7, 4, 1), (7, 4, 1), (7, 9, 1)]
    assert all(s.group == 0 and s.pid in (5, 7) for s in i2v.gallery)
    assert len(i2v.trials) == 10
    for trial, (query_indices, gallery_indices) in enumerate(i2v.trials):
        assert query_indices is None
        assert [i2v.gallery[i].path for i in gallery_indices] == official_llcm_draw(str(dataset), 1, trial)
    drawn = [i2v.gallery[i] for i in i2v.trials[0][1]]
    assert [(s.pid, s.camid) for s in drawn] == [(5, 1), (5, 3), (5, 9), (7, 2), (7, 3)]


def test_llcm_v2i_transposes_as_deen(data_root):
    dataset = make_llcm(data_root)
    v2i = LLCM(directions=["v2i"], trials=10).load(data_root)[0]
    # sampled NIR images are the queries, all VIS test images the gallery
    assert all(s.group == 1 for s in v2i.query) and all(s.group == 0 for s in v2i.gallery)
    assert len(v2i.gallery) == 2 + 1 + 3 + 2 + 1
    assert [(s.pid, s.camid) for s in v2i.gallery] == [(5, 1)] * 2 + [(5, 3)] + [(5, 9)] * 3 + [(7, 2)] * 2 + [(7, 3)]
    for trial, (query_indices, gallery_indices) in enumerate(v2i.trials):
        assert gallery_indices is None
        assert [v2i.query[i].path for i in query_indices] == official_llcm_draw(str(dataset), 2, trial)

    # scoring: per trial the sampled NIR rows against all VIS columns (DEEN's transposed call)
    rng = np.random.default_rng(1)
    features = torch.from_numpy(rng.normal(size=(len(v2i.query) + len(v2i.gallery), 6)).astype(np.float32))
    got = evaluate_benchmark(v2i, features)
    nq = len(v2i.query)
    expected = []
    for query_indices, _ in v2i.trials:
        q = [v2i.query[i] for i in query_indices]
        result = evaluate_rank(cosine_distance(features[query_indices], features[nq:]), [s.pid for s in q],
                               [s.pid for s in v2i.gallery], [s.camid for s in q],
                               [s.camid for s in v2i.gallery], protocol="llcm")
        expected.append(summarize(result))
    assert got["mAP"] == pytest.approx(np.mean([e["mAP"] for e in expected]), abs=1e-9)
    assert got["R1"] == pytest.approx(np.mean([e["R1"] for e in expected]), abs=1e-9)


def test_llcm_bad_input(data_root):
    with pytest.raises(FileNotFoundError, match=r"LLCM(.|\n)*test_nir(.|\n)*data/README.md"):
        LLCM().load(data_root)
    dataset = make_llcm(data_root)
    (dataset / "idx" / "test_id.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_id.txt"):
        LLCM().load(data_root)
    with pytest.raises(ValueError, match="trials"):
        LLCM(trials=0)
