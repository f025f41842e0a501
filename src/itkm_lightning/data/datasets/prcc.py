"""PRCC (docs/protocols.md sections 4.1, 5.6): benchmarks ``prcc_sc`` (B -> A) and ``prcc_cc`` (C -> A)."""

from __future__ import annotations

import random
from pathlib import Path

from itkm_lightning.data.datasets.cc_samples import SCENARIO, SampleBuilder
from itkm_lightning.data.datasets.common import FolderSource, first_with_train, list_images, no_images_error, parse_int
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.errors import ConfigError, DataFormatError

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
        raise DataFormatError(f"PRCC: {path} is not in {folder}/<pid>/<image>; keep the official layout (see data/README.md)")
    return parse_int(parts[0], "identity folder", path), parts[1]


def _prcc_clothes(pid: int, camera_letter: str) -> str:
    """Cameras A and B show the same outfit, camera C a different one (docs/protocols.md 4.1)."""
    return f"{pid}C" if camera_letter == "C" else f"{pid}"


class PRCC(FolderSource):
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
            raise ConfigError(f"PRCC trials must be >= 1; got {trials}")
        self.path = path
        self.single_shot = single_shot
        self.trials = trials

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = SampleBuilder("PRCC", self.source, self.dataset_dir(root), PRCC_TREE)
        builder.folder("")
        train = self._train(builder)
        gallery_by_pid = self._test_camera(builder, "A")
        gallery, trials = self._gallery(gallery_by_pid)
        splits = []
        for name, letter in (("prcc_sc", "B"), ("prcc_cc", "C")):
            query = [s for samples in self._test_camera(builder, letter).values() for s in samples]
            splits.append(BenchmarkSplit(name=name, scenario=SCENARIO, protocol="market", query=query,
                                         gallery=list(gallery), trials=trials))
        return first_with_train(splits, train)

    @staticmethod
    def _train(builder: SampleBuilder) -> list[Sample]:
        folder = builder.folder("rgb/train")
        samples = []
        for path in list_images(folder, root=builder.dataset_dir):
            pid, file_name = _prcc_pid_and_name(path, folder)
            letter = file_name[:1]
            if letter not in PRCC_CAMERAS:
                raise DataFormatError(f"PRCC: training file {path} should start with the camera letter A, B or C")
            samples.append(builder.sample(path, pid, PRCC_CAMERAS[letter], _prcc_clothes(pid, letter)))
        if not samples:
            no_images_error("PRCC", folder)
        return samples

    @staticmethod
    def _test_camera(builder: SampleBuilder, letter: str) -> dict[int, list[Sample]]:
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
