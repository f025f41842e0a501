"""The folder ``itkm embed`` writes: ``features.npy`` and ``index.csv``. Numpy and csv only, so that ``itkm search``
on such folders starts without torch models, Lightning or transformers."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from itkm_lightning.errors import DataFormatError, DataUnavailableError

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.csv"  # one row per feature row: path, scenario, group (+ pid, camid, clothes when known)
LABEL_COLUMNS = ("pid", "camid", "clothes")


def save_embeddings(out_dir: str | Path, features: np.ndarray, samples: Sequence) -> Path:
    """``features.npy`` (N, D) float32 and ``index.csv``, written atomically.

    ``index.csv`` has path, scenario, group, and pid / camid / clothes where the samples know them (images embedded
    from a dataset split; tagged loose images have pid -1 and get no label columns), so that `itkm search
    --evaluate` can score two such folders.
    """
    from itkm_lightning.fileio import atomic_write, atomic_write_text

    out_dir = Path(out_dir)
    atomic_write(out_dir / FEATURES_FILE, lambda handle: np.save(handle, np.ascontiguousarray(features, dtype=np.float32)))
    labelled = bool(samples) and all(s.pid >= 0 for s in samples)
    columns = ["path", "scenario", "group"]
    if labelled:
        columns += ["pid", "camid"] + (["clothes"] if any(s.clothes is not None for s in samples) else [])
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(columns)
    for s in samples:
        row = [s.path, s.scenario, s.group]
        if labelled:
            row += [s.pid, s.camid] + (["" if s.clothes is None else s.clothes] if "clothes" in columns else [])
        writer.writerow(row)
    atomic_write_text(out_dir / INDEX_FILE, table.getvalue())
    return out_dir


def is_embedding_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / FEATURES_FILE).is_file() and (path / INDEX_FILE).is_file()


def load_embeddings(folder: str | Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    """What ``save_embeddings`` wrote: features and the index rows (dicts with path, scenario, group, ...)."""
    folder = Path(folder)
    if not is_embedding_dir(folder):
        raise DataUnavailableError(f"{folder} has no {FEATURES_FILE} + {INDEX_FILE}; create it with `itkm embed`")
    try:
        features = np.load(folder / FEATURES_FILE, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # truncated, or not a plain array
        raise DataFormatError(f"{folder / FEATURES_FILE} cannot be read ({str(err).strip().splitlines()[0]}); "
                              f"embed the folder again with `itkm embed`") from None
    with (folder / INDEX_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if features.ndim != 2 or len(rows) != len(features):
        raise DataFormatError(f"{folder}: {FEATURES_FILE} has shape {features.shape} but {INDEX_FILE} has {len(rows)} "
                              "rows; embed the folder again")
    return features.astype(np.float32, copy=False), rows
