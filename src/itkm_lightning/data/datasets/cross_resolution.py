"""Cross-resolution benchmarks: Market-1501, CUHK01 and the MLR sets (docs/protocols.md sections 3, 5.7, 6).

Groups of scenario ``cr``: 0 = high resolution (HR), 1 = low resolution (LR). Camera numbers are the
datasets' own (1-based). Every benchmark here is scored Market-style (protocol ``market``); queries whose
identity has no match in the gallery are skipped by ``evaluate_rank`` and counted in the log here.

* :class:`Market1501`, :class:`CUHK01`: the original images (all full resolution).
* :class:`MLRMarket1501`, :class:`MLRCUHK03`, :class:`MLRVIPeR`: the sets written by
  ``itkm prepare mlr`` (recipe ``mlr-v1``, :mod:`itkm_lightning.prepare`): LR queries vs HR gallery,
  groups read from ``manifest.csv``.
* :class:`CUHK03Release`: reads CUHK03 from ``cuhk-03.mat`` (h5py) or torchreid's extracted
  ``images_<boxes>/`` folder, for the MLR command.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from itkm_lightning.data.datasets.common import (
    list_images,
    missing_layout_error,
    no_images_error,
    relative_key,
    require_dir,
    resolve_dataset_dir,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.evaluation import SINGLE_GALLERY_SHOT_DRAWS
from itkm_lightning.data.sources import DatasetSource


def rank_zero_info(message: str) -> None:
    # Lightning on first use: `itkm search` and `itkm --help` import this module and must start without it.
    from lightning.pytorch.utilities import rank_zero_info as info

    info(message)


SCENARIO = "cr"
HIGH_RES, LOW_RES = 0, 1
PROTOCOL = "market"

# ============================================================================= mlr-v1 recipe constants
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

# ============================================================================= Market-1501
MARKET_FOLDER = "Market-1501-v15.09.15"
MARKET_NAME = re.compile(r"([-\d]+)_c(\d)")
JUNK_PID, DISTRACTOR_PID = -1, 0
MARKET_TREE = """Market-1501-v15.09.15/
  bounding_box_train/0002_c1s1_000451_03.jpg ...   <pid:04d>_c<cam>s<seq>_<frame:06d>_<box:02d>.jpg
  query/...
  bounding_box_test/...                            (-1_* junk, 0000_* distractors)"""


def parse_market_name(name: str) -> tuple[int, int] | None:
    """(pid, camera) from a Market-1501 file name (not a path), or None when the name does not match."""
    match = MARKET_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class MarketImage:
    path: Path
    key: str
    """Path relative to the dataset folder (the sort key of docs/protocols.md section 1)."""
    pid: int
    cam: int


def list_market_folder(dataset_dir: Path, folder: str, *, keep_distractors: bool) -> list[MarketImage]:
    """Parsed images of ``dataset_dir/folder`` sorted by relative path; junk (pid -1) always dropped.

    Files whose name does not follow the Market pattern are skipped (some copies hold stray files).
    """
    images: list[MarketImage] = []
    for path in list_images(dataset_dir / folder, root=dataset_dir, recursive=False):
        parsed = parse_market_name(path.name)
        if parsed is None:
            continue
        pid, cam = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        images.append(MarketImage(path, relative_key(path, dataset_dir), pid, cam))
    return images


def find_market_dir(root: Path) -> Path:
    """``root`` itself when it holds the Market folders, else ``root/Market-1501-v15.09.15``."""
    if (root / "bounding_box_test").is_dir() or not (root / MARKET_FOLDER).is_dir():
        return root
    return root / MARKET_FOLDER


class Market1501(DatasetSource):
    """Market-1501 in its official layout, scored Market-style: benchmark ``market1501`` (docs/protocols.md 3.1, 5.2).

    Junk (pid -1) is dropped everywhere; distractors (pid 0) stay in the gallery only. Every image is at
    its native resolution, so every sample is group 0 (HR) of scenario ``cr``; the cross-resolution
    benchmark built from this dataset is :class:`MLRMarket1501`.

    Args:
        path: dataset folder, absolute or relative to ``data.root``; default ``<root>/Market-1501-v15.09.15``.
        train_folder: sub-folder of the training images.
        query_folder: sub-folder of the query images.
        gallery_folder: sub-folder of the gallery images.
    """

    name = "market1501"

    def __init__(
        self,
        path: str | None = None,
        train_folder: str = "bounding_box_train",
        query_folder: str = "query",
        gallery_folder: str = "bounding_box_test",
    ) -> None:
        self.path = path
        self.folders = {"train": train_folder, "query": query_folder, "gallery": gallery_folder}

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = resolve_dataset_dir(root, self.path, MARKET_FOLDER).resolve()
        require_dir(dataset_dir, "Market-1501", MARKET_TREE)
        for folder in self.folders.values():
            require_dir(dataset_dir / folder, "Market-1501", MARKET_TREE)
        bench = BenchmarkSplit(name=self.name, scenario=SCENARIO, protocol=PROTOCOL)
        for split, folder in self.folders.items():
            images = list_market_folder(dataset_dir, folder, keep_distractors=split == "gallery")
            if not images:
                no_images_error("Market-1501", dataset_dir / folder)
            getattr(bench, split).extend(self._sample(image) for image in images)
        log_unmatched_queries(bench)
        return [bench]

    def _sample(self, image: MarketImage) -> Sample:
        return Sample(path=str(image.path), pid=image.pid, camid=image.cam, scenario=SCENARIO, group=HIGH_RES,
                      source=self.name)


# ============================================================================= CUHK01
CUHK01_FOLDER = "CUHK01"
CUHK01_NAME = re.compile(r"(\d{4})(\d{3})\.png", flags=re.IGNORECASE)
CUHK01_CAMERA_A, CUHK01_CAMERA_B = 1, 2
CUHK01_TREE = """CUHK01/
  campus/0001001.png ...   <pid:04d><img:03d>.png; img 001-002 = camera A, 003-004 = camera B"""


def cuhk01_camera(image_index: int) -> int:
    """Camera of CUHK01 image ``image_index`` (1-based): 1-2 are camera A (1), 3-4 camera B (2)."""
    return CUHK01_CAMERA_A if image_index <= 2 else CUHK01_CAMERA_B


class CUHK01(DatasetSource):
    """CUHK01 (CUHK Campus), a two-camera dataset: benchmark ``cuhk01``.

    Camera A is group 0 and camera B group 1 (for ``scenario: cc`` every image is group 0, since that
    scenario derives its second group from the training images). The ids are split by a
    ``numpy.random.default_rng(split)`` permutation of the sorted ids: the first ``train_ids`` train,
    the rest test. Test queries are the camera-B images, the gallery the camera-A images, scored
    Market-style.

    Args:
        path: dataset folder holding ``campus/``, absolute or relative to ``data.root``; default ``<root>/CUHK01``.
        scenario: scenario tag of the samples.
        split: seed of the train/test permutation of the ids.
        train_ids: number of training ids; default half of them (rounded down), as the 485/486 protocol.
    """

    name = "cuhk01"

    def __init__(
        self,
        path: str | None = None,
        scenario: Literal["vi", "cr", "cc"] = "cr",
        split: int = 0,
        train_ids: int | None = None,
    ) -> None:
        if split < 0:
            raise ValueError(f"split must be >= 0 (it seeds the id permutation); got {split}")
        if train_ids is not None and train_ids < 1:
            raise ValueError(f"train_ids must be >= 1; got {train_ids}")
        self.path = path
        self.scenario = scenario
        self.split = split
        self.train_ids = train_ids

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = resolve_dataset_dir(root, self.path, CUHK01_FOLDER).resolve()
        campus = require_dir(dataset_dir / "campus", "CUHK01", CUHK01_TREE)
        images = self._parse(campus, dataset_dir)
        if not images:
            no_images_error("CUHK01", campus)
        train_ids = self._train_ids(sorted({pid for _, pid, _ in images}))
        bench = BenchmarkSplit(name=self.name, scenario=self.scenario, protocol=PROTOCOL)
        for path, pid, cam in images:
            sample = Sample(path=str(path), pid=pid, camid=cam, scenario=self.scenario,
                            group=self._group(cam), source=self.name)
            if pid in train_ids:
                bench.train.append(sample)
            else:
                (bench.query if cam == CUHK01_CAMERA_B else bench.gallery).append(sample)
        log_unmatched_queries(bench)
        return [bench]

    @staticmethod
    def _parse(campus: Path, dataset_dir: Path) -> list[tuple[Path, int, int]]:
        parsed = []
        for path in list_images(campus, root=dataset_dir, extensions=(".png",), recursive=False):
            match = CUHK01_NAME.fullmatch(path.name)
            if match is not None:
                parsed.append((path, int(match.group(1)), cuhk01_camera(int(match.group(2)))))
        return parsed

    def _train_ids(self, ids: list[int]) -> set[int]:
        num_train = len(ids) // 2 if self.train_ids is None else self.train_ids
        if num_train >= len(ids):
            raise ValueError(
                f"CUHK01: train_ids = {num_train} leaves no test ids (the copy has {len(ids)} ids); lower it."
            )
        order = np.random.default_rng(self.split).permutation(len(ids))
        return {ids[i] for i in order[:num_train]}

    def _group(self, cam: int) -> int:
        if self.scenario == "cc":
            return 0
        return HIGH_RES if cam == CUHK01_CAMERA_A else LOW_RES


# ============================================================================= CUHK03 (for prepare mlr)
CUHK03_MAT_CANDIDATES = ("cuhk03_release/cuhk-03.mat", "cuhk-03.mat")
CUHK03_EXTRACTED_NAME = re.compile(r"(\d)_(\d{3})_([12])_(\d{2})\.png")
CUHK03_TREE = """cuhk03/
  cuhk03_release/cuhk-03.mat          MATLAB v7.3 (HDF5): 'labeled', 'detected', 'testsets'
or, as extracted by torchreid:
  images_labeled/<pair>_<id:03d>_<view>_<img:02d>.png   (and/or images_detected/)
  splits_classic_labeled.json                          (the 20 classic splits)"""
CUHK03_VIEWS_PER_CAMERA = 5
"""Columns 1-5 of a pair's table are its first camera (view 1), columns 6-10 its second (view 2)."""


@dataclass(frozen=True)
class CUHK03Image:
    """One CUHK03 image; every number is 1-based as in the extracted names."""

    pair: int
    person: int
    view: int
    index: int
    width: int
    height: int
    handle: Any = None
    """Where the pixels are: a file path (extracted form) or an h5py object reference (``.mat``)."""

    def key(self, boxes: str) -> str:
        """The extracted name relative to the dataset folder, the sort key of docs/protocols.md 6.2."""
        return f"images_{boxes}/{self.pair}_{self.person:03d}_{self.view}_{self.index:02d}.png"


class CUHK03Release:
    """CUHK03 read from ``cuhk-03.mat`` (preferred when present and h5py is installed) or torchreid's
    ``images_<boxes>/`` folder.

    The classic test splits come from the ``.mat`` file's ``testsets`` or, without it, from torchreid's
    ``splits_classic_<boxes>.json``. Use as a context manager: the ``.mat`` file stays open while
    images are read.
    """

    def __init__(self, root: str | Path, boxes: Literal["labeled", "detected"] = "labeled") -> None:
        if boxes not in ("labeled", "detected"):
            raise ValueError(f"CUHK03 boxes must be 'labeled' or 'detected'; got {boxes!r}")
        self.root = Path(root)
        self.boxes = boxes
        self.mat_path = self._find_mat()
        self.images_dir = self.root / f"images_{boxes}"
        self.split_json = self.root / f"splits_classic_{boxes}.json"
        if self.mat_path is not None and self.images_dir.is_dir() and not _h5py_available():
            self.mat_path = None  # without h5py, the extracted copy is the readable one
        if self.mat_path is None and not self.images_dir.is_dir():
            missing_layout_error("CUHK03", self.root / CUHK03_MAT_CANDIDATES[0], CUHK03_TREE)
        self._mat = None

    @property
    def layout(self) -> str:
        return "mat" if self.mat_path is not None else "images"

    def _find_mat(self) -> Path | None:
        if self.root.is_file() and self.root.suffix == ".mat":
            path, self.root = self.root, self.root.parent
            return path
        for candidate in CUHK03_MAT_CANDIDATES:
            if (self.root / candidate).is_file():
                return self.root / candidate
        return None

    def __enter__(self) -> CUHK03Release:
        if self.mat_path is not None:
            self._mat = _open_hdf5(self.mat_path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mat is not None:
            self._mat.close()
            self._mat = None

    # ------------------------------------------------------------------ images
    def images(self) -> list[CUHK03Image]:
        """Every image of the chosen boxes, sorted by extracted name."""
        found = self._images_from_mat() if self._mat is not None else self._images_from_folder()
        if not found:
            no_images_error("CUHK03", self.mat_path or self.images_dir)
        return sorted(found, key=lambda image: image.key(self.boxes))

    def _images_from_folder(self) -> list[CUHK03Image]:
        found = []
        for path in list_images(self.images_dir, extensions=(".png",), recursive=False):
            match = CUHK03_EXTRACTED_NAME.fullmatch(path.name)
            if match is None:
                continue
            with Image.open(path) as image:
                width, height = image.size
            pair, person, view, index = (int(g) for g in match.groups())
            found.append(CUHK03Image(pair, person, view, index, width, height, handle=path))
        return found

    def _images_from_mat(self) -> list[CUHK03Image]:
        mat = self._require_mat()
        if self.boxes not in mat:
            raise ValueError(f"{self.mat_path} has no '{self.boxes}' entry; is it the CUHK03 release file?")
        found = []
        for pair, pair_ref in enumerate(mat[self.boxes][0], start=1):
            table = mat[pair_ref][()].T  # h5py reads MATLAB arrays transposed: (persons, 10)
            for person, row in enumerate(table, start=1):
                for column, image_ref in enumerate(row, start=1):
                    dataset = mat[image_ref]
                    if dataset.ndim < 3 or dataset.size == 0:
                        continue  # empty cell: missing image
                    # Stored transposed as (3, W, H).
                    width, height = int(dataset.shape[1]), int(dataset.shape[2])
                    view = 1 if column <= CUHK03_VIEWS_PER_CAMERA else 2
                    found.append(CUHK03Image(pair, person, view, column, width, height, handle=image_ref))
        return found

    def open(self, image: CUHK03Image) -> Image.Image:
        """The pixels of ``image`` as an RGB image."""
        if isinstance(image.handle, Path):
            with Image.open(image.handle) as opened:
                return opened.convert("RGB")
        array = np.ascontiguousarray(self._require_mat()[image.handle][()].T)  # back to H x W x 3
        return Image.fromarray(array.astype(np.uint8), mode="RGB")

    # ------------------------------------------------------------------ splits
    def test_persons(self, split: int) -> set[tuple[int, int]]:
        """(pair, person) of the 100 test ids of classic split ``split`` (0-based, 0-19)."""
        tables = self._classic_splits()
        if not 0 <= split < len(tables):
            raise ValueError(f"CUHK03 has {len(tables)} classic splits (0-{len(tables) - 1}); got --split {split}")
        return tables[split]

    def _classic_splits(self) -> list[set[tuple[int, int]]]:
        if self._mat is not None:
            mat = self._mat
            if "testsets" not in mat:
                raise ValueError(f"{self.mat_path} has no 'testsets' entry; is it the CUHK03 release file?")
            return [{(int(p), int(i)) for p, i in mat[ref][()].T} for ref in mat["testsets"][0]]
        if not self.split_json.is_file():
            missing_layout_error("CUHK03 (classic splits)", self.split_json, CUHK03_TREE)
        return [self._persons_of_json_split(split) for split in json.loads(self.split_json.read_text())]

    @staticmethod
    def _persons_of_json_split(split: dict) -> set[tuple[int, int]]:
        """torchreid's classic split lists test images as [path, pid, camid]; the name gives (pair, person)."""
        persons = set()
        for entry in split["query"]:
            match = CUHK03_EXTRACTED_NAME.fullmatch(Path(entry[0]).name)
            if match is not None:
                persons.add((int(match.group(1)), int(match.group(2))))
        return persons

    def _require_mat(self):
        if self._mat is None:
            raise RuntimeError("open CUHK03Release with 'with' before reading the .mat file")
        return self._mat


def _h5py_available() -> bool:
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _open_hdf5(path: Path):
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs h5py (pip install h5py), or extract it first to images_<boxes>/"
        ) from err
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path} as HDF5 (MATLAB v7.3): {err}; download the file again") from err


# ============================================================================= MLR sets (mlr-v1)
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
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MLR_MANIFEST_COLUMNS:
            raise ValueError(
                f"{path} has columns {reader.fieldnames}, expected {list(MLR_MANIFEST_COLUMNS)}; "
                "rebuild it with `itkm prepare mlr`"
            )
        try:
            return [ManifestRow.from_csv(row) for row in reader]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} has a malformed row ({err}); rebuild it with `itkm prepare mlr`") from err


def _mlr_tree(folder: str, source: str) -> str:
    return f"""{folder}/            built by: itkm prepare mlr --source {source} --root <original> --out <data.root>
  bounding_box_train/<pid:04d>_c<cam>_<idx:04d>.png
  query/...  bounding_box_test/...
  manifest.csv  meta.json"""


class _MLRSource(DatasetSource):
    """An MLR set written by ``itkm prepare mlr`` (recipe mlr-v1): LR queries vs HR gallery, Market-style.

    With ``single_gallery_shot`` a second benchmark ``<name>_sgs`` scores the same query and gallery with the
    literature's protocol (docs/protocols.md 5.7): CMC averaged over 10 seeded one-HR-image-per-identity
    galleries, mAP on the full gallery; its results.json entry says ``"protocol": "single_gallery_shot"``.
    """

    source_key: ClassVar[str]
    name: ClassVar[str]

    def __init__(self, path: str | None = None, single_gallery_shot: bool = False) -> None:
        self.path = path
        self.single_gallery_shot = single_gallery_shot

    @property
    def folder(self) -> str:
        return MLR_OUTPUT_DIRS[self.source_key]

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = resolve_dataset_dir(root, self.path, self.folder).resolve()
        tree = _mlr_tree(self.folder, self.source_key)
        require_dir(dataset_dir, self.name, tree)
        if not (dataset_dir / "meta.json").is_file():
            raise FileNotFoundError(
                f"{self.name}: {dataset_dir} has no meta.json, so its build did not finish; run "
                f"`itkm prepare mlr --source {self.source_key} ...` again to complete it (see data/README.md)."
            )
        meta = json.loads((dataset_dir / "meta.json").read_text())
        if meta.get("recipe") != MLR_RECIPE or meta.get("source") != self.source_key:
            raise ValueError(
                f"{self.name}: {dataset_dir}/meta.json says recipe {meta.get('recipe')!r}, source "
                f"{meta.get('source')!r}; expected {MLR_RECIPE!r}, {self.source_key!r}. Rebuild it."
            )
        rows = read_mlr_manifest(dataset_dir / "manifest.csv")
        if not rows:
            raise ValueError(f"{self.name}: {dataset_dir}/manifest.csv lists no image; rebuild it.")
        self._check_files(dataset_dir, rows)
        bench = BenchmarkSplit(name=self.name, scenario=SCENARIO, protocol=PROTOCOL)
        target = dict(zip(MLR_FOLDERS, (bench.train, bench.query, bench.gallery)))
        for row in rows:
            if row.folder not in target or row.group not in (HIGH_RES, LOW_RES):
                raise ValueError(f"{self.name}: manifest row {row.folder}/{row.file} has an unknown folder or group")
            target[row.folder].append(Sample(
                path=str(dataset_dir / row.folder / row.file), pid=row.pid, camid=row.cam, scenario=SCENARIO,
                group=row.group, source=self.name,
            ))
        for samples in target.values():
            samples.sort(key=lambda s: s.path)
        if not bench.query or not bench.gallery:
            raise ValueError(f"{self.name}: {dataset_dir} has no query or no gallery images; rebuild it.")
        log_unmatched_queries(bench)
        if not self.single_gallery_shot:
            return [bench]
        literature = BenchmarkSplit(name=f"{self.name}_sgs", scenario=SCENARIO, protocol=PROTOCOL,
                                    query=list(bench.query), gallery=list(bench.gallery),
                                    single_gallery_shot=SINGLE_GALLERY_SHOT_DRAWS)
        return [bench, literature]

    def _check_files(self, dataset_dir: Path, rows: list[ManifestRow]) -> None:
        missing = [f"{r.folder}/{r.file}" for r in rows if not (dataset_dir / r.folder / r.file).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} images of the manifest are missing in {dataset_dir} (first: "
                f"{missing[0]}); run `itkm prepare mlr --source {self.source_key} ...` again to repair it."
            )


class MLRMarket1501(_MLRSource):
    """MLR-Market1501 (mlr-v1): LR queries of cameras 4-6 vs the HR gallery of cameras 1-3 with distractors.

    Benchmark ``mlr_market1501``. Build it with ``itkm prepare mlr --source market1501``.

    Args:
        path: the ``MLR-Market1501`` folder, absolute or relative to ``data.root``; default ``<root>/MLR-Market1501``.
        single_gallery_shot: also score ``mlr_market1501_sgs`` with the literature's protocol (docs/protocols.md 5.7).
    """

    source_key = "market1501"
    name = "mlr_market1501"


class MLRCUHK03(_MLRSource):
    """MLR-CUHK03 (mlr-v1): LR second-camera queries vs HR first-camera gallery of a classic split's 100 test ids.

    Benchmark ``mlr_cuhk03``. Build it with ``itkm prepare mlr --source cuhk03``.

    Args:
        path: the ``MLR-CUHK03`` folder, absolute or relative to ``data.root``; default ``<root>/MLR-CUHK03``.
        single_gallery_shot: also score ``mlr_cuhk03_sgs`` with the literature's protocol (docs/protocols.md 5.7).
    """

    source_key = "cuhk03"
    name = "mlr_cuhk03"


class MLRVIPeR(_MLRSource):
    """MLR-VIPeR (mlr-v1): LR ``cam_b`` queries vs HR ``cam_a`` gallery of 316 test ids.

    Benchmark ``mlr_viper``. Build it with ``itkm prepare mlr --source viper``.

    Args:
        path: the ``MLR-VIPeR`` folder, absolute or relative to ``data.root``; default ``<root>/MLR-VIPeR``.
        single_gallery_shot: also score ``mlr_viper_sgs`` with the literature's protocol (docs/protocols.md 5.7).
    """

    source_key = "viper"
    name = "mlr_viper"


# ============================================================================= shared
def unmatched_query_count(bench: BenchmarkSplit) -> int:
    """Queries whose identity has no gallery image (``evaluate_rank`` skips them)."""
    gallery_ids = {s.pid for s in bench.gallery}
    return sum(s.pid not in gallery_ids for s in bench.query)


def log_unmatched_queries(bench: BenchmarkSplit) -> None:
    count = unmatched_query_count(bench)
    if count:
        rank_zero_info(
            f"{bench.name}: {count} of {len(bench.query)} queries have no match in the gallery and are "
            "skipped at scoring"
        )
