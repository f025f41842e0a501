"""Helpers shared by the real-dataset loaders (docs/protocols.md section 1).

Every loader lists images sorted by their path relative to the dataset root, reads only the expected
image extensions, parses labels from relative path components, and fails on a bad layout with a message
that shows the expected tree and points to ``data/README.md``. Also here: the one-folder dataset base
class, the official SYSU-MM01 / LLCM camera-folder walk and single-shot draw, and the unmatched-query log.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource
from itkm_lightning.errors import ConfigError, DataFormatError, DataUnavailableError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
"""Extensions read as images (compared case-insensitively); anything else in a folder is ignored."""

README_HINT = "see data/README.md"


# ----------------------------------------------------------------------------- layout errors
def missing_layout_error(name: str, root: Path | str, expected_tree: str) -> NoReturn:
    """Raise FileNotFoundError: dataset ``name`` lacks ``root`` (the folder or file looked for).

    ``expected_tree`` is a few lines showing the official layout; it is printed indented.
    """
    tree = "\n".join("    " + line for line in expected_tree.strip("\n").splitlines())
    raise DataUnavailableError(
        f"{name}: expected {Path(root)} but it does not exist. Expected layout:\n{tree}\n"
        f"Put the dataset there or set its `path:` option ({README_HINT})."
    )


def require_dir(path: Path, name: str, expected_tree: str) -> Path:
    """``path`` if it is a folder; otherwise the missing-layout error."""
    if not path.is_dir():
        missing_layout_error(name, path, expected_tree)
    return path


def require_file(path: Path, name: str, expected_tree: str) -> Path:
    """``path`` if it is a file; otherwise the missing-layout error."""
    if not path.is_file():
        missing_layout_error(name, path, expected_tree)
    return path


def no_images_error(name: str, folder: Path | str) -> NoReturn:
    """Raise ValueError: a folder that should hold images holds none."""
    raise DataFormatError(
        f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}; "
        f"check that the dataset was extracted completely ({README_HINT})."
    )


def resolve_dataset_dir(root: Path | str, path: str | None, default_name: str) -> Path:
    """The dataset folder: ``path`` (absolute, or relative to ``root``) or ``root/default_name``."""
    if path is None:
        return Path(root) / default_name
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(root) / candidate


# ----------------------------------------------------------------------------- listing
def is_image(path: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    return path.suffix.lower() in tuple(extensions)


def relative_key(path: Path, root: Path) -> str:
    """The sort key of docs/protocols.md section 1: the path relative to ``root`` in POSIX form."""
    return path.relative_to(root).as_posix()


def list_images(
    folder: Path, root: Path | None = None, extensions: Iterable[str] = IMAGE_EXTENSIONS, recursive: bool = True
) -> list[Path]:
    """Image files below ``folder`` sorted by path relative to ``root`` (default ``folder``), in string order.

    Missing folders give an empty list: callers decide whether that is an error.
    """
    if not folder.is_dir():
        return []
    root = folder if root is None else root
    extensions = tuple(e.lower() for e in extensions)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = [p for p in candidates if p.is_file() and is_image(p, extensions)]
    return sorted(images, key=lambda p: relative_key(p, root))


def sorted_file_names(folder: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Names of the image files directly in ``folder``, in Python string order (empty if missing)."""
    return [p.name for p in list_images(folder, recursive=False, extensions=extensions)]


def camera_number(component: str) -> int | None:
    """N for a path component exactly ``camN`` (case-insensitive), else None."""
    match = re.fullmatch(r"cam(\d+)", component, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- integers and lists
def parse_int(text: str, what: str, where: Path | str) -> int:
    """``int(text)`` (zero padding allowed) or a ValueError naming what was parsed and where."""
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(f"expected an integer {what} but found {text!r} in {where}") from None


def read_id_list(path: Path) -> list[int]:
    """Integers separated by commas and/or whitespace (SYSU ``exp/*.txt``, LTCC ``info/*.txt``), in file order."""
    tokens = [t for t in re.split(r"[,\s]+", path.read_text()) if t]
    return [parse_int(t, "identity", path) for t in tokens]


def read_labelled_list(path: Path) -> list[tuple[str, int]]:
    """Lines ``<relative path> <integer label>`` (RegDB / LLCM ``idx`` lists); blank lines skipped."""
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataFormatError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}")
        entries.append((parts[0], parse_int(parts[1], "label", f"{path}:{number}")))
    return entries


# ----------------------------------------------------------------------------- one folder per dataset
class FolderSource(DatasetSource):
    """A dataset read from one folder: ``self.path`` (absolute or relative to ``data.root``), else
    ``<root>/<default_folder>``. Subclasses set ``path`` in ``__init__`` and ``default_folder``."""

    default_folder: str

    def dataset_dir(self, root: Path) -> Path:
        return resolve_dataset_dir(root, self.path, self.default_folder)


def first_with_train(splits: list[BenchmarkSplit], train: list[Sample]) -> list[BenchmarkSplit]:
    """Give the training set to the first benchmark only: the datamodule merges every ``train`` list."""
    if splits:
        splits[0].train = train
    return splits


def chosen_subset(values: Iterable[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """``values`` as a list (all of ``allowed`` when None); it must be a non-empty subset of ``allowed``."""
    chosen = list(allowed) if values is None else list(values)
    if not chosen or any(v not in allowed for v in chosen):
        raise ConfigError(f"{what} must be a non-empty subset of {list(allowed)}; got {chosen}")
    return chosen

# ----------------------------------------------------------------------------- camera folders (SYSU-MM01, LLCM)
def _id_folder(pid: int) -> str:
    return f"{pid:04d}"


def walk_camera_folders(
    base: Path, ids: Sequence[int], cameras: Sequence[int]
) -> list[tuple[Path, int, int]]:
    """(path, pid, camera) of every image under ``base/camN/<pid:04d>/``, in the official walk order.

    Ids ascending, then cameras in the given order, then file names in string order; missing folders
    are skipped.
    """
    found: list[tuple[Path, int, int]] = []
    for pid in sorted(set(ids)):
        for cam in cameras:
            folder = base / f"cam{cam}" / _id_folder(pid)
            found.extend((folder / name, pid, cam) for name in sorted_file_names(folder))
    return found


def official_single_shot_draw(base: Path, ids: Sequence[int], cameras: Sequence[int], trial: int) -> list[Path]:
    """One image per (id, camera): the official SYSU-MM01 / LLCM gallery draw of ``trial``.

    Uses its own ``random.Random(trial)``, which yields exactly the numbers ``random.seed(trial)`` gives
    the global generator, without disturbing the caller's random state. Folders that are missing or hold
    no image consume no random number.
    """
    rng = random.Random(trial)
    drawn: list[Path] = []
    for pid in sorted(set(ids)):
        for cam in cameras:
            folder = base / f"cam{cam}" / _id_folder(pid)
            names = sorted_file_names(folder)
            if names:
                drawn.append(folder / rng.choice(names))
    return drawn


def candidates_and_trials(draws: list[list[Path]]) -> tuple[list[Path], list[list[int]]]:
    """Every drawn path once (in order of first draw) and, per trial, the indices it uses in draw order."""
    position: dict[Path, int] = {}
    trials: list[list[int]] = []
    for draw in draws:
        trials.append([position.setdefault(path, len(position)) for path in draw])
    return list(position), trials


def check_trials(trials: int) -> None:
    if trials < 1:
        raise ConfigError(f"trials must be >= 1 (the official protocol uses 10); got {trials}")


# ----------------------------------------------------------------------------- benchmark checks
def rank_zero_info(message: str) -> None:
    # Lightning on first use: `itkm search` and `itkm --help` import this module and must start without it.
    from lightning.pytorch.utilities import rank_zero_info as info

    info(message)


def unmatched_query_count(bench: BenchmarkSplit) -> int:
    """Queries whose identity has no gallery image (``evaluate_rank`` skips them)."""
    gallery_ids = {s.pid for s in bench.gallery}
    return sum(s.pid not in gallery_ids for s in bench.query)


def log_unmatched_queries(bench: BenchmarkSplit) -> None:
    count = unmatched_query_count(bench)
    if count:
        rank_zero_info(
            f"{bench.name}: {count} of {len(bench.query)} queries have no match in the gallery and are "
            "skipped at scoring"
        )
