"""Data layer: sample schema, sources, datamodule, samplers, transforms."""

from itkm_lightning.data.datasets.sysu_mm01 import sysu_gallery
from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource, SyntheticBenchmark

__all__ = ["SCENARIOS", "BenchmarkSplit", "DatasetSource", "Sample", "SyntheticBenchmark", "sysu_gallery"]
