"""Data layer: sample schema, sources, datamodule, samplers, transforms."""

from itkm_lightning.data.datasets.sysu_mm01 import sysu_gallery
from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource

__all__ = ["SCENARIOS", "BenchmarkSplit", "DatasetSource", "Sample", "SyntheticBenchmark", "sysu_gallery"]


def __getattr__(name: str):
    # `itkm_lightning.data.SyntheticBenchmark` is the class_path that configs and run records (run.json) name.
    # The class lives in the synthetic package, which builds on this one, so it is imported on first use:
    # an import at the top would be circular.
    if name == "SyntheticBenchmark":
        from itkm_lightning.synthetic.benchmark import SyntheticBenchmark

        return SyntheticBenchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
