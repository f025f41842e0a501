"""LLCM (docs/protocols.md sections 2.3, 5.5): visible and near-infrared cameras, low-light scenes.

Groups: 0 = visible, 1 = infrared (NIR). Camera numbers are the dataset's own. The single-shot draws
are the official ones, as in SYSU-MM01 (``common.official_single_shot_draw``).
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
    missing_layout_error,
    no_images_error,
    official_single_shot_draw,
    parse_int,
    read_id_list,
    read_labelled_list,
    require_dir,
    require_file,
    walk_camera_folders,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.errors import DataFormatError

SCENARIO = "vi"
VISIBLE, INFRARED = 0, 1

LLCM_VIS_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
"""The official camera lists (DEEN ``data_manager.py``); LLCM has no NIR cam3 folder."""
LLCM_UNKNOWN_CAMERA = 0
"""Camera of a training image whose list path has no ``camN`` component (training never reads it)."""
LLCM_TREE = """LLCM/
  idx/train_vis.txt, idx/train_nir.txt   lines '<relative path> <label>'
  idx/test_id.txt                        one line: comma-separated ids
  test_vis/cam1/ ... cam9/<pid:04d>/*.jpg
  test_nir/cam1, cam2, cam4 ... cam9/<pid:04d>/*.jpg"""


class LLCM(FolderSource):
    """LLCM: benchmarks ``llcm_i2v`` (the official default) and ``llcm_v2i`` (DEEN's transposed V->I).

    * ``llcm_i2v``: queries = all ``test_nir`` images of the test ids; per trial a single-shot gallery
      drawn from ``test_vis/cam1..9`` as in SYSU-MM01.
    * ``llcm_v2i``: as DEEN's ``test.py`` scores it: per trial a single-shot draw from
      ``test_nir/cam{1,2,4..9}`` acts as the *queries*, against *all* ``test_vis`` images as gallery.

    Both use ``protocol="llcm"``. Training images come from ``idx/train_{vis,nir}.txt`` (pid = list
    label). Their camera is read from a ``camN`` path component; lists without one get camera 0
    (``LLCM_UNKNOWN_CAMERA``), which only pseudo-label monitoring could read.

    Args:
        path: the LLCM folder, absolute or relative to ``data.root`` (default ``<root>/LLCM``).
        directions: directions to report: ``i2v`` -> ``llcm_i2v``, ``v2i`` -> ``llcm_v2i``.
        trials: single-shot draws averaged (seeds 0..trials-1; the official protocol uses 10).
    """

    source = "llcm"
    scenario = SCENARIO
    default_folder = "LLCM"

    def __init__(
        self,
        path: str | None = None,
        directions: list[Literal["i2v", "v2i"]] | None = None,
        trials: int = 10,
    ) -> None:
        directions = chosen_subset(directions, ("i2v", "v2i"), "LLCM directions")
        check_trials(trials)
        self.path = path
        self.directions = directions
        self.trials = trials

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "LLCM", LLCM_TREE)
        train = self._train_samples(dataset_dir, "vis") + self._train_samples(dataset_dir, "nir")
        test_ids = read_id_list(require_file(dataset_dir / "idx" / "test_id.txt", "LLCM", LLCM_TREE))
        builders = {"i2v": self._infrared_to_visible, "v2i": self._visible_to_infrared}
        splits = [builders[d](dataset_dir, test_ids) for d in self.directions]
        return first_with_train(splits, train)

    # ------------------------------------------------------------------ training
    def _train_samples(self, dataset_dir: Path, modality: str) -> list[Sample]:
        list_file = require_file(dataset_dir / "idx" / f"train_{modality}.txt", "LLCM", LLCM_TREE)
        group = VISIBLE if modality == "vis" else INFRARED
        samples = []
        for relative, label in read_labelled_list(list_file):
            path = dataset_dir / relative
            if not path.is_file():
                missing_layout_error("LLCM", path, LLCM_TREE)
            samples.append(Sample(path=str(path), pid=label, camid=self._train_camera(relative), scenario=SCENARIO,
                                  group=group, source=self.source))
        if not samples:
            raise DataFormatError(f"LLCM: {list_file} lists no images; re-extract the official idx files")
        return samples

    @staticmethod
    def _train_camera(relative: str) -> int:
        cameras = [c for c in (camera_number(part) for part in Path(relative).parts[:-1]) if c is not None]
        return cameras[-1] if cameras else LLCM_UNKNOWN_CAMERA

    # ------------------------------------------------------------------ test
    def _test_samples(self, dataset_dir: Path, modality: str, paths: list[Path]) -> list[Sample]:
        group = VISIBLE if modality == "vis" else INFRARED
        samples = []
        for path in paths:
            cam_part, pid_part, _ = path.relative_to(dataset_dir / f"test_{modality}").parts
            samples.append(Sample(path=str(path), pid=parse_int(pid_part, "identity folder", path),
                                  camid=camera_number(cam_part), scenario=SCENARIO, group=group, source=self.source))
        return samples

    def _all_test(self, dataset_dir: Path, modality: str, test_ids: list[int]) -> list[Sample]:
        base = require_dir(dataset_dir / f"test_{modality}", "LLCM", LLCM_TREE)
        cameras = LLCM_VIS_CAMERAS if modality == "vis" else LLCM_NIR_CAMERAS
        paths = [entry[0] for entry in walk_camera_folders(base, test_ids, cameras)]
        if not paths:
            no_images_error("LLCM", f"{base} (test ids)")
        return self._test_samples(dataset_dir, modality, paths)

    def _drawn_test(self, dataset_dir: Path, modality: str, test_ids: list[int]) -> tuple[list[Sample], list[list[int]]]:
        base = require_dir(dataset_dir / f"test_{modality}", "LLCM", LLCM_TREE)
        cameras = LLCM_VIS_CAMERAS if modality == "vis" else LLCM_NIR_CAMERAS
        draws = [official_single_shot_draw(base, test_ids, cameras, t) for t in range(self.trials)]
        candidates, trial_indices = candidates_and_trials(draws)
        if not candidates:
            no_images_error("LLCM", f"{base} (test ids)")
        return self._test_samples(dataset_dir, modality, candidates), trial_indices

    def _infrared_to_visible(self, dataset_dir: Path, test_ids: list[int]) -> BenchmarkSplit:
        query = self._all_test(dataset_dir, "nir", test_ids)
        gallery, trial_indices = self._drawn_test(dataset_dir, "vis", test_ids)
        return BenchmarkSplit(name="llcm_i2v", scenario=SCENARIO, protocol="llcm", query=query, gallery=gallery,
                              trials=[(None, indices) for indices in trial_indices])

    def _visible_to_infrared(self, dataset_dir: Path, test_ids: list[int]) -> BenchmarkSplit:
        # DEEN scores the transposed matrix: the sampled NIR set acts as queries against all VIS images.
        query, trial_indices = self._drawn_test(dataset_dir, "nir", test_ids)
        gallery = self._all_test(dataset_dir, "vis", test_ids)
        return BenchmarkSplit(name="llcm_v2i", scenario=SCENARIO, protocol="llcm", query=query, gallery=gallery,
                              trials=[(indices, None) for indices in trial_indices])
