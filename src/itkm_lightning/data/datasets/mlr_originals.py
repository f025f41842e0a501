"""What each original dataset contributes to its MLR set (recipe ``mlr-v1``, docs/protocols.md section 6.1).

Market-1501, CUHK03 (the release, torchreid's extraction, or crops listed in a ``labels.csv``) and VIPeR
become a :class:`~itkm_lightning.data.datasets.mlr_format.SourcePlan`: which image goes to which output
folder with which id and camera, and how to open it. ``mlr_format.py`` turns a plan into files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.data.datasets.common import list_images, missing_layout_error, no_images_error, relative_key
from itkm_lightning.data.datasets.cuhk03 import CUHK03Release
from itkm_lightning.data.datasets.market1501 import MARKET_TREE, find_market_dir, list_market_folder
from itkm_lightning.data.datasets.mlr_format import (
    GALLERY,
    MLR_CAMERAS,
    MLR_FOLDERS,
    QUERY,
    TRAIN,
    SourceImage,
    SourcePlan,
)
from itkm_lightning.errors import ConfigError, DataFormatError

VIPER_TREE = """VIPeR/
  cam_a/000_45.bmp ...   one image per id and camera; the id is the number before the first '_'
  cam_b/000_90.bmp ..."""


# ============================================================================= sources
def plan_market1501(root: Path) -> SourcePlan:
    """Market-1501: LR = cameras 4-6 (train and query), HR = cameras 1-3 (train and gallery with distractors)."""
    dataset_dir = find_market_dir(root)
    for folder in MLR_FOLDERS:
        if not (dataset_dir / folder).is_dir():
            missing_layout_error("Market-1501", dataset_dir / folder, MARKET_TREE)
    high_res, low_res = MLR_CAMERAS["market1501"]
    wanted_cameras = {TRAIN: high_res + low_res, QUERY: low_res, GALLERY: high_res}
    images = []
    for folder in MLR_FOLDERS:
        parsed = list_market_folder(dataset_dir, folder, keep_distractors=folder == GALLERY)
        if not parsed:
            no_images_error("Market-1501", dataset_dir / folder)
        for item in parsed:
            if item.cam in wanted_cameras[folder]:
                width, height = _image_size(item.path)
                images.append(SourceImage(folder, item.pid, item.cam, item.key, width, height, handle=item.path))
    return SourcePlan("market1501", images, lambda image: load_rgb(str(image.handle)),
                      {"source_root": str(dataset_dir.resolve()), "boxes": None, "split": None})


def plan_cuhk03(release: CUHK03Release, split: int) -> SourcePlan:
    """CUHK03: view 1 -> c1 (HR), view 2 -> c2 (LR); ids renumbered in (pair, person) order."""
    all_images = release.images()
    persons = sorted({(i.pair, i.person) for i in all_images})
    new_pid = {person: number for number, person in enumerate(persons, start=1)}
    test_persons = release.test_persons(split)
    if not test_persons & set(persons):
        raise DataFormatError(f"CUHK03 split {split} names no person present in {release.root}; is the copy complete?")
    images = []
    for image in all_images:
        is_test = (image.pair, image.person) in test_persons
        folder = (QUERY if image.view == 2 else GALLERY) if is_test else TRAIN
        images.append(SourceImage(folder, new_pid[image.pair, image.person], image.view, image.key(release.boxes),
                                  image.width, image.height, handle=image))
    settings = {"source_root": str(release.root.resolve()), "source_layout": release.layout,
                "boxes": release.boxes, "split": split, "test_ids": len(test_persons & set(persons))}
    return SourcePlan("cuhk03", images, lambda image: release.open(image.handle), settings)


CROPS_LABELS = "labels.csv"
CROPS_COLUMNS = ("path", "pid", "camera_view", "width", "height")
CROPS_CAMERA = {"A": 1, "B": 2}
"""CUHK03 crops with a labels.csv (e.g. manideep2510's labeled/train/NNNN_KK.jpg): view A -> c1 (HR), B -> c2 (LR)."""


def parse_id_range(text: str) -> range:
    """``"600-742"`` -> range(600, 743) (inclusive bounds)."""
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise ConfigError(f"an id range is FIRST-LAST, e.g. 600-742; got {text!r}") from None
    if low > high:
        raise ConfigError(f"id range {text!r} is empty (FIRST > LAST)")
    return range(low, high + 1)


def is_crops_folder(root: Path) -> bool:
    return (root / CROPS_LABELS).is_file()


def plan_cuhk03_crops(root: Path, train_ids: range | None, test_ids: range | None) -> SourcePlan:
    """CUHK03 crops listed in ``labels.csv`` (columns path, pid, camera_view A/B, width, height).

    No classic split exists for such a folder, so the held-out identities are named: ``test_ids`` go to
    query (view B) and gallery (view A); ``train_ids`` (default: every other id) to training, unlabelled.
    Identities keep their own numbers; ids in neither range are left out.
    """
    with (root / CROPS_LABELS).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CROPS_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataFormatError(f"{root / CROPS_LABELS} lacks the column(s) {missing}; expected {list(CROPS_COLUMNS)}")
        rows = list(reader)
    if not rows:
        no_images_error("CUHK03 (labels.csv)", root / CROPS_LABELS)
    pids = sorted({int(row["pid"]) for row in rows})
    test = set(test_ids) if test_ids is not None else set(pids[-100:])  # like a classic split: 100 test ids
    train = set(train_ids) if train_ids is not None else set(pids) - test
    if train & test:
        raise ConfigError(f"--train-ids and --test-ids overlap (e.g. id {min(train & test)}); hold test ids out")
    images = []
    for row in rows:
        pid, view = int(row["pid"]), row["camera_view"]
        if view not in CROPS_CAMERA:
            raise DataFormatError(f"{root / CROPS_LABELS}: camera_view must be A or B, got {view!r} for {row['path']}")
        cam = CROPS_CAMERA[view]
        if pid in test:
            folder = QUERY if cam == 2 else GALLERY
        elif pid in train:
            folder = TRAIN
        else:
            continue
        images.append(SourceImage(folder, pid, cam, row["path"], int(row["width"]), int(row["height"]),
                                  handle=root / row["path"]))
    if not any(i.folder == TRAIN for i in images) or not any(i.folder == QUERY for i in images):
        raise ConfigError(f"{root}: the id ranges select no training or no test images (ids {pids[0]}-{pids[-1]})")
    ranges = {"train_ids": _range_text(train_ids), "test_ids": _range_text(test_ids)}
    settings = {"source_root": str(root.resolve()), "source_layout": "crops", "boxes": None, "split": None,
                **ranges, "test_id_count": len(test & set(pids))}
    return SourcePlan("cuhk03", images, lambda image: load_rgb(str(image.handle)), settings)


def _range_text(ids: range | None) -> str | None:
    return None if ids is None else f"{ids.start}-{ids.stop - 1}"


def plan_viper(root: Path, split: int) -> SourcePlan:
    """VIPeR: cam_a -> c1 (HR), cam_b -> c2 (LR); ids 1..N in sorted cam_a order; half train by permutation."""
    dataset_dir = root if (root / "cam_a").is_dir() or not (root / "VIPeR").is_dir() else root / "VIPeR"
    folders = {}
    for name in ("cam_a", "cam_b"):
        if not (dataset_dir / name).is_dir():
            missing_layout_error("VIPeR", dataset_dir / name, VIPER_TREE)
        folders[name] = list_images(dataset_dir / name, root=dataset_dir, recursive=False)
        if not folders[name]:
            no_images_error("VIPeR", dataset_dir / name)
    _check_viper_pairing(folders["cam_a"], folders["cam_b"])
    num_ids = len(folders["cam_a"])
    order = np.random.default_rng(split).permutation(np.arange(1, num_ids + 1))
    train_ids = set(order[: num_ids // 2].tolist())
    images = []
    for pid, (path_a, path_b) in enumerate(zip(folders["cam_a"], folders["cam_b"]), start=1):
        for cam, path in ((1, path_a), (2, path_b)):
            folder = TRAIN if pid in train_ids else (GALLERY if cam == 1 else QUERY)
            width, height = _image_size(path)
            images.append(SourceImage(folder, pid, cam, relative_key(path, dataset_dir), width, height, handle=path))
    settings = {"source_root": str(dataset_dir.resolve()), "boxes": None, "split": split}
    return SourcePlan("viper", images, lambda image: load_rgb(str(image.handle)), settings)


def _check_viper_pairing(cam_a: list[Path], cam_b: list[Path]) -> None:
    """fast-reid (id = prefix before '_') and torchreid (i-th sorted file of each camera) must agree."""
    def prefix(path: Path) -> str:
        return path.name.split("_", 1)[0]

    prefixes_a, prefixes_b = [prefix(p) for p in cam_a], [prefix(p) for p in cam_b]
    if len(cam_a) != len(cam_b) or prefixes_a != prefixes_b or len(set(prefixes_a)) != len(prefixes_a):
        raise DataFormatError(
            "VIPeR: the i-th sorted files of cam_a and cam_b do not share their id prefix (or ids repeat), so the "
            "torchreid and fast-reid id rules disagree on this copy; fix the copy (one image per id and camera)."
        )


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header only (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError) as err:
        raise DataFormatError(f"cannot read image {path} ({err}); replace or delete the file and run again") from err
