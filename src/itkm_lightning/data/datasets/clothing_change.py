"""Clothing-change benchmarks: PRCC, LTCC, VC-Clothes, Celeb-reID (docs/protocols.md sections 4, 5.6).

Every image is group 0; the datamodule adds the clothing-agnostic group-1 view of each training image
itself. When a dataset folder holds ``masks/`` mirroring its image tree (``masks/<relative path>.png``,
a human-parsing label map such as SCHP-LIP output), each sample's ``mask_path`` points to its mask;
read them with ``ClothesMasker(mask_format="parsing")``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from itkm_lightning.data.datasets.common import (
    list_images,
    no_images_error,
    parse_int,
    require_dir,
    resolve_dataset_dir,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource

SCENARIO = "cc"
ORIGINAL = 0
MASKS_FOLDER = "masks"

Labels = tuple[int, int, str | None]
"""(pid, camera, clothes key) parsed from one file."""


# ============================================================================= shared helpers
def mask_path_for(image: Path, dataset_dir: Path) -> str | None:
    """``<dataset>/masks/<relative image path with .png suffix>`` when that file exists, else None."""
    mask = dataset_dir / MASKS_FOLDER / image.relative_to(dataset_dir).with_suffix(".png")
    return str(mask) if mask.is_file() else None


class _Builder:
    """Makes the samples of one dataset folder: source name, masks and ``cc`` tags in one place."""

    def __init__(self, name: str, source: str, dataset_dir: Path, tree: str) -> None:
        self.name = name
        self.source = source
        self.dataset_dir = dataset_dir
        self.tree = tree
        self.has_masks = (dataset_dir / MASKS_FOLDER).is_dir()

    def sample(self, path: Path, pid: int, camid: int, clothes: str | None) -> Sample:
        mask = mask_path_for(path, self.dataset_dir) if self.has_masks else None
        return Sample(path=str(path), pid=pid, camid=camid, scenario=SCENARIO, group=ORIGINAL,
                      source=self.source, clothes=clothes, mask_path=mask)

    def folder(self, relative: str) -> Path:
        return require_dir(self.dataset_dir / relative, self.name, self.tree)

    def flat_folder(self, relative: str, parse: Callable[[str, Path], Labels | None]) -> list[Sample]:
        """Samples of the images directly in ``<dataset>/<relative>``, sorted; ``parse`` None = junk, dropped."""
        folder = self.folder(relative)
        images = list_images(folder, root=self.dataset_dir, recursive=False)
        if not images:
            no_images_error(self.name, folder)
        samples = []
        for path in images:
            labels = parse(path.name, path)
            if labels is not None:
                samples.append(self.sample(path, *labels))
        return samples


def _regex_parser(name: str, pattern: str, make: Callable[[tuple[str, ...]], Labels]) -> Callable[[str, Path], Labels | None]:
    """Parse a file name with ``pattern`` (matched at its start); pid -1 marks junk."""
    compiled = re.compile(pattern)

    def parse(file_name: str, path: Path) -> Labels | None:
        match = compiled.match(file_name)
        if match is None:
            raise ValueError(f"{name}: file name {file_name!r} does not follow the official pattern "
                             f"{pattern!r} ({path}); remove files that are not part of the dataset")
        labels = make(match.groups())
        return None if labels[0] == -1 else labels

    return parse


def _first_with_train(splits: list[BenchmarkSplit], train: list[Sample]) -> list[BenchmarkSplit]:
    """Give the training set to the first benchmark only: the datamodule merges every ``train`` list."""
    splits[0].train = train
    return splits


# ============================================================================= PRCC
PRCC_CAMERAS = {"A": 1, "B": 2, "C": 3}
PRCC_TREE = """prcc/
  rgb/train/<pid>/<A|B|C>_*.jpg     camera = first letter of the file name
  rgb/val/<pid>/...                 (held out, unused)
  rgb/test/A/<pid>/*.jpg            gallery
  rgb/test/B/<pid>/*.jpg            same-clothes queries
  rgb/test/C/<pid>/*.jpg            cloth-changing queries
  masks/rgb/...                     optional parsing maps mirroring rgb/ (.png)"""


def _prcc_pid_and_name(path: Path, folder: Path) -> tuple[int, str]:
    """(pid, file name) of ``folder/<pid>/<file>``; anything else is not the PRCC layout."""
    parts = path.relative_to(folder).parts
    if len(parts) != 2:
        raise ValueError(f"PRCC: {path} is not in {folder}/<pid>/<image>; keep the official layout (see data/README.md)")
    return parse_int(parts[0], "identity folder", path), parts[1]


def _prcc_clothes(pid: int, camera_letter: str) -> str:
    """Cameras A and B show the same outfit, camera C a different one (docs/protocols.md 4.1)."""
    return f"{pid}C" if camera_letter == "C" else f"{pid}"


class PRCC(DatasetSource):
    """PRCC: trains on ``rgb/train``; benchmarks ``prcc_sc`` (B -> A) and ``prcc_cc`` (C -> A).

    The gallery is all of ``rgb/test/A`` (multi-shot, as in CAL) unless ``single_shot``: then each of
    ``trials`` draws takes one A image per id (``random.seed(t)``, ids ascending, ``random.choice`` over
    the sorted files of ``test/A/<pid>``) and metrics are averaged. Both use ``protocol="market"``.

    Args:
        path: the PRCC folder, absolute or relative to ``data.root`` (default ``<root>/prcc``).
        single_shot: draw a one-image-per-id gallery per trial instead of using all A images.
        trials: single-shot draws averaged (seeds 0..trials-1); ignored without ``single_shot``.
    """

    source = "prcc"
    scenario = SCENARIO
    default_folder = "prcc"

    def __init__(self, path: str | None = None, single_shot: bool = False, trials: int = 10) -> None:
        if trials < 1:
            raise ValueError(f"PRCC trials must be >= 1; got {trials}")
        self.path = path
        self.single_shot = single_shot
        self.trials = trials

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = _Builder("PRCC", self.source, self.dataset_dir(root), PRCC_TREE)
        builder.folder("")
        train = self._train(builder)
        gallery_by_pid = self._test_camera(builder, "A")
        gallery, trials = self._gallery(gallery_by_pid)
        splits = []
        for name, letter in (("prcc_sc", "B"), ("prcc_cc", "C")):
            query = [s for samples in self._test_camera(builder, letter).values() for s in samples]
            splits.append(BenchmarkSplit(name=name, scenario=SCENARIO, protocol="market", query=query,
                                         gallery=list(gallery), trials=trials))
        return _first_with_train(splits, train)

    @staticmethod
    def _train(builder: _Builder) -> list[Sample]:
        folder = builder.folder("rgb/train")
        samples = []
        for path in list_images(folder, root=builder.dataset_dir):
            pid, file_name = _prcc_pid_and_name(path, folder)
            letter = file_name[:1]
            if letter not in PRCC_CAMERAS:
                raise ValueError(f"PRCC: training file {path} should start with the camera letter A, B or C")
            samples.append(builder.sample(path, pid, PRCC_CAMERAS[letter], _prcc_clothes(pid, letter)))
        if not samples:
            no_images_error("PRCC", folder)
        return samples

    @staticmethod
    def _test_camera(builder: _Builder, letter: str) -> dict[int, list[Sample]]:
        """Samples of ``rgb/test/<letter>`` per pid (ids ascending, files sorted)."""
        folder = builder.folder(f"rgb/test/{letter}")
        by_pid: dict[int, list[Sample]] = {}
        for path in list_images(folder, root=builder.dataset_dir):
            pid, _ = _prcc_pid_and_name(path, folder)
            sample = builder.sample(path, pid, PRCC_CAMERAS[letter], _prcc_clothes(pid, letter))
            by_pid.setdefault(pid, []).append(sample)
        if not by_pid:
            no_images_error("PRCC", folder)
        return dict(sorted(by_pid.items()))

    def _gallery(self, by_pid: dict[int, list[Sample]]) -> tuple[list[Sample], list | None]:
        """All A images, or the union of the single-shot draws and each draw's indices."""
        everything = [s for samples in by_pid.values() for s in samples]
        if not self.single_shot:
            return everything, None
        position = {s.path: i for i, s in enumerate(everything)}
        trials = []
        for trial in range(self.trials):
            rng = random.Random(trial)  # same stream as random.seed(trial)
            # Each pid's samples are already in sorted file-name order.
            drawn = [rng.choice(samples) for samples in by_pid.values()]
            trials.append((None, [position[s.path] for s in drawn]))
        used = sorted({i for _, indices in trials for i in indices})
        remap = {old: new for new, old in enumerate(used)}
        return [everything[i] for i in used], [(None, [remap[i] for i in indices]) for _, indices in trials]


# ============================================================================= LTCC
LTCC_TREE = """LTCC_ReID/
  train/<pid:03d>_<clothes>_c<cam>_<frame>.png
  query/...                         same naming
  test/...                          the gallery
  info/cloth-change_id_test.txt     (not used: no id restriction)"""
LTCC_PATTERN = r"(\d+)_(\d+)_c(\d+)"


def _ltcc_labels(groups: tuple[str, ...]) -> Labels:
    pid, clothes, cam = (int(g) for g in groups)
    return pid, cam, f"{pid}_{clothes}"


class LTCC(DatasetSource):
    """LTCC: trains on ``train/``; benchmarks ``ltcc_general`` and ``ltcc_cc`` (+ ``ltcc_sc`` on request).

    Query = ``query/``, gallery = ``test/``, no id restriction. Protocols ``market`` (general),
    ``cloth_changing`` and ``same_clothes``; clothes key ``<pid>_<clothes>``.

    Args:
        path: the LTCC folder, absolute or relative to ``data.root`` (default ``<root>/LTCC_ReID``).
        same_clothes: also report the same-clothes setting as ``ltcc_sc``.
    """

    source = "ltcc"
    scenario = SCENARIO
    default_folder = "LTCC_ReID"

    def __init__(self, path: str | None = None, same_clothes: bool = False) -> None:
        self.path = path
        self.same_clothes = same_clothes

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = _Builder("LTCC", self.source, self.dataset_dir(root), LTCC_TREE)
        builder.folder("")
        parse = _regex_parser("LTCC", LTCC_PATTERN, _ltcc_labels)
        train, query, gallery = (builder.flat_folder(f, parse) for f in ("train", "query", "test"))
        settings = [("ltcc_general", "market"), ("ltcc_cc", "cloth_changing")]
        if self.same_clothes:
            settings.append(("ltcc_sc", "same_clothes"))
        splits = [BenchmarkSplit(name=name, scenario=SCENARIO, protocol=protocol, query=list(query),
                                 gallery=list(gallery)) for name, protocol in settings]
        return _first_with_train(splits, train)


# ============================================================================= VC-Clothes
VCCLOTHES_TREE = """VC-Clothes/
  train/<pid:04d>-<cam:02d>-<clothes:02d>-<idx:02d>.jpg
  query/...                         same naming
  gallery/..."""
VCCLOTHES_PATTERN = r"(\d+)-(\d+)-(\d+)-(\d+)"
VCCLOTHES_SETTINGS: dict[str, tuple[int, ...] | None] = {"all": None, "sc": (2, 3), "cc": (3, 4)}
"""Cameras kept in both query and gallery per setting (docs/protocols.md 5.6); None keeps all four."""


def _vcclothes_labels(groups: tuple[str, ...]) -> Labels:
    pid, cam, clothes, _ = (int(g) for g in groups)
    return pid, cam, f"{pid}_{clothes}"


class VCClothes(DatasetSource):
    """VC-Clothes: trains on ``train/``; benchmarks ``vcclothes_all``, ``vcclothes_sc``, ``vcclothes_cc``.

    Each setting keeps only some cameras in both query and gallery (all; cameras 2 and 3; cameras 3
    and 4) and is scored with ``protocol="market"``.

    Args:
        path: the VC-Clothes folder, absolute or relative to ``data.root`` (default ``<root>/VC-Clothes``).
    """

    source = "vc_clothes"
    scenario = SCENARIO
    default_folder = "VC-Clothes"

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = _Builder("VC-Clothes", self.source, self.dataset_dir(root), VCCLOTHES_TREE)
        builder.folder("")
        parse = _regex_parser("VC-Clothes", VCCLOTHES_PATTERN, _vcclothes_labels)
        train, query, gallery = (builder.flat_folder(f, parse) for f in ("train", "query", "gallery"))
        splits = []
        for setting, cameras in VCCLOTHES_SETTINGS.items():
            keep = (lambda s: True) if cameras is None else (lambda s, c=cameras: s.camid in c)
            splits.append(BenchmarkSplit(name=f"vcclothes_{setting}", scenario=SCENARIO, protocol="market",
                                         query=[s for s in query if keep(s)], gallery=[s for s in gallery if keep(s)]))
        return _first_with_train(splits, train)


# ============================================================================= Celeb-reID
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


class CelebReID(DatasetSource):
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

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        tree = CELEB_TREE.format(folder=self.default_folder)
        builder = _Builder(self.default_folder, self.source, self.dataset_dir(root), tree)
        builder.folder("")
        splits_samples = []
        for folder, camera in (("train", CELEB_TRAIN_CAMERA), ("query", CELEB_QUERY_CAMERA),
                               ("gallery", CELEB_GALLERY_CAMERA)):
            parse = _regex_parser(self.default_folder, CELEB_PATTERN,
                                  lambda groups, cam=camera: (int(groups[0]), cam, None))
            splits_samples.append(builder.flat_folder(folder, parse))
        train, query, gallery = splits_samples
        split = BenchmarkSplit(name=self.benchmark_name, scenario=SCENARIO, protocol="market", query=query,
                               gallery=gallery)
        return _first_with_train([split], train)


__all__ = ["LTCC", "PRCC", "CelebReID", "VCClothes", "mask_path_for"]
