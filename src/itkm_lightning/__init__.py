"""itkm-lightning: unsupervised multi-scenario person re-identification (ITKM) on PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("itkm-lightning")  # the one version number lives in pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path without an installation
    __version__ = "0+unknown"

__all__ = ["FeatureExtractor", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import itkm_lightning` (and `itkm --help`) stays free of torch and transformers.
    if name == "FeatureExtractor":
        from itkm_lightning.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'itkm_lightning' has no attribute {name!r}")
