"""LTCC (docs/protocols.md sections 4.2, 5.6): benchmarks ``ltcc_general``, ``ltcc_cc`` (+ ``ltcc_sc``)."""

from __future__ import annotations

from pathlib import Path

from itkm_lightning.data.datasets.cc_samples import SCENARIO, Labels, SampleBuilder
from itkm_lightning.data.datasets.common import FolderSource, first_with_train
from itkm_lightning.data.schema import BenchmarkSplit

LTCC_TREE = """LTCC_ReID/
  train/<pid:03d>_<clothes>_c<cam>_<frame>.png
  query/...                         same naming
  test/...                          the gallery
  info/cloth-change_id_test.txt     (not used: no id restriction)"""
LTCC_PATTERN = r"(\d+)_(\d+)_c(\d+)"


def _ltcc_labels(groups: tuple[str, ...]) -> Labels:
    pid, clothes, cam = (int(g) for g in groups)
    return pid, cam, f"{pid}_{clothes}"


class LTCC(FolderSource):
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

    def load(self, root: Path) -> list[BenchmarkSplit]:
        builder = SampleBuilder("LTCC", self.source, self.dataset_dir(root), LTCC_TREE)
        train, query, gallery = builder.flat_splits(LTCC_PATTERN, _ltcc_labels, ("train", "query", "test"))
        settings = [("ltcc_general", "market"), ("ltcc_cc", "cloth_changing")]
        if self.same_clothes:
            settings.append(("ltcc_sc", "same_clothes"))
        splits = [BenchmarkSplit(name=name, scenario=SCENARIO, protocol=protocol, query=list(query),
                                 gallery=list(gallery)) for name, protocol in settings]
        return first_with_train(splits, train)
