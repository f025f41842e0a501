"""SYSU-MM01 (docs/protocols.md sections 2.1, 5.3): visible cameras 1, 2, 4, 5 and infrared cameras 3, 6.

Groups: 0 = visible, 1 = infrared. Camera numbers are the dataset's own. The single-shot galleries are
drawn exactly as the official test script draws them (``common.official_single_shot_draw``); each
trial's draw is stored as indices into a candidate list holding every drawn image once, so features are
extracted once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from itkm_lightning.data.datasets.common import (
    FolderSource,
    camera_number,
    candidates_and_trials,
    check_trials,
    chosen_subset,
    first_with_train,
    no_images_error,
    official_single_shot_draw,
    read_id_list,
    relative_key,
    require_dir,
    require_file,
    walk_camera_folders,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.errors import ConfigError

SCENARIO = "vi"
VISIBLE, INFRARED = 0, 1

SYSU_ALL_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_INFRARED_CAMERAS = (3, 6)
SYSU_GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
"""Visible cameras of each search mode, in the order the official script walks them."""
SYSU_TREE = """SYSU-MM01/
  cam1/ ... cam6/          one folder per camera
    0001/0001.jpg ...      <pid:04d>/<img:04d>.jpg (some ids lack some cameras)
  exp/train_id.txt         one line: comma-separated ids
  exp/val_id.txt
  exp/test_id.txt"""


def _sysu_sample(path: Path, pid: int, cam: int) -> Sample:
    group = INFRARED if cam in SYSU_INFRARED_CAMERAS else VISIBLE
    return Sample(path=str(path), pid=pid, camid=cam, scenario=SCENARIO, group=group, source=SYSUMM01.source)


def _sysu_ids(dataset_dir: Path, split: str) -> list[int]:
    return read_id_list(require_file(dataset_dir / "exp" / f"{split}_id.txt", "SYSU-MM01", SYSU_TREE))


def sysu_gallery(root: str | Path, mode: Literal["all", "indoor"], trial: int) -> list[str]:
    """The official SYSU-MM01 single-shot gallery of one trial (docs/protocols.md 5.3), as image paths.

    ``random.seed(trial)``; ids of ``exp/test_id.txt`` ascending; cameras 1, 2, 4, 5 (``all``) or
    1, 2 (``indoor``) in that order; ``random.choice`` over each ``camX/<id:04d>`` folder's sorted file
    names; a missing folder draws nothing and consumes no random number. Only image files are
    candidates (a clean copy holds nothing else, so this equals the official draw).

    Args:
        root: the SYSU-MM01 folder (holding ``cam1`` ... ``cam6`` and ``exp/``).
        mode: ``all`` or ``indoor`` search.
        trial: the trial number, 0-9 in the official protocol.
    """
    if mode not in SYSU_GALLERY_CAMERAS:
        raise ConfigError(f"SYSU-MM01 mode must be 'all' or 'indoor'; got {mode!r}")
    root = require_dir(Path(root), "SYSU-MM01", SYSU_TREE)
    ids = _sysu_ids(root, "test")
    return [str(p) for p in official_single_shot_draw(root, ids, SYSU_GALLERY_CAMERAS[mode], trial)]


class SYSUMM01(FolderSource):
    """SYSU-MM01: trains on train_id ∪ val_id (all six cameras); benchmarks ``sysu_all`` and ``sysu_indoor``.

    Queries are all test-id images of the infrared cameras 3 and 6; each benchmark averages ``trials``
    official single-shot gallery draws and is scored with ``protocol="sysu"``.

    Args:
        path: the SYSU-MM01 folder, absolute or relative to ``data.root`` (default ``<root>/SYSU-MM01``).
        modes: search modes to report: ``all`` -> ``sysu_all``, ``indoor`` -> ``sysu_indoor``.
        trials: gallery draws averaged per mode (seeds 0..trials-1; the official protocol uses 10).
    """

    source = "sysu_mm01"
    scenario = SCENARIO
    default_folder = "SYSU-MM01"

    def __init__(
        self,
        path: str | None = None,
        modes: list[Literal["all", "indoor"]] | None = None,
        trials: int = 10,
    ) -> None:
        modes = chosen_subset(modes, tuple(SYSU_GALLERY_CAMERAS), "SYSU-MM01 modes")
        check_trials(trials)
        self.path = path
        self.modes = modes
        self.trials = trials

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "SYSU-MM01", SYSU_TREE)
        train_ids = set(_sysu_ids(dataset_dir, "train")) | set(_sysu_ids(dataset_dir, "val"))
        test_ids = _sysu_ids(dataset_dir, "test")
        train = self._training_samples(dataset_dir, train_ids)
        query = [_sysu_sample(*entry) for entry in walk_camera_folders(dataset_dir, test_ids, SYSU_INFRARED_CAMERAS)]
        if not query:
            no_images_error("SYSU-MM01", f"{dataset_dir}/cam3 and cam6 (test ids)")
        splits = [self._benchmark(dataset_dir, test_ids, mode, query) for mode in self.modes]
        return first_with_train(splits, train)

    def _training_samples(self, dataset_dir: Path, ids: set[int]) -> list[Sample]:
        entries = walk_camera_folders(dataset_dir, sorted(ids), SYSU_ALL_CAMERAS)
        entries.sort(key=lambda e: relative_key(e[0], dataset_dir))
        if not entries:
            no_images_error("SYSU-MM01", f"{dataset_dir}/cam1..cam6 (train and val ids)")
        return [_sysu_sample(*entry) for entry in entries]

    def _benchmark(self, dataset_dir: Path, test_ids: list[int], mode: str, query: list[Sample]) -> BenchmarkSplit:
        cameras = SYSU_GALLERY_CAMERAS[mode]
        draws = [official_single_shot_draw(dataset_dir, test_ids, cameras, t) for t in range(self.trials)]
        candidates, trial_indices = candidates_and_trials(draws)
        if not candidates:
            no_images_error("SYSU-MM01", f"{dataset_dir}/cam{{{','.join(map(str, cameras))}}} (test ids)")
        gallery = [self._sample_from_path(p, dataset_dir) for p in candidates]
        return BenchmarkSplit(
            name=f"sysu_{mode}", scenario=SCENARIO, protocol="sysu", query=list(query), gallery=gallery,
            trials=[(None, indices) for indices in trial_indices],
        )

    @staticmethod
    def _sample_from_path(path: Path, dataset_dir: Path) -> Sample:
        cam_part, pid_part, _ = path.relative_to(dataset_dir).parts
        return _sysu_sample(path, int(pid_part), camera_number(cam_part))
