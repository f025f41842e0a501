"""The MLR file format, recipe ``mlr-v1`` (docs/protocols.md section 6): planning, writing, verifying, reading.

An MLR set is a folder ``MLR-<source>/`` holding::

    bounding_box_train/<pid:04d>_c<cam>_<idx:04d>.png   training images (HR and LR)
    query/...                                          LR queries
    bounding_box_test/...                              HR gallery
    manifest.csv                                       one row per file (MLR_MANIFEST_COLUMNS)
    checksums.sha1                                     sha1 of every file
    meta.json                                          recipe, settings, counts; written last

The recipe: designated LR cameras, one rate per LR image from
``numpy.random.default_rng(0).integers(2, 5, size=len(L))`` over the LR images sorted by source path,
bicubic down-sampling to ``(max(1, W // r), max(1, H // r))``. What each original dataset contributes
is in ``mlr_originals.py``; ``itkm prepare mlr`` (``itkm_lightning.prepare``) is the tool, and the
``MLR*`` dataset sources (``mlr.py``) read a folder back with :func:`read_mlr_folder`.

Writing is resumable: ``meta.json`` is written last, so a folder without it is an unfinished build
whose complete images are kept (each is written to a temporary name and renamed); a finished folder
is verified against ``checksums.sha1`` and only files that are missing or differ are rebuilt.
"""

from __future__ import annotations

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

from itkm_lightning.data.datasets.common import list_images, relative_key, require_dir
from itkm_lightning.errors import ConfigError, DataFormatError, DataUnavailableError
from itkm_lightning.fileio import atomic_write, atomic_write_text, read_csv_table

HIGH_RES, LOW_RES = 0, 1
"""The manifest's ``group`` column: high-resolution (gallery, HR cameras) and low-resolution images."""
MLR_RECIPE = "mlr-v1"
MLR_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
"""Output folders, in manifest order: training (HR + LR), LR queries, HR gallery."""
MLR_MANIFEST_COLUMNS = (
    "folder", "file", "pid", "cam", "group", "rate", "source_path", "src_w", "src_h", "out_w", "out_h",
)
MLR_OUTPUT_DIRS = {"market1501": "MLR-Market1501", "cuhk03": "MLR-CUHK03", "viper": "MLR-VIPeR"}
MLR_CAMERAS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "market1501": ((1, 2, 3), (4, 5, 6)),
    "cuhk03": ((1,), (2,)),
    "viper": ((1,), (2,)),
}
"""Designated (HR cameras, LR cameras) of each source, as output camera numbers (docs/protocols.md 6.1)."""
SEED = 0
"""mlr-v1 means seed 0; it is deliberately not an option (docs/protocols.md 6.2)."""
RATE_LOW, RATE_HIGH = 2, 5
"""Rates are drawn uniformly from {2, 3, 4}: ``integers(2, 5)`` excludes the upper bound."""
KERNEL = "PIL.Image.Resampling.BICUBIC"
TRAIN, QUERY, GALLERY = MLR_FOLDERS
CHECKSUMS = "checksums.sha1"


# ============================================================================= manifest
@dataclass(frozen=True)
class ManifestRow:
    folder: str
    file: str
    pid: int
    cam: int
    group: int
    rate: int
    source_path: str
    src_w: int
    src_h: int
    out_w: int
    out_h: int

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> ManifestRow:
        return cls(**{name: (row[name] if name in ("folder", "file", "source_path") else int(row[name]))
                      for name in MLR_MANIFEST_COLUMNS})

    def as_csv(self) -> list[str]:
        return [str(getattr(self, name)) for name in MLR_MANIFEST_COLUMNS]


def read_mlr_manifest(path: Path) -> list[ManifestRow]:
    """Rows of an mlr-v1 ``manifest.csv``; a wrong header is a ValueError."""
    rows = read_csv_table(path, MLR_MANIFEST_COLUMNS, "rebuild it with `itkm prepare mlr`")
    try:
        return [ManifestRow.from_csv(row) for row in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"{path} has a malformed row ({err}); rebuild it with `itkm prepare mlr`") from err


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


# ============================================================================= writing and verifying
@dataclass
class BuildReport:
    dest: Path
    status: str
    """``built``, ``resumed`` (an unfinished build completed), ``repaired`` or ``up to date``."""
    written: int
    meta: dict[str, Any]


def write_mlr_folder(plan: SourcePlan, dest: Path, progress: bool) -> BuildReport:
    """Write, complete or repair ``dest`` from ``plan``; refuse a folder built from other settings."""
    planned = plan_files(plan)
    manifest = manifest_text(planned)
    meta = build_meta(plan, planned)
    meta_path, manifest_path = dest / "meta.json", dest / "manifest.csv"
    finished = meta_path.is_file()
    _remove_temporaries(dest)
    if manifest_path.is_file() and manifest_path.read_text() != manifest:
        state = "built" if finished else "partly built"
        raise ConfigError(
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
        raise DataFormatError(
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


# ============================================================================= reading
def _mlr_tree(folder: str, source: str) -> str:
    return f"""{folder}/            built by: itkm prepare mlr --source {source} --root <original> --out <data.root>
  bounding_box_train/<pid:04d>_c<cam>_<idx:04d>.png
  query/...  bounding_box_test/...
  manifest.csv  meta.json"""


def read_mlr_folder(dataset_dir: Path, name: str, source_key: str) -> list[ManifestRow]:
    """The manifest rows of the finished mlr-v1 folder of ``source_key``, every listed image present.

    Anything else is one error that names ``name`` (the benchmark) and the ``itkm prepare mlr`` run that
    completes or repairs the folder.
    """
    require_dir(dataset_dir, name, _mlr_tree(MLR_OUTPUT_DIRS[source_key], source_key))
    if not (dataset_dir / "meta.json").is_file():
        raise DataUnavailableError(
            f"{name}: {dataset_dir} has no meta.json, so its build did not finish; run "
            f"`itkm prepare mlr --source {source_key} ...` again to complete it (see data/README.md)."
        )
    meta = json.loads((dataset_dir / "meta.json").read_text())
    if meta.get("recipe") != MLR_RECIPE or meta.get("source") != source_key:
        raise DataFormatError(
            f"{name}: {dataset_dir}/meta.json says recipe {meta.get('recipe')!r}, source "
            f"{meta.get('source')!r}; expected {MLR_RECIPE!r}, {source_key!r}. Rebuild it."
        )
    rows = read_mlr_manifest(dataset_dir / "manifest.csv")
    if not rows:
        raise DataFormatError(f"{name}: {dataset_dir}/manifest.csv lists no image; rebuild it.")
    missing = [f"{r.folder}/{r.file}" for r in rows if not (dataset_dir / r.folder / r.file).is_file()]
    if missing:
        raise DataUnavailableError(
            f"{name}: {len(missing)} images of the manifest are missing in {dataset_dir} (first: "
            f"{missing[0]}); run `itkm prepare mlr --source {source_key} ...` again to repair it."
        )
    return rows


def stray_files(dest: Path) -> list[str]:
    """Images in the output folders that manifest.csv does not list (the loaders ignore them)."""
    listed = {f"{r.folder}/{r.file}" for r in read_mlr_manifest(dest / "manifest.csv")}
    found = [relative_key(p, dest) for folder in MLR_FOLDERS for p in list_images(dest / folder, root=dest)]
    return [name for name in found if name not in listed]
