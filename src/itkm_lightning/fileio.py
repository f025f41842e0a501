"""Atomic file writes: a killed process never leaves half a file under the final name."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO
from contextlib import contextmanager
from pathlib import Path

from itkm_lightning.errors import DataFormatError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, fsync: bool = True) -> None:
    """``write(handle)`` into a temporary file in the same folder, fsync it, then rename it over ``path``.

    Several DDP ranks may write the same file at once; each rename is whole, so readers never see a mix.
    A symbolic link at ``path`` is replaced, never written through. ``fsync=False`` skips the flush to disk
    (still whole after a killed process, not after a power cut) for writers of thousands of files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name next to ``path``, renamed over it (fsynced) when the block succeeds, removed if not.

    For writers that want a file name rather than a handle (faiss, TorchScript, torch.export, ONNX): the name
    keeps ``path``'s suffix, since some of them choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temporary file ordinary permissions and rename it over ``path``."""
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the final file is an ordinary one
    if path.is_symlink():
        path.unlink()
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


@contextmanager
def staging_directory(final_dir: str | Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place only when the block succeeds.

    A killed or failed build never leaves anything under ``final_dir``. If another process finished the
    same folder first, its copy is kept when ``is_complete`` accepts it; an empty ``final_dir`` is replaced.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    os.chmod(temp_dir, 0o777 & ~current_umask())  # mkdtemp makes it private; the finished folder is not
    try:
        yield temp_dir
        if final_dir.is_dir() and not any(final_dir.iterdir()):
            final_dir.rmdir()  # os.replace cannot replace a directory, even an empty one
        try:
            os.replace(temp_dir, final_dir)
        except OSError as error:
            if not is_complete(final_dir):
                raise FileExistsError(
                    f"{final_dir} exists but does not hold what this run built; delete it and run again"
                ) from error
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def folder_meta_matches(folder: str | Path, required_file: str, expected: dict) -> bool:
    """A finished generated folder: ``required_file`` exists and ``meta.json`` holds ``expected`` (key by key)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not (meta_path.is_file() and (folder / required_file).is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(meta, dict) and {key: meta.get(key) for key in expected} == expected


def read_csv_table(path: str | Path, columns: tuple[str, ...], fix: str) -> list[dict[str, str]]:
    """The rows of a CSV file the project wrote, after checking that its header is ``columns`` (else a
    ``DataFormatError`` naming ``fix``)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != columns:
            raise DataFormatError(f"{path} has columns {reader.fieldnames}, expected {list(columns)}; {fix}")
        return list(reader)
