"""Loaders of the real benchmarks in their official on-disk layouts (docs/protocols.md sections 2-4, 6).

One module per dataset (``sysu_mm01``, ``regdb``, ``llcm``, ``market1501``, ``cuhk01``, ``mlr``, ``prcc``,
``ltcc``, ``vc_clothes``, ``celeb_reid``, ``own``); ``common`` holds the listing helpers they share,
``cc_samples`` the clothing-change samples, ``mlr_format`` the MLR file format, ``cuhk03`` and
``mlr_originals`` what ``itkm prepare mlr`` reads. Config sections name the classes by their short
``class_path`` here, e.g. ``itkm_lightning.data.datasets.SYSUMM01``; where each dataset goes under
``data.root`` is in ``data/README.md``.
"""

from itkm_lightning.data.datasets.celeb_reid import CelebReID
from itkm_lightning.data.datasets.cuhk01 import CUHK01
from itkm_lightning.data.datasets.cuhk03 import CUHK03Release
from itkm_lightning.data.datasets.llcm import LLCM
from itkm_lightning.data.datasets.ltcc import LTCC
from itkm_lightning.data.datasets.market1501 import Market1501
from itkm_lightning.data.datasets.mlr import MLRCUHK03, MLRMarket1501, MLRVIPeR
from itkm_lightning.data.datasets.own import ImageFolder
from itkm_lightning.data.datasets.prcc import PRCC
from itkm_lightning.data.datasets.regdb import RegDB
from itkm_lightning.data.datasets.sysu_mm01 import SYSUMM01, sysu_gallery
from itkm_lightning.data.datasets.vc_clothes import VCClothes

__all__ = [
    "CUHK01", "CUHK03Release", "ImageFolder", "LLCM", "LTCC", "MLRCUHK03", "MLRMarket1501", "MLRVIPeR", "Market1501", "PRCC",
    "SYSUMM01", "CelebReID", "RegDB", "VCClothes", "sysu_gallery",
]
