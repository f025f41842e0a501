"""CUHK03 as released (docs/protocols.md section 3.2): the source of MLR-CUHK03, read by ``itkm prepare mlr``.

:class:`CUHK03Release` reads ``cuhk-03.mat`` (h5py) or torchreid's extracted ``images_<boxes>/``
folder, and the 20 classic test splits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from itkm_lightning.data.datasets.common import list_images, missing_layout_error, no_images_error
from itkm_lightning.errors import ConfigError, DataFormatError, MissingPackageError

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
            raise ConfigError(f"CUHK03 boxes must be 'labeled' or 'detected'; got {boxes!r}")
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
            raise DataFormatError(f"{self.mat_path} has no '{self.boxes}' entry; is it the CUHK03 release file?")
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
            raise ConfigError(f"CUHK03 has {len(tables)} classic splits (0-{len(tables) - 1}); got --split {split}")
        return tables[split]

    def _classic_splits(self) -> list[set[tuple[int, int]]]:
        if self._mat is not None:
            mat = self._mat
            if "testsets" not in mat:
                raise DataFormatError(f"{self.mat_path} has no 'testsets' entry; is it the CUHK03 release file?")
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
        raise MissingPackageError(
            f"reading {path} needs h5py (pip install h5py), or extract it first to images_<boxes>/"
        ) from err
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(f"cannot read {path} as HDF5 (MATLAB v7.3): {err}; download the file again") from err
