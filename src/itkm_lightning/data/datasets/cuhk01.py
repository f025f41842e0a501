"""CUHK01 (CUHK Campus), a two-camera dataset (docs/protocols.md section 3.5): benchmark ``cuhk01``.

Camera A is group 0 (high resolution) and camera B group 1 of scenario ``cr`` unless the config tags
it otherwise; scored Market-style.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

from itkm_lightning.data.datasets.common import (
    list_images,
    log_unmatched_queries,
    no_images_error,
    require_dir,
    resolve_dataset_dir,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource
from itkm_lightning.errors import ConfigError

HIGH_RES, LOW_RES = 0, 1
PROTOCOL = "market"

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
            raise ConfigError(f"split must be >= 0 (it seeds the id permutation); got {split}")
        if train_ids is not None and train_ids < 1:
            raise ConfigError(f"train_ids must be >= 1; got {train_ids}")
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
            raise ConfigError(
                f"CUHK01: train_ids = {num_train} leaves no test ids (the copy has {len(ids)} ids); lower it."
            )
        order = np.random.default_rng(self.split).permutation(len(ids))
        return {ids[i] for i in order[:num_train]}

    def _group(self, cam: int) -> int:
        if self.scenario == "cc":
            return 0
        return HIGH_RES if cam == CUHK01_CAMERA_A else LOW_RES
