"""``ImageFolder``: your own person crops, in a plain folder tree, with no identity or camera labels.

Unsupervised ReID trains on crops nobody labelled: every image is a training image; the scenario and group
come from the config or from sub-folder names. An optional labels file names the images to evaluate on.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from itkm_lightning.data.datasets.common import (
    list_images,
    no_images_error,
    require_dir,
    resolve_dataset_dir,
)
from itkm_lightning.data.schema import GROUP_NAMES, SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource
from itkm_lightning.errors import ConfigError, DataFormatError, DataUnavailableError

LAYOUT = """
<path>/                       scenario (and group) given in the config: images at any depth
<path>/<scenario>/<group>/    or sub-folders: scenario vi | cr | cc, group 0 | 1 or its name
                              (vi: visible / infrared, cr: high-res / low-res, cc: original)
"""


def _group_of(name: str, scenario: str) -> int | None:
    key = name.lower()
    if key in ("0", "1"):
        return int(key)
    names = [n.lower() for n in GROUP_NAMES[scenario]]
    return names.index(key) if key in names else None


class ImageFolder(DatasetSource):
    """Person crops in a folder tree; no labels needed (README, "Train on your own data").

    Args:
        path: the folder (absolute, or relative to ``data.root``).
        scenario: ``vi``, ``cr`` or ``cc`` for every image; unset: the first sub-folder level names it.
        group: 0 or 1 for every image; unset: the next sub-folder level names it (``0``/``1`` or the group's
            name, e.g. ``infrared``), else 0. ``cc`` images are group 0 (training adds their clothing-agnostic view).
        labels: optional CSV (relative to ``path`` or absolute) with columns ``path`` (relative to ``path``),
            ``pid``, ``camid``, ``split`` (``query`` / ``gallery``; other rows only monitor pseudo-labels) and
            optionally ``clothes``. Query and gallery images are scored and kept out of training. Without it,
            ``itkm fit`` reports pseudo-label statistics instead of mAP.
        protocol: how the labelled images are scored (evaluation/protocols.py; ``market`` drops same-identity same-camera
            gallery images).
        name: benchmark name (``<name>_<scenario>`` when the tree holds several scenarios).
    """

    def __init__(self, path: str, scenario: Literal["vi", "cr", "cc"] | None = None, group: int | None = None,
                 labels: str | None = None, protocol: Literal["market", "cloth_changing", "same_clothes"] = "market",
                 name: str = "own") -> None:
        if scenario is not None and scenario not in SCENARIOS:
            raise ConfigError(f"ImageFolder: scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
        if group not in (None, 0, 1):
            raise ConfigError(f"ImageFolder: group must be 0 or 1, got {group!r}")
        self.path, self.scenario, self.group = path, scenario, group
        self.labels, self.protocol, self.name = labels, protocol, name

    def _tagged(self, folder: Path) -> list[tuple[Path, str, int]]:
        """(image, scenario, group) of every image under ``folder``."""
        found = []
        if self.scenario is not None:
            parts = [(folder, self.scenario)]
        else:
            parts = [(d, d.name.lower()) for d in sorted(folder.iterdir()) if d.is_dir()]
            unknown = [d.name for d, s in parts if s not in SCENARIOS]
            if unknown or not parts:
                raise DataFormatError(f"ImageFolder {folder}: without `scenario:` the sub-folders must be named vi, cr or "
                                      f"cc; found {unknown or 'none'}. Set scenario (and group) in the config, or use:"
                                      + LAYOUT)
        for sub, scenario in parts:
            groups = {d: _group_of(d.name, scenario) for d in sorted(sub.iterdir()) if d.is_dir()}
            if self.group is None and groups and all(g is not None for g in groups.values()) and scenario != "cc":
                found += [(p, scenario, g) for d, g in groups.items() for p in list_images(d)]
            else:
                found += [(p, scenario, self.group or 0) for p in list_images(sub)]
        if not found:
            no_images_error(f"ImageFolder {self.name}", folder)
        return found

    def _read_labels(self, folder: Path) -> dict[str, dict[str, str]]:
        if self.labels is None:
            return {}
        file = Path(self.labels).expanduser()
        file = file if file.is_absolute() else folder / file
        if not file.is_file():
            raise DataUnavailableError(f"ImageFolder {self.name}: labels file {file} does not exist")
        with file.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        missing = {"path", "pid", "camid"} - set(rows[0] if rows else {})
        if missing:
            raise DataFormatError(f"ImageFolder {self.name}: {file} needs the columns path, pid, camid (and split: "
                                  f"query / gallery); missing {sorted(missing)}")
        return {str((folder / r["path"]).resolve()): r for r in rows}

    def load(self, root: Path) -> list[BenchmarkSplit]:
        folder = require_dir(resolve_dataset_dir(root, self.path, "own"), f"ImageFolder {self.name}", LAYOUT)
        tagged = self._tagged(folder)
        labels = self._read_labels(folder)
        unmatched = set(labels) - {str(p.resolve()) for p, _, _ in tagged}
        if unmatched:
            raise DataFormatError(f"ImageFolder {self.name}: {len(unmatched)} labelled images are not in {folder} "
                                  f"(e.g. {sorted(unmatched)[0]}); labels paths are relative to the folder")
        splits: dict[str, BenchmarkSplit] = {}
        for image, scenario, group in tagged:
            row = labels.get(str(image.resolve()))
            bench = splits.setdefault(scenario, BenchmarkSplit(name=self.name, scenario=scenario,
                                                               protocol=self.protocol))
            sample = Sample(path=str(image), pid=int(row["pid"]) if row else -1, camid=int(row["camid"]) if row else -1,
                            scenario=scenario, group=group, source=self.name,
                            clothes=(row.get("clothes") or None) if row else None)
            role = (row.get("split") or "").strip().lower() if row else ""
            {"query": bench.query, "gallery": bench.gallery}.get(role, bench.train).append(sample)
        benchmarks = list(splits.values())
        if len(benchmarks) > 1:
            for bench in benchmarks:
                bench.name = f"{self.name}_{bench.scenario}"
        for bench in benchmarks:
            if bool(bench.query) != bool(bench.gallery):
                raise DataFormatError(f"ImageFolder {bench.name}: the labels file marks "
                                      f"{'query' if bench.query else 'gallery'} images but no "
                                      f"{'gallery' if bench.query else 'query'} images; mark both (split column)")
            if not bench.train:
                raise DataFormatError(f"ImageFolder {bench.name}: every image is a query or gallery image; nothing is left "
                                      "to train on")
        return benchmarks
