"""Dataset sources: each turns files on disk into ``BenchmarkSplit`` records.

A config lists sources by ``class_path``; the real-dataset parsers (SYSU-MM01, LTCC, MLR, ...,
``data/datasets/``) and the synthetic benchmark (``itkm_lightning.synthetic.benchmark``) subclass
``DatasetSource`` the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from itkm_lightning.data.schema import BenchmarkSplit


class DatasetSource(ABC):
    """One dataset (or a family of benchmarks generated together)."""

    def prepare(self, root: Path) -> None:
        """Generate or check files; runs once per node before ``load`` (Lightning's ``prepare_data``)."""

    def check(self, root: Path) -> None:
        """Fail early, before a model is built, when the files are not where they should be.

        Reading the lists costs seconds even for large datasets; sources that generate their data on first
        use override this to do nothing.
        """
        self.load(root)

    @abstractmethod
    def load(self, root: Path) -> list[BenchmarkSplit]:
        """Return the benchmarks of this source: training samples and query/gallery sets."""
