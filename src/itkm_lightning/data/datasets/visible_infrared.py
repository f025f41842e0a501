"""Visible-infrared benchmarks: SYSU-MM01, RegDB and LLCM (docs/protocols.md sections 2, 5.3-5.5).

Groups: 0 = visible, 1 = infrared (thermal / NIR). Camera numbers are the datasets' own.
The single-shot galleries of SYSU-MM01 and LLCM are drawn exactly as the official test scripts draw
them (``random.seed(trial)``; ids ascending; cameras in the official order; ``random.choice`` over each
folder's sorted file list; missing folders skipped without a draw). Each trial's draw is stored as
indices into a candidate list holding every drawn image once, so features are extracted once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from itkm_lightning.data.datasets.common import (
    camera_number,
    missing_layout_error,
    no_images_error,
    parse_int,
    read_id_list,
    read_labelled_list,
    relative_key,
    require_dir,
    require_file,
    resolve_dataset_dir,
    sorted_file_names,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource

SCENARIO = "vi"
VISIBLE, INFRARED = 0, 1

# ----------------------------------------------------------------------------- SYSU-MM01 constants
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

# ----------------------------------------------------------------------------- RegDB constants
REGDB_CAMERAS = {"visible": 1, "thermal": 2}
"""RegDB has one camera per modality; docs/protocols.md 2.2 numbers them 1 (visible) and 2 (thermal)."""
REGDB_TREE = """RegDB/
  Visible/<id>/*.bmp
  Thermal/<id>/*.bmp
  idx/train_visible_<t>.txt, train_thermal_<t>.txt   t = 1..10; lines '<relative path> <label>'
  idx/test_visible_<t>.txt,  test_thermal_<t>.txt"""

# ----------------------------------------------------------------------------- LLCM constants
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


# ============================================================================= shared helpers
def _first_with_train(splits: list[BenchmarkSplit], train: list[Sample]) -> list[BenchmarkSplit]:
    """Give the training set to the first benchmark only: the datamodule merges every ``train`` list."""
    if splits:
        splits[0].train = train
    return splits


def _id_folder(pid: int) -> str:
    return f"{pid:04d}"


def _walk_camera_folders(
    base: Path, ids: Sequence[int], cameras: Sequence[int]
) -> list[tuple[Path, int, int]]:
    """(path, pid, camera) of every image under ``base/camN/<pid:04d>/``, in the official walk order.

    Ids ascending, then cameras in the given order, then file names in string order; missing folders
    are skipped.
    """
    found: list[tuple[Path, int, int]] = []
    for pid in sorted(set(ids)):
        for cam in cameras:
            folder = base / f"cam{cam}" / _id_folder(pid)
            found.extend((folder / name, pid, cam) for name in sorted_file_names(folder))
    return found


def _official_single_shot_draw(base: Path, ids: Sequence[int], cameras: Sequence[int], trial: int) -> list[Path]:
    """One image per (id, camera): the official SYSU-MM01 / LLCM gallery draw of ``trial``.

    Uses its own ``random.Random(trial)``, which yields exactly the numbers ``random.seed(trial)`` gives
    the global generator, without disturbing the caller's random state. Folders that are missing or hold
    no image consume no random number.
    """
    rng = random.Random(trial)
    drawn: list[Path] = []
    for pid in sorted(set(ids)):
        for cam in cameras:
            folder = base / f"cam{cam}" / _id_folder(pid)
            names = sorted_file_names(folder)
            if names:
                drawn.append(folder / rng.choice(names))
    return drawn


def _candidates_and_trials(draws: list[list[Path]]) -> tuple[list[Path], list[list[int]]]:
    """Every drawn path once (in order of first draw) and, per trial, the indices it uses in draw order."""
    position: dict[Path, int] = {}
    trials: list[list[int]] = []
    for draw in draws:
        trials.append([position.setdefault(path, len(position)) for path in draw])
    return list(position), trials


def _check_trials(trials: int) -> None:
    if trials < 1:
        raise ValueError(f"trials must be >= 1 (the official protocol uses 10); got {trials}")


# ============================================================================= SYSU-MM01
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
        raise ValueError(f"SYSU-MM01 mode must be 'all' or 'indoor'; got {mode!r}")
    root = require_dir(Path(root), "SYSU-MM01", SYSU_TREE)
    ids = _sysu_ids(root, "test")
    return [str(p) for p in _official_single_shot_draw(root, ids, SYSU_GALLERY_CAMERAS[mode], trial)]


class SYSUMM01(DatasetSource):
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
        modes = ["all", "indoor"] if modes is None else list(modes)
        unknown = [m for m in modes if m not in SYSU_GALLERY_CAMERAS]
        if unknown or not modes:
            raise ValueError(f"SYSU-MM01 modes must be a non-empty subset of ['all', 'indoor']; got {modes}")
        _check_trials(trials)
        self.path = path
        self.modes = modes
        self.trials = trials

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "SYSU-MM01", SYSU_TREE)
        train_ids = set(_sysu_ids(dataset_dir, "train")) | set(_sysu_ids(dataset_dir, "val"))
        test_ids = _sysu_ids(dataset_dir, "test")
        train = self._training_samples(dataset_dir, train_ids)
        query = [_sysu_sample(*entry) for entry in _walk_camera_folders(dataset_dir, test_ids, SYSU_INFRARED_CAMERAS)]
        if not query:
            no_images_error("SYSU-MM01", f"{dataset_dir}/cam3 and cam6 (test ids)")
        splits = [self._benchmark(dataset_dir, test_ids, mode, query) for mode in self.modes]
        return _first_with_train(splits, train)

    def _training_samples(self, dataset_dir: Path, ids: set[int]) -> list[Sample]:
        entries = _walk_camera_folders(dataset_dir, sorted(ids), SYSU_ALL_CAMERAS)
        entries.sort(key=lambda e: relative_key(e[0], dataset_dir))
        if not entries:
            no_images_error("SYSU-MM01", f"{dataset_dir}/cam1..cam6 (train and val ids)")
        return [_sysu_sample(*entry) for entry in entries]

    def _benchmark(self, dataset_dir: Path, test_ids: list[int], mode: str, query: list[Sample]) -> BenchmarkSplit:
        cameras = SYSU_GALLERY_CAMERAS[mode]
        draws = [_official_single_shot_draw(dataset_dir, test_ids, cameras, t) for t in range(self.trials)]
        candidates, trial_indices = _candidates_and_trials(draws)
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


# ============================================================================= RegDB
class RegDB(DatasetSource):
    """RegDB, one of its 10 trials: benchmarks ``regdb_v2t`` (visible -> thermal) and ``regdb_t2v``.

    Training and test sets come from the trial's ``idx`` lists; the pid is the list label. Multi-shot
    galleries, no removal (``protocol="regdb"``). The published protocol trains and tests one model per
    trial and averages the 10 results: run once per ``trial``.

    Args:
        path: the RegDB folder, absolute or relative to ``data.root`` (default ``<root>/RegDB``).
        trial: which train/test lists to use, 1..10.
        directions: directions to report: ``v2t`` -> ``regdb_v2t``, ``t2v`` -> ``regdb_t2v``.
    """

    source = "regdb"
    scenario = SCENARIO
    default_folder = "RegDB"

    def __init__(
        self,
        path: str | None = None,
        trial: int = 1,
        directions: list[Literal["v2t", "t2v"]] | None = None,
    ) -> None:
        if not 1 <= trial <= 10:
            raise ValueError(f"RegDB trial must be 1..10 (idx/*_<trial>.txt); got {trial}")
        directions = ["v2t", "t2v"] if directions is None else list(directions)
        if not directions or any(d not in ("v2t", "t2v") for d in directions):
            raise ValueError(f"RegDB directions must be a non-empty subset of ['v2t', 't2v']; got {directions}")
        self.path = path
        self.trial = trial
        self.directions = directions

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "RegDB", REGDB_TREE)
        train = self._list_samples(dataset_dir, "train", "visible") + self._list_samples(dataset_dir, "train", "thermal")
        test = {modality: self._list_samples(dataset_dir, "test", modality) for modality in REGDB_CAMERAS}
        roles = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}
        splits = [
            BenchmarkSplit(name=f"regdb_{d}", scenario=SCENARIO, protocol="regdb",
                           query=list(test[roles[d][0]]), gallery=list(test[roles[d][1]]))
            for d in self.directions
        ]
        return _first_with_train(splits, train)

    def _list_samples(self, dataset_dir: Path, split: str, modality: str) -> list[Sample]:
        """Samples of one ``idx/<split>_<modality>_<trial>.txt`` list, in list order."""
        list_file = require_file(dataset_dir / "idx" / f"{split}_{modality}_{self.trial}.txt", "RegDB", REGDB_TREE)
        entries = read_labelled_list(list_file)
        if not entries:
            raise ValueError(f"RegDB: {list_file} lists no images; re-extract the official idx files")
        group = VISIBLE if modality == "visible" else INFRARED
        samples = []
        for relative, label in entries:
            path = dataset_dir / relative
            if not path.is_file():
                missing_layout_error("RegDB", path, REGDB_TREE)
            samples.append(Sample(path=str(path), pid=label, camid=REGDB_CAMERAS[modality], scenario=SCENARIO,
                                  group=group, source=self.source))
        return samples


# ============================================================================= LLCM
class LLCM(DatasetSource):
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
        directions = ["i2v", "v2i"] if directions is None else list(directions)
        if not directions or any(d not in ("i2v", "v2i") for d in directions):
            raise ValueError(f"LLCM directions must be a non-empty subset of ['i2v', 'v2i']; got {directions}")
        _check_trials(trials)
        self.path = path
        self.directions = directions
        self.trials = trials

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "LLCM", LLCM_TREE)
        train = self._train_samples(dataset_dir, "vis") + self._train_samples(dataset_dir, "nir")
        test_ids = read_id_list(require_file(dataset_dir / "idx" / "test_id.txt", "LLCM", LLCM_TREE))
        builders = {"i2v": self._infrared_to_visible, "v2i": self._visible_to_infrared}
        splits = [builders[d](dataset_dir, test_ids) for d in self.directions]
        return _first_with_train(splits, train)

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
            raise ValueError(f"LLCM: {list_file} lists no images; re-extract the official idx files")
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
        paths = [entry[0] for entry in _walk_camera_folders(base, test_ids, cameras)]
        if not paths:
            no_images_error("LLCM", f"{base} (test ids)")
        return self._test_samples(dataset_dir, modality, paths)

    def _drawn_test(self, dataset_dir: Path, modality: str, test_ids: list[int]) -> tuple[list[Sample], list[list[int]]]:
        base = require_dir(dataset_dir / f"test_{modality}", "LLCM", LLCM_TREE)
        cameras = LLCM_VIS_CAMERAS if modality == "vis" else LLCM_NIR_CAMERAS
        draws = [_official_single_shot_draw(base, test_ids, cameras, t) for t in range(self.trials)]
        candidates, trial_indices = _candidates_and_trials(draws)
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
