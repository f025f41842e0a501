"""Celeb-reID and Celeb-reID-light (docs/protocols.md sections 4.3, 5.6): ``celebreid`` / ``celebreid_light``."""

from __future__ import annotations

from pathlib import Path

from itkm_lightning.data.datasets.cc_samples import SCENARIO, SampleBuilder, regex_parser
from itkm_lightning.data.datasets.common import FolderSource, first_with_train
from itkm_lightning.data.schema import BenchmarkSplit

CELEB_TRAIN_CAMERA = 0
CELEB_QUERY_CAMERA = 1
CELEB_GALLERY_CAMERA = 2
"""Sentinel cameras (docs/protocols.md 5.1): Celeb-reID has none, so queries and gallery get two different
values and the same-camera removal never fires."""
CELEB_PATTERN = r"(\d+)_"
CELEB_TREE = """{folder}/
  train/<a>_<b>_<c>.jpg             pid = a; b and c are not used
  query/...
  gallery/..."""


class CelebReID(FolderSource):
    """Celeb-reID (or Celeb-reID-light): trains on ``train/``; benchmark ``celebreid`` (``celebreid_light``).

    Query = ``query/``, gallery = ``gallery/``, ``protocol="market"`` with sentinel cameras, so nothing
    is removed. The name tokens after the pid are not read (no camera, no clothes labels).

    Args:
        path: the dataset folder, absolute or relative to ``data.root`` (default ``<root>/Celeb-reID``,
            or ``<root>/Celeb-reID-light`` with ``light``).
        light: use Celeb-reID-light.
    """

    scenario = SCENARIO

    def __init__(self, path: str | None = None, light: bool = False) -> None:
        self.path = path
        self.light = light
        self.source = "celeb_reid_light" if light else "celeb_reid"
        self.default_folder = "Celeb-reID-light" if light else "Celeb-reID"
        self.benchmark_name = "celebreid_light" if light else "celebreid"

    def load(self, root: Path) -> list[BenchmarkSplit]:
        tree = CELEB_TREE.format(folder=self.default_folder)
        builder = SampleBuilder(self.default_folder, self.source, self.dataset_dir(root), tree)
        builder.folder("")
        splits_samples = []
        for folder, camera in (("train", CELEB_TRAIN_CAMERA), ("query", CELEB_QUERY_CAMERA),
                               ("gallery", CELEB_GALLERY_CAMERA)):
            parse = regex_parser(self.default_folder, CELEB_PATTERN,
                                  lambda groups, cam=camera: (int(groups[0]), cam, None))
            splits_samples.append(builder.flat_folder(folder, parse))
        train, query, gallery = splits_samples
        split = BenchmarkSplit(name=self.benchmark_name, scenario=SCENARIO, protocol="market", query=query,
                               gallery=gallery)
        return first_with_train([split], train)
