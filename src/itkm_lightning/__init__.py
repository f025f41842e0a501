"""itkm-lightning: unsupervised multi-scenario person re-identification (ITKM) on PyTorch Lightning."""

__version__ = "0.1.0"
