"""Reading a saved file never runs code: every ``torch.load`` of the project goes through :func:`load`.

``torch.load(weights_only=True)`` unpickles only tensors, containers, numbers and allow-listed classes. Our
pydantic configs (data only) are allow-listed, because Lightning pickles a stage's hyper-parameters, which
hold them when the stage was built outside LightningCLI. Anything else (a ``__reduce__`` payload) is refused
with :class:`UnsafeFileError` before any of it runs.
"""

from __future__ import annotations

import functools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from itkm_lightning.errors import DataUnavailableError, ITKMError


class UnsafeFileError(ITKMError, ValueError):
    """A file that would need arbitrary code (not just data) to load; nothing of it was executed."""


class UnreadableFileError(ITKMError, ValueError):
    """A file that exists but is not a PyTorch file (truncated, empty, another format)."""


@functools.cache
def register_safe_types() -> None:
    """Allow-list the project's config classes for ``weights_only`` loading (Lightning's own loads included).

    Every pydantic value type of ``config.py`` is listed, so a config class added there later cannot make
    the project's own checkpoints unloadable. They hold plain values only: allowing them runs no code.
    """
    from pydantic import BaseModel

    from itkm_lightning import config
    from itkm_lightning.models.backbone_config import BackboneConfig

    own = [obj for obj in vars(config).values()
           if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == config.__name__]
    torch.serialization.add_safe_globals([BackboneConfig, *own])


def _refused_global(err: BaseException) -> str | None:
    """The global that ``weights_only`` refused (e.g. ``builtins.exec``), if that is why loading failed."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return found.group(1)
    return "a non-data object" if "Weights only load failed" in str(err) else None


def _project_module_exists(dotted: str) -> bool:
    """The module part of ``itkm_lightning.<module path>.<name>`` is a file of this installation.

    Looked up on disk, never imported: the name comes from the refused file, and importing a module it
    names (``itkm_lightning.__main__`` runs the CLI) would run code because of that file.
    """
    parts = dotted.split(".")[1:-1]
    if not all(part.isidentifier() for part in parts):
        return False
    path = Path(__file__).resolve().parent.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def load(path: str | Path, *, what: str = "file", fix: str = "", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; one-line errors that name the file and ``fix``."""
    register_safe_types()
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"{what} {path} does not exist{'; ' + fix if fix else ''}")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a truncated one lost its directory
        raise UnreadableFileError(f"{what} {path} cannot be read (not a PyTorch file: truncated, empty or another "
                                  f"format){'; ' + fix if fix else ''}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors, ... for damaged files
        refused = _refused_global(err)
        if refused is not None and refused.startswith("itkm_lightning.") and not _project_module_exists(refused):
            # A project class under a module this version no longer has (the code was reorganised):
            # refused like any other name, with the fix that applies.
            raise UnsafeFileError(
                f"{what} {path} was written by an older itkm-lightning ({refused} no longer exists) and is not "
                f"loaded (nothing was run); start the run again in a new --run_dir{'; ' + fix if fix else ''}"
            ) from None
        if refused is not None:
            raise UnsafeFileError(
                f"{what} {path} was refused: it contains {refused}, which is code, not data (nothing was run). "
                f"Only load files you made with itkm{'; ' + fix if fix else ''}") from None
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnreadableFileError(f"{what} {path} cannot be read ({type(err).__name__}: {detail})"
                                  f"{'; ' + fix if fix else ''}") from err
