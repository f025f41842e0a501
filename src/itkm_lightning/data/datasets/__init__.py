"""Loaders of the real benchmarks in their official on-disk layouts (docs/protocols.md sections 2-4, 6).

Config sections name them by ``class_path``, e.g. ``itkm_lightning.data.datasets.SYSUMM01``; where each
dataset goes under ``data.root`` is in ``data/README.md``.
"""

from itkm_lightning.data.datasets.clothing_change import LTCC, PRCC, CelebReID, VCClothes
from itkm_lightning.data.datasets.cross_resolution import (
    CUHK01,
    CUHK03Release,
    Market1501,
    MLRCUHK03,
    MLRMarket1501,
    MLRVIPeR,
)
from itkm_lightning.data.datasets.own import ImageFolder
from itkm_lightning.data.datasets.visible_infrared import LLCM, SYSUMM01, RegDB, sysu_gallery

__all__ = [
    "CUHK01", "CUHK03Release", "ImageFolder", "LLCM", "LTCC", "MLRCUHK03", "MLRMarket1501", "MLRVIPeR", "Market1501", "PRCC",
    "SYSUMM01", "CelebReID", "RegDB", "VCClothes", "sysu_gallery",
]
