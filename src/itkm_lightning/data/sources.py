"""Dataset sources: each turns files on disk into ``BenchmarkSplit`` records.

A config lists sources by ``class_path``; the real-dataset parsers (SYSU-MM01, LTCC, MLR, ...,
``data/datasets/``) subclass ``DatasetSource`` the same way. ``SyntheticBenchmark`` is the data layer's
view of the synthetic benchmark, which the ``itkm_lightning.synthetic`` package renders and stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit
from itkm_lightning.errors import ConfigError


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


class SyntheticBenchmark(DatasetSource):
    """The embedded synthetic multi-scenario benchmark, generated into ``<root>/synthetic`` on first use.

    Args:
        preset: size preset: ``tiny`` (tests), ``demo`` (the 15-minute demo) or ``large``.
        seed: generator seed; the same seed gives byte-identical images.
        scenarios: which of ``vi``, ``cr``, ``cc`` to include.
        train_ids: override the preset's training identities per scenario.
        test_ids: override the preset's test identities per scenario.
        images_per_camera: override the preset's images per identity and camera.
        image_size: override the stored (H, W) of full-resolution images.
    """

    def __init__(
        self,
        preset: Literal["tiny", "demo", "large"] = "demo",
        seed: int = 0,
        scenarios: list[Literal["vi", "cr", "cc"]] | None = None,
        train_ids: int | None = None,
        test_ids: int | None = None,
        images_per_camera: int | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        from itkm_lightning.synthetic.spec import SyntheticSpec

        overrides: dict = {"seed": seed}
        if scenarios is not None:
            unknown = set(scenarios) - set(SCENARIOS)
            if unknown or not scenarios:
                raise ConfigError(f"scenarios must be a non-empty subset of {list(SCENARIOS)}; got {scenarios}")
            overrides["scenarios"] = tuple(scenarios)
        for key, value in (("train_ids", train_ids), ("test_ids", test_ids), ("images_per_camera", images_per_camera)):
            if value is not None:
                overrides[key] = value
        if image_size is not None:
            overrides["image_height"], overrides["image_width"] = image_size
        self.spec = SyntheticSpec.preset(preset).model_copy(update=overrides)
        self.spec = SyntheticSpec.model_validate(self.spec.model_dump())

    def check(self, root: Path) -> None:
        """Nothing to check: the benchmark is generated on first use."""

    def _dir(self, root: Path) -> Path:
        return Path(root) / "synthetic"

    def prepare(self, root: Path) -> None:
        from itkm_lightning.synthetic.benchmark import ensure_synthetic

        ensure_synthetic(self._dir(root), self.spec)

    def load(self, root: Path) -> list[BenchmarkSplit]:
        from itkm_lightning.synthetic.benchmark import ensure_synthetic, load_synthetic

        dataset_dir = ensure_synthetic(self._dir(root), self.spec)
        splits = load_synthetic(dataset_dir)
        return [splits[name] for name in SCENARIOS if name in splits]
