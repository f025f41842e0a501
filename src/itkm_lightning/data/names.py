"""Short names for the dataset sources: ``sources: [sysu, ltcc, mlr_cuhk03]`` beside ``class_path`` entries.

A short name is the source with its default arguments (its files where data/README.md puts them under
``data.root``); anything else (a path, a trial, a preset) takes a ``class_path`` + ``init_args`` entry.
"""

from __future__ import annotations

from itkm_lightning.errors import ConfigError

SHORT_NAMES = {
    "sysu": "itkm_lightning.data.datasets.SYSUMM01",
    "regdb": "itkm_lightning.data.datasets.RegDB",
    "llcm": "itkm_lightning.data.datasets.LLCM",
    "ltcc": "itkm_lightning.data.datasets.LTCC",
    "prcc": "itkm_lightning.data.datasets.PRCC",
    "vcclothes": "itkm_lightning.data.datasets.VCClothes",
    "celebreid": "itkm_lightning.data.datasets.CelebReID",
    "market1501": "itkm_lightning.data.datasets.Market1501",
    "cuhk01": "itkm_lightning.data.datasets.CUHK01",
    "mlr_cuhk03": "itkm_lightning.data.datasets.MLRCUHK03",
    "mlr_market1501": "itkm_lightning.data.datasets.MLRMarket1501",
    "mlr_viper": "itkm_lightning.data.datasets.MLRVIPeR",
    "synthetic": "itkm_lightning.data.SyntheticBenchmark",
    "folder": "itkm_lightning.data.datasets.ImageFolder",  # needs init_args (path, scenario): a class_path entry
}


def class_path_of(name: str) -> str:
    """The ``class_path`` of a short name (case and ``-`` ignored: ``SYSU``, ``mlr-cuhk03``), or one clear error."""
    key = name.strip().lower().replace("-", "_")
    if key not in SHORT_NAMES:
        raise ConfigError(f"data.sources: unknown dataset name {name!r}; short names are {', '.join(SHORT_NAMES)} "
                          "(or give a class_path entry, see data/README.md)")
    return SHORT_NAMES[key]
