"""VC-Clothes (docs/protocols.md sections 4.4, 5.6): ``vcclothes_all``, ``vcclothes_sc``, ``vcclothes_cc``."""

from __future__ import annotations

from pathlib import Path

from itkm_lightning.data.datasets.cc_samples import SCENARIO, Labels, SampleBuilder
from itkm_lightning.data.datasets.common import FolderSource, first_with_train
from itkm_lightning.data.schema import BenchmarkSplit

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


class VCClothes(FolderSource):
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

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = SampleBuilder("VC-Clothes", self.source, self.dataset_dir(root), VCCLOTHES_TREE)
        train, query, gallery = builder.flat_splits(VCCLOTHES_PATTERN, _vcclothes_labels, ("train", "query", "gallery"))
        splits = []
        for setting, cameras in VCCLOTHES_SETTINGS.items():
            keep = (lambda s: True) if cameras is None else (lambda s, c=cameras: s.camid in c)
            splits.append(BenchmarkSplit(name=f"vcclothes_{setting}", scenario=SCENARIO, protocol="market",
                                         query=[s for s in query if keep(s)], gallery=[s for s in gallery if keep(s)]))
        return first_with_train(splits, train)
