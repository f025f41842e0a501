"""``<run_dir>/run.json``: what shaped a run's results, so that one run directory never holds two runs.

The record is the resolved ``fit`` config flattened to dotted keys, without the cosmetic keys below, plus
the identity of a local pretrained backbone's files and the code version. A command whose record differs
from the stored one stops before any work and names the keys that differ; ``--resume_anyway`` continues
the run with the new settings (the old record is kept under ``previous``), ``--overwrite`` deletes the run
directory and starts again. A matching run resumes as before, with or without those flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from itkm_lightning.errors import ITKMError
from itkm_lightning.fileio import atomic_write_json

RECORD_FILE = "run.json"

COSMETIC_KEYS = (
    # which command of the run this is, not what it computes
    "config", "run_dir", "stage", "ckpt_path", "overwrite", "resume_anyway", "weights_only",
    # what is shown and logged
    "wandb", "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.logger", "trainer.default_root_dir",
)
"""Dotted keys (and everything below them) left out of the record: changing them never changes results."""

RUN_DIR_MARKERS = (RECORD_FILE, "results.json", "timings.json", "stage1", "stage2", "stage3", "checkpoints")
"""Entries that make a folder a run directory, which ``--overwrite`` may delete."""

_PARTIAL_HASH_BYTES = 1 << 20


class RunDirectoryError(ITKMError, ValueError):
    """The run directory holds another run (or one without a record) and no flag says what to do."""


def _cosmetic(key: str) -> bool:
    return any(key == c or key.startswith(c + ".") for c in COSMETIC_KEYS)


def _plain(value: Any) -> Any:
    """JSON-comparable form of a parsed config value (Namespaces and objects included)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.clustering.eps": 0.6, ...}``; lists stay whole values (``data.sources`` is one key)."""
    flat: dict[str, Any] = {}
    for key, value in _plain(config).items():
        dotted = f"{prefix}{key}"
        if _cosmetic(dotted):
            continue
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def backbone_files(name_or_path: str | None) -> str | None:
    """A digest of a local backbone folder's files (names, sizes, first and last MiB): a rebuilt or replaced
    backbone under the same path is another backbone. None for hub names and absent paths."""
    if not name_or_path:
        return None
    folder = Path(os.path.expandvars(name_or_path)).expanduser()
    if not folder.exists():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in ([folder] if folder.is_file() else folder.rglob("*")) if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder) if path != folder else path.name}:{size}:".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_PARTIAL_HASH_BYTES))
            if size > 2 * _PARTIAL_HASH_BYTES:
                handle.seek(-_PARTIAL_HASH_BYTES, os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def code_version() -> str:
    """The package version and, in a git checkout, its commit."""
    from itkm_lightning import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else str(__version__)


def run_settings(config: Any) -> dict[str, Any]:
    """Everything that shapes a ``fit`` run's results, from its parsed (not instantiated) config."""
    settings = flatten(config)
    if settings.get("data.root"):  # the same relative root from another folder is other data
        settings["data.root"] = str(Path(settings["data.root"]).resolve())
    files = backbone_files(settings.get("model.backbone.name_or_path"))
    if settings.get("model.backbone.pretrained", True) and files is not None:
        settings["backbone_files"] = files
    settings["code_version"] = code_version()
    return settings


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs (absent keys shown as ``(unset)``)."""
    unset = "(unset)"
    return [f"{k}: {_short(old.get(k, unset))} -> {_short(new.get(k, unset))}"
            for k in sorted(set(old) | set(new)) if old.get(k, unset) != new.get(k, unset)]


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # treated as no record: the flags below say what to do
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def _holds_a_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_DIR_MARKERS)


@dataclass
class RunDirectoryPlan:
    """What :func:`check_run_dir` decided; :meth:`commit` carries it out once the command is known to run."""

    run_dir: Path
    settings: dict[str, Any]
    action: str  # "resume" (record matches), "new", "adopt" (--resume_anyway), "overwrite"
    previous: dict | None = None

    def commit(self, command: str, write: bool = True) -> None:
        if not write or self.action == "resume":
            return
        if self.action == "overwrite":
            shutil.rmtree(self.run_dir)
        history = []
        if self.action == "adopt" and self.previous is not None:
            history = [*self.previous.get("previous", []),
                       {k: v for k, v in self.previous.items() if k != "previous"}]
        atomic_write_json(self.run_dir / RECORD_FILE, {
            "settings": self.settings, "command": command,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "previous": history,
        })


def check_run_dir(run_dir: str | Path, settings: dict[str, Any], *, overwrite: bool = False,
                  resume_anyway: bool = False) -> RunDirectoryPlan:
    """Decide, without writing anything, whether this command may use ``run_dir``; raise when it may not."""
    run_dir = Path(run_dir)
    if overwrite and resume_anyway:
        raise RunDirectoryError("--overwrite and --resume_anyway exclude each other; pass one of them")
    record = read_record(run_dir)
    if record is not None and record["settings"] == settings:
        return RunDirectoryPlan(run_dir, settings, "resume")
    if not _holds_a_run(run_dir):
        if run_dir.is_dir() and any(run_dir.iterdir()) and overwrite:
            raise RunDirectoryError(f"--overwrite: {run_dir} is not a run directory (no {RECORD_FILE}, results or "
                                    "stage folders), so it is not deleted; pass another --run_dir")
        return RunDirectoryPlan(run_dir, settings, "new")
    if resume_anyway:
        return RunDirectoryPlan(run_dir, settings, "adopt", previous=record)
    if overwrite:
        return RunDirectoryPlan(run_dir, settings, "overwrite")
    fix = ("pass another --run_dir, --resume_anyway to continue it with these settings, or --overwrite to delete "
           "it and start again")
    if record is None:
        raise RunDirectoryError(f"run directory {run_dir} holds a run without a readable {RECORD_FILE} (made by an "
                                f"older itkm?), so it cannot tell whether it is this run; {fix}")
    changed = differences(record["settings"], settings)
    shown = "; ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
    raise RunDirectoryError(f"run directory {run_dir} holds another run: {shown}; {fix}")
