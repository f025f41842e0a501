"""itkm-lightning: unsupervised multi-scenario person re-identification (ITKM) on PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("itkm-lightning")  # the one version number lives in pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path without an installation
    __version__ = "0+unknown"
