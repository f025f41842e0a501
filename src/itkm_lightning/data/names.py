"""How a config names a dataset source: short names (``sources: [sysu, ltcc, mlr_cuhk03]``) beside ``class_path``
entries, and the source object an entry stands for (``source_of``).

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


def source_class(class_path: str) -> type:
    """The dataset source class a config names; anything else (``subprocess.run``) is refused before it is called."""
    from jsonargparse.typing import import_object

    from itkm_lightning.data.sources import DatasetSource

    try:
        found = import_object(class_path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"data.sources: class_path {class_path!r} cannot be imported ({err}); "
                         "see data/README.md for the dataset classes") from None
    if not (isinstance(found, type) and issubclass(found, DatasetSource)):
        raise ConfigError(f"data.sources: class_path {class_path!r} is not a dataset source (a subclass of "
                         "itkm_lightning.data.sources.DatasetSource); see data/README.md for the dataset classes")
    return found


def source_of(entry) -> object:
    """A ``data.sources`` entry as a dataset source: an instance, a short name (``sysu``, data/names.py) or a
    ``class_path`` (+ ``init_args``) mapping or Namespace."""
    from itkm_lightning.data.sources import DatasetSource

    if isinstance(entry, DatasetSource):
        return entry
    if isinstance(entry, str):
        return source_class(class_path_of(entry))()
    get = entry.get
    if not get("class_path"):
        raise ConfigError(f"data.sources: {entry!r} is neither a dataset short name nor a class_path entry")
    init = get("init_args")
    return source_class(get("class_path"))(**(init.as_dict() if hasattr(init, "as_dict") else dict(init or {})))
