"""Config files and paths as the user wrote them: YAML that must be a mapping, ``~`` and ``$VARS`` in paths,
the default run name, and ``class_path`` entries that may only name dataset sources."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from itkm_lightning.errors import ConfigError


class ConfigFileError(ConfigError):
    """A ``--config`` file that is not valid YAML, is empty, or is not a mapping of settings."""


def expand_path(value: str | os.PathLike) -> Path:
    """``~/datasets`` and ``$SCRATCH/data`` as the shell would expand them."""
    return Path(os.path.expandvars(os.fspath(value))).expanduser()


def run_name(configs: Sequence[object]) -> str:
    """``demo+no_chm`` for ``--config conf/demo.yaml --config conf/ablations/no_chm.yaml``: every file counts,
    so two commands that differ in any config file never share a default run directory."""
    names = [Path(str(c)).stem for c in configs]
    return "+".join(dict.fromkeys(names)) if names else "default"


def read_mapping(path: str | os.PathLike) -> dict:
    """The YAML mapping in ``path``, or one :class:`ConfigFileError` naming the file (and line and column)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigFileError(f"config {path}{where}: {problem}{f' ({context})' if context else ''}; "
                              "fix the YAML there") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"config {path} cannot be read ({err})") from None
    if data is None:
        raise ConfigFileError(f"config {path} is empty; put settings in it (e.g. `model:`, `data:`) or drop "
                              "that --config")
    if not isinstance(data, dict):
        raise ConfigFileError(f"config {path} holds a YAML {type(data).__name__}, not a mapping of settings; "
                              "write it as `key: value` lines (e.g. `model:`, `data:`)")
    return data


def config_arguments(argv: Sequence[str]) -> list[str]:
    """The files given as ``--config FILE`` or ``--config=FILE`` in ``argv``."""
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_config_files(argv: Sequence[str]) -> None:
    """Every existing ``--config`` file parses as a YAML mapping (a missing one is jsonargparse's to report)."""
    for name in config_arguments(argv):
        if Path(name).is_file():
            read_mapping(name)
