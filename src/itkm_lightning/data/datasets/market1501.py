"""Market-1501 in its official layout (docs/protocols.md sections 3.1, 5.2): benchmark ``market1501``.

Scenario ``cr``, every image at its native resolution (group 0). Also read by ``itkm prepare mlr`` to
build MLR-Market1501 (``mlr_originals.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from itkm_lightning.data.datasets.common import (
    list_images,
    log_unmatched_queries,
    no_images_error,
    relative_key,
    require_dir,
    resolve_dataset_dir,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource

SCENARIO = "cr"
HIGH_RES = 0
PROTOCOL = "market"

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
