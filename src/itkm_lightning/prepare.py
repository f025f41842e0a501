"""``itkm prepare mlr``: build MLR-Market1501 / MLR-CUHK03 / MLR-VIPeR with the fixed recipe mlr-v1.

    itkm prepare mlr --source cuhk03 --root /data/cuhk03 --out /data [--boxes labeled] [--split 0]
    itkm prepare mlr --source market1501 --root /data/Market-1501-v15.09.15 --out /data
    itkm prepare mlr --source viper --root /data/VIPeR --out /data [--split 0]
    itkm prepare mlr --source cuhk03 --root ../shared/realdata/cuhk03_manideep2510_dev --out /data \
        --train-ids 80-599 --test-ids 600-742         (CUHK03 crops listed in a labels.csv)

The recipe is docs/protocols.md section 6: designated LR cameras, one rate per LR image from
``numpy.random.default_rng(0).integers(2, 5, size=len(L))`` over the LR images sorted by source path,
bicubic down-sampling to ``(max(1, W // r), max(1, H // r))``, PNG output named
``<pid:04d>_c<cam>_<idx:04d>.png``, ``manifest.csv`` (one row per file) and ``meta.json``.

Re-running is safe and cheap. ``meta.json`` is written last, so a folder without it is an unfinished
build: the next run keeps the images already written (each image is written to a temporary name and
renamed, so a present file is complete; it is still checked to decode at the planned size) and writes
the rest. A finished folder is verified against ``checksums.sha1`` (every file hashed); files that are
missing or differ are rebuilt and nothing else is written. A folder built from other settings or
another copy of the source is refused rather than overwritten.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from itkm_lightning.data.datasets.common import list_images, missing_layout_error, no_images_error, relative_key
from itkm_lightning.data.datasets.cross_resolution import (
    HIGH_RES,
    LOW_RES,
    MARKET_TREE,
    MLR_CAMERAS,
    MLR_FOLDERS,
    MLR_MANIFEST_COLUMNS,
    MLR_OUTPUT_DIRS,
    MLR_RECIPE,
    CUHK03Release,
    ManifestRow,
    find_market_dir,
    list_market_folder,
    read_mlr_manifest,
)
from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.fileio import atomic_write, atomic_write_text

SEED = 0
"""mlr-v1 means seed 0; it is deliberately not an option (docs/protocols.md 6.2)."""
RATE_LOW, RATE_HIGH = 2, 5
"""Rates are drawn uniformly from {2, 3, 4}: ``integers(2, 5)`` excludes the upper bound."""
KERNEL = "PIL.Image.Resampling.BICUBIC"
TRAIN, QUERY, GALLERY = MLR_FOLDERS
CHECKSUMS = "checksums.sha1"
VIPER_TREE = """VIPeR/
  cam_a/000_45.bmp ...   one image per id and camera; the id is the number before the first '_'
  cam_b/000_90.bmp ..."""


# ============================================================================= the plan
@dataclass(frozen=True)
class SourceImage:
    """One source image going into the output, before rates and names are assigned."""

    folder: str
    pid: int
    cam: int
    key: str
    """Source path relative to the source root (sort key and manifest ``source_path``)."""
    width: int
    height: int
    handle: Any = field(compare=False, default=None)


@dataclass
class SourcePlan:
    """What a source contributes: its images and how to open them, plus facts for ``meta.json``."""

    source: str
    images: list[SourceImage]
    open_image: Callable[[SourceImage], Image.Image]
    settings: dict[str, Any]


@dataclass(frozen=True)
class PlannedFile:
    row: ManifestRow
    image: SourceImage

    @property
    def relative(self) -> str:
        return f"{self.row.folder}/{self.row.file}"


def draw_rates(num_low_res: int) -> np.ndarray:
    """The mlr-v1 rates of the sorted LR list, drawn in one call."""
    return np.random.default_rng(SEED).integers(RATE_LOW, RATE_HIGH, size=num_low_res)


def reduced_size(width: int, height: int, rate: int) -> tuple[int, int]:
    """Integer floor division, never below one pixel (docs/protocols.md 6.2 step 3)."""
    return max(1, width // rate), max(1, height // rate)


def plan_files(plan: SourcePlan) -> list[PlannedFile]:
    """Rates, output names and manifest rows for every image of ``plan``, in manifest order."""
    keys = [image.key for image in plan.images]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{plan.source}: two source images share a path key; report this as a bug")
    low_res_cameras = set(MLR_CAMERAS[plan.source][1])
    low_res = sorted((image for image in plan.images if image.cam in low_res_cameras), key=lambda i: i.key)
    rate_of = {image.key: int(rate) for image, rate in zip(low_res, draw_rates(len(low_res)))}

    planned = []
    for folder in MLR_FOLDERS:
        running: Counter[tuple[int, int]] = Counter()
        for image in sorted((i for i in plan.images if i.folder == folder), key=lambda i: i.key):
            running[image.pid, image.cam] += 1
            rate = rate_of.get(image.key, 1)
            out_w, out_h = reduced_size(image.width, image.height, rate)
            row = ManifestRow(
                folder=folder, file=f"{image.pid:04d}_c{image.cam}_{running[image.pid, image.cam]:04d}.png",
                pid=image.pid, cam=image.cam, group=LOW_RES if rate > 1 else HIGH_RES, rate=rate,
                source_path=image.key, src_w=image.width, src_h=image.height, out_w=out_w, out_h=out_h,
            )
            planned.append(PlannedFile(row, image))
    planned.sort(key=lambda p: (MLR_FOLDERS.index(p.row.folder), p.row.file))
    return planned


def manifest_text(planned: list[PlannedFile]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MLR_MANIFEST_COLUMNS)
    writer.writerows(p.row.as_csv() for p in planned)
    return buffer.getvalue()


def build_meta(plan: SourcePlan, planned: list[PlannedFile]) -> dict[str, Any]:
    rows = [p.row for p in planned]
    counts = {}
    for folder in MLR_FOLDERS:
        in_folder = [r for r in rows if r.folder == folder]
        counts[folder] = {
            "ids": len({r.pid for r in in_folder}),
            "images": len(in_folder),
            "high_res_images": sum(r.group == HIGH_RES for r in in_folder),
            "low_res_images": sum(r.group == LOW_RES for r in in_folder),
        }
    gallery_ids = {r.pid for r in rows if r.folder == GALLERY}
    high_res, low_res = MLR_CAMERAS[plan.source]
    return {
        "recipe": MLR_RECIPE,
        "source": plan.source,
        **plan.settings,
        "high_res_cameras": list(high_res),
        "low_res_cameras": list(low_res),
        "seed": SEED,
        "rates": list(range(RATE_LOW, RATE_HIGH)),
        "kernel": KERNEL,
        "size_rounding": "max(1, W // r), max(1, H // r)",
        "format": "png",
        "numpy_version": np.__version__,
        "pillow_version": PIL.__version__,
        "counts": counts,
        "queries_without_hr_match": sum(r.folder == QUERY and r.pid not in gallery_ids for r in rows),
    }


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
        raise ValueError(f"CUHK03 split {split} names no person present in {release.root}; is the copy complete?")
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
        raise ValueError(f"an id range is FIRST-LAST, e.g. 600-742; got {text!r}") from None
    if low > high:
        raise ValueError(f"id range {text!r} is empty (FIRST > LAST)")
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
            raise ValueError(f"{root / CROPS_LABELS} lacks the column(s) {missing}; expected {list(CROPS_COLUMNS)}")
        rows = list(reader)
    if not rows:
        no_images_error("CUHK03 (labels.csv)", root / CROPS_LABELS)
    pids = sorted({int(row["pid"]) for row in rows})
    test = set(test_ids) if test_ids is not None else set(pids[-100:])  # like a classic split: 100 test ids
    train = set(train_ids) if train_ids is not None else set(pids) - test
    if train & test:
        raise ValueError(f"--train-ids and --test-ids overlap (e.g. id {min(train & test)}); hold test ids out")
    images = []
    for row in rows:
        pid, view = int(row["pid"]), row["camera_view"]
        if view not in CROPS_CAMERA:
            raise ValueError(f"{root / CROPS_LABELS}: camera_view must be A or B, got {view!r} for {row['path']}")
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
        raise ValueError(f"{root}: the id ranges select no training or no test images (ids {pids[0]}-{pids[-1]})")
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
        raise ValueError(
            "VIPeR: the i-th sorted files of cam_a and cam_b do not share their id prefix (or ids repeat), so the "
            "torchreid and fast-reid id rules disagree on this copy; fix the copy (one image per id and camera)."
        )


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header only (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path} ({err}); replace or delete the file and run again") from err


# ============================================================================= writing and verifying
@dataclass
class BuildReport:
    dest: Path
    status: str
    """``built``, ``resumed`` (an unfinished build completed), ``repaired`` or ``up to date``."""
    written: int
    meta: dict[str, Any]


def build_mlr(
    source: str, root: str | Path, out: str | Path, *, boxes: str | None = None, split: int | None = None,
    progress: bool = True, train_ids: str | None = None, test_ids: str | None = None,
) -> BuildReport:
    """Build (or resume, verify, repair) ``<out>/MLR-<source>`` from the original dataset at ``root``."""
    root, out = Path(root), Path(out)
    if source not in MLR_OUTPUT_DIRS:
        raise ValueError(f"unknown MLR source {source!r}; choose one of {', '.join(MLR_OUTPUT_DIRS)}")
    if boxes is not None and source != "cuhk03":
        raise ValueError("--boxes applies to --source cuhk03 only")
    if split is not None and source == "market1501":
        raise ValueError("--split does not apply to market1501 (it has one official split)")
    if split is not None and split < 0:
        raise ValueError(f"--split must be >= 0; got {split}")
    if not root.exists():
        raise FileNotFoundError(f"--root {root} does not exist; point it at the original {source} dataset")
    dest = out / MLR_OUTPUT_DIRS[source]
    crops = source == "cuhk03" and is_crops_folder(root)
    if (train_ids is not None or test_ids is not None) and not crops:
        raise ValueError(f"--train-ids/--test-ids apply to CUHK03 crops with a {CROPS_LABELS} only")
    if crops:
        if boxes is not None or split is not None:
            raise ValueError(f"{root} holds crops listed in {CROPS_LABELS}: name the test ids with --test-ids, "
                             "not --split/--boxes")
        to_range = parse_id_range
        return _build(plan_cuhk03_crops(root, train_ids and to_range(train_ids), test_ids and to_range(test_ids)),
                      dest, progress)
    if source == "cuhk03":
        with CUHK03Release(root, boxes or "labeled") as release:
            return _build(plan_cuhk03(release, split or 0), dest, progress)
    plan = plan_market1501(root) if source == "market1501" else plan_viper(root, split or 0)
    return _build(plan, dest, progress)


def _build(plan: SourcePlan, dest: Path, progress: bool) -> BuildReport:
    planned = plan_files(plan)
    manifest = manifest_text(planned)
    meta = build_meta(plan, planned)
    meta_path, manifest_path = dest / "meta.json", dest / "manifest.csv"
    finished = meta_path.is_file()
    _remove_temporaries(dest)
    if manifest_path.is_file() and manifest_path.read_text() != manifest:
        state = "built" if finished else "partly built"
        raise ValueError(
            f"{dest} was {state} from other settings or another copy of the source (its manifest.csv differs); "
            "remove that folder or choose another --out"
        )
    if finished:
        to_write = _failed_checksums(dest, planned, progress)
        if not to_write:
            return BuildReport(dest, "up to date", 0, json.loads(meta_path.read_text()))
        meta_path.unlink()  # until the repair is complete, the folder must not look finished
        status = "repaired"
    else:
        dest.mkdir(parents=True, exist_ok=True)
        to_write = _unusable_files(dest, planned, progress)
        status = "built" if len(to_write) == len(planned) else "resumed"
    if not manifest_path.is_file():
        atomic_write_text(manifest_path, manifest)
    for folder in MLR_FOLDERS:
        (dest / folder).mkdir(exist_ok=True)
    for item in tqdm(to_write, desc=f"{dest.name}: writing", unit="img", disable=not progress):
        _write_image(plan, item, dest)
    atomic_write_text(dest / CHECKSUMS, _checksums_text(dest, planned, progress))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return BuildReport(dest, status, len(to_write), meta)


def _write_image(plan: SourcePlan, item: PlannedFile, dest: Path) -> None:
    image = plan.open_image(item.image).convert("RGB")
    if image.size != (item.row.src_w, item.row.src_h):
        raise ValueError(
            f"{item.row.source_path} is {image.size[0]}x{image.size[1]} but was planned at "
            f"{item.row.src_w}x{item.row.src_h}; the source changed during the build, run again"
        )
    if item.row.rate > 1:
        image = image.resize((item.row.out_w, item.row.out_h), Image.Resampling.BICUBIC)
    target = dest / item.relative
    # A file under its final name is always complete; no fsync per image (thousands of them, 6 ms each).
    atomic_write(target, lambda handle: image.save(handle, format="PNG"), fsync=False)


def _remove_temporaries(dest: Path) -> None:
    """Half-written images of a killed run (``.<name>.<random>.tmp``, before: ``.<name>.tmp``); only this command
    creates such names."""
    for folder in MLR_FOLDERS:
        if (dest / folder).is_dir():
            for leftover in (dest / folder).glob(".*.png*.tmp"):
                leftover.unlink()


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _checksums_text(dest: Path, planned: list[PlannedFile], progress: bool) -> str:
    lines = [f"{_sha1(dest / p.relative)}  {p.relative}\n"
             for p in tqdm(planned, desc=f"{dest.name}: hashing", unit="img", disable=not progress)]
    return "".join(lines)


def _read_checksums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


def _failed_checksums(dest: Path, planned: list[PlannedFile], progress: bool) -> list[PlannedFile]:
    """Planned files that are missing, unlisted in checksums.sha1 or differ from their recorded hash."""
    sums = _read_checksums(dest / CHECKSUMS)
    failed = []
    for item in tqdm(planned, desc=f"{dest.name}: verifying", unit="img", disable=not progress):
        path = dest / item.relative
        if not path.is_file() or sums.get(item.relative) != _sha1(path):
            failed.append(item)
    return failed


def _unusable_files(dest: Path, planned: list[PlannedFile], progress: bool) -> list[PlannedFile]:
    """Planned files of an unfinished build that are missing or do not decode at their planned size."""
    unusable = []
    for item in tqdm(planned, desc=f"{dest.name}: checking", unit="img", disable=not progress):
        path = dest / item.relative
        if not path.is_file() or not _decodes_at(path, (item.row.out_w, item.row.out_h)):
            unusable.append(item)
    return unusable


def _decodes_at(path: Path, size: tuple[int, int]) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == size
    except (OSError, SyntaxError, ValueError):
        return False


# ============================================================================= command line
def _summary(report: BuildReport) -> str:
    meta = report.meta
    lines = [f"{report.dest}: {report.status} ({report.written} images written), recipe {meta['recipe']}"]
    for folder, counts in meta["counts"].items():
        lines.append(f"  {folder:<19} {counts['ids']:>5} ids {counts['images']:>6} images "
                     f"({counts['high_res_images']} HR, {counts['low_res_images']} LR)")
    lines.append(f"  queries without an HR match: {meta['queries_without_hr_match']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itkm prepare", description="Build derived datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    mlr = commands.add_parser("mlr", help="build an MLR set with the recipe mlr-v1 (docs/protocols.md section 6)")
    mlr.add_argument("--source", required=True, choices=sorted(MLR_OUTPUT_DIRS), help="original dataset")
    mlr.add_argument("--root", required=True, help="folder of the original dataset (or CUHK03's cuhk-03.mat)")
    mlr.add_argument("--out", required=True, help="where MLR-<source>/ is written (usually data.root)")
    mlr.add_argument("--boxes", choices=("labeled", "detected"), default=None,
                     help="CUHK03 boxes (default labeled)")
    mlr.add_argument("--split", type=int, default=None,
                     help="CUHK03 classic split 0-19 or VIPeR permutation seed (default 0)")
    mlr.add_argument("--train-ids", default=None,
                     help="CUHK03 crops (labels.csv): training ids FIRST-LAST (default: every id not tested)")
    mlr.add_argument("--test-ids", default=None,
                     help="CUHK03 crops (labels.csv): held-out test ids FIRST-LAST (default: the last 100)")
    mlr.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``itkm prepare``."""
    args = build_parser().parse_args(argv)
    report = build_mlr(args.source, args.root, args.out, boxes=args.boxes, split=args.split,
                       progress=args.progress, train_ids=args.train_ids, test_ids=args.test_ids)
    print(_summary(report))
    strays = stray_files(report.dest)
    if strays:  # only reported, never deleted: they may be the user's

        print(f"  note: {len(strays)} images in {report.dest} are not in manifest.csv and are ignored "
              f"(first: {strays[0]})")


def stray_files(dest: Path) -> list[str]:
    """Images in the output folders that manifest.csv does not list (the loaders ignore them)."""
    listed = {f"{r.folder}/{r.file}" for r in read_mlr_manifest(dest / "manifest.csv")}
    found = [relative_key(p, dest) for folder in MLR_FOLDERS for p in list_images(dest / folder, root=dest)]
    return [name for name in found if name not in listed]
