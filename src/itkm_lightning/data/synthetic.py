"""The embedded synthetic multi-scenario benchmark: specification, on-disk layout, loading.

Three scenarios, each with its own identities and four cameras (1-based camid; cameras 1-2 are
group 0, cameras 3-4 group 1):

- ``vi``: group 0 visible, group 1 infrared (a fixed per-dataset colour-to-intensity mapping);
  query = infrared test images, gallery = visible test images.
- ``cr``: group 1 stored down-sampled 2-4x (the loader up-samples); query = low-res, gallery = high-res.
- ``cc``: every identity wears 2-3 outfits, one per camera, at least two of them seen; exact clothes
  masks are written; all samples are group 0 (group 1 is the clothing-agnostic view made by
  ``ClothesMasker``); about a quarter of each test identity's images are queries.

Layout written by :func:`ensure_synthetic` under ``<root>/<name>/``::

    manifest.csv            scenario, split, path, pid, camid, group, clothes, mask_path
    meta.json               generator version and the spec
    <scenario>/<split>/<pid>_c<camid>_<k>.png
    cc/masks/<split>/<pid>_c<camid>_<k>.png

Every image has its own random stream derived from (seed, scenario, pid, camid, k), so images do
not depend on the rendering order and one seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from itkm_lightning.data import synthetic_render as render
from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.fileio import folder_meta_matches, staging_directory

GENERATOR_VERSION = "2"
"""Bump when the pictures change for the same spec, so cached datasets are not reused."""

CAMERAS = (1, 2, 3, 4)
CAMERA_GROUP = {1: 0, 2: 0, 3: 1, 4: 1}
PID_STRIDE = 100_000
"""pid = PID_STRIDE * scenario index + n, so pids are distinct across scenarios too."""
PROTOCOLS = {"vi": "market", "cr": "market", "cc": "cloth_changing"}
MANIFEST_COLUMNS = ("scenario", "split", "path", "pid", "camid", "group", "clothes", "mask_path")
CC_QUERY_FRACTION = 0.25
PNG_COMPRESS_LEVEL = 1

ScenarioTag = Literal["vi", "cr", "cc"]
Split = Literal["train", "query", "gallery"]

# Stream tags that keep the random streams of different purposes apart.
_STREAM_CAMERA, _STREAM_IDENTITY, _STREAM_OUTFIT, _STREAM_WARDROBE, _STREAM_IMAGE, _STREAM_LUT = range(6)


class SyntheticSpec(BaseModel):
    """What to generate. Counts are per scenario; ``images_per_camera`` is per identity and camera."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    train_ids: int = Field(60, ge=1)
    test_ids: int = Field(40, ge=1)
    images_per_camera: int = Field(5, ge=1)
    image_height: int = Field(128, ge=32)
    image_width: int = Field(64, ge=16)
    scenarios: tuple[ScenarioTag, ...] = SCENARIOS  # type: ignore[assignment]

    @field_validator("scenarios")
    @classmethod
    def _canonical_scenarios(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("scenarios must name at least one of 'vi', 'cr', 'cc'.")
        if len(set(value)) != len(value):
            raise ValueError(f"scenarios must not repeat a tag, got {list(value)}.")
        return tuple(s for s in SCENARIOS if s in value)

    @model_validator(mode="after")
    def _ids_fit_pid_range(self) -> SyntheticSpec:
        if self.train_ids + self.test_ids >= PID_STRIDE:
            raise ValueError(f"train_ids + test_ids must stay below {PID_STRIDE}; lower them.")
        return self

    @classmethod
    def preset(cls, name: str) -> SyntheticSpec:
        """``tiny`` (tests), ``demo`` (the default demo, ~6,000 images) or ``large`` (256x128)."""
        if name not in PRESETS:
            raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**PRESETS[name])

    def preset_name(self) -> str | None:
        """The preset this spec equals exactly, else None."""
        return next((name for name in PRESETS if SyntheticSpec.preset(name) == self), None)

    def short_hash(self) -> str:
        """A short digest of the spec and the generator version."""
        text = json.dumps(
            {"spec": self.model_dump(mode="json"), "version": GENERATOR_VERSION}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def size(self) -> tuple[int, int]:
        return self.image_height, self.image_width


PRESETS: dict[str, dict] = {
    "tiny": dict(seed=0, train_ids=6, test_ids=4, images_per_camera=2, image_height=64, image_width=32),
    "demo": dict(seed=0, train_ids=60, test_ids=40, images_per_camera=5, image_height=128, image_width=64),
    "large": dict(
        seed=0, train_ids=300, test_ids=200, images_per_camera=5, image_height=256, image_width=128
    ),
}


# ---------------------------------------------------------------------------------------------
# The plan: which images exist and what their labels are (no drawing)


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset, before or after rendering (paths relative to the dataset dir)."""

    scenario: str
    split: str
    pid: int
    camid: int
    group: int
    outfit: int
    index: int
    """Position of this image among the (pid, camid) images, 0-based."""

    @property
    def clothes(self) -> str:
        return f"{self.pid}_{self.outfit}"

    @property
    def file_name(self) -> str:
        return f"{self.pid:06d}_c{self.camid}_{self.index:03d}.png"

    @property
    def path(self) -> str:
        return f"{self.scenario}/{self.split}/{self.file_name}"

    @property
    def mask_path(self) -> str | None:
        return f"{self.scenario}/masks/{self.split}/{self.file_name}" if self.scenario == "cc" else None


def _stream(spec: SyntheticSpec, scenario: str, *keys: int) -> np.random.Generator:
    """An independent random generator for one purpose, derived from the seed and ``keys``."""
    return np.random.default_rng([spec.seed, SCENARIOS.index(scenario), *keys])


def scenario_pids(spec: SyntheticSpec, scenario: str) -> tuple[list[int], list[int]]:
    """(train pids, test pids) of one scenario; disjoint by construction."""
    first = PID_STRIDE * SCENARIOS.index(scenario) + 1
    train = list(range(first, first + spec.train_ids))
    test = list(range(first + spec.train_ids, first + spec.train_ids + spec.test_ids))
    return train, test


def camera_outfits(spec: SyntheticSpec, scenario: str, pid: int) -> dict[int, int]:
    """Which outfit index each camera sees. vi/cr: one outfit; cc: 2-3 outfits, all of them seen."""
    if scenario != "cc":
        return {camid: 0 for camid in CAMERAS}
    rng = _stream(spec, scenario, pid, _STREAM_WARDROBE)
    n_outfits = int(rng.integers(2, 4))
    order = rng.permutation(len(CAMERAS))
    # Round-robin over a shuffled camera order: with 4 cameras every one of <= 3 outfits appears.
    return {CAMERAS[int(c)]: i % n_outfits for i, c in enumerate(order)}


def _cc_query_positions(count: int) -> int:
    return max(1, round(CC_QUERY_FRACTION * count))


def plan_scenario(spec: SyntheticSpec, scenario: str) -> list[ImageRecord]:
    """Every image of one scenario with its labels, sorted by path."""
    train_pids, test_pids = scenario_pids(spec, scenario)
    records: list[ImageRecord] = []
    for pid in train_pids + test_pids:
        is_test = pid >= test_pids[0]
        outfits = camera_outfits(spec, scenario, pid)
        # Interleave cameras (k-major order) so that cc queries taken from the front spread over cameras.
        slots = [(camid, k) for k in range(spec.images_per_camera) for camid in CAMERAS]
        n_queries = _cc_query_positions(len(slots))
        for position, (camid, k) in enumerate(slots):
            group = 0 if scenario == "cc" else CAMERA_GROUP[camid]
            if not is_test:
                split = "train"
            elif scenario == "cc":
                split = "query" if position < n_queries else "gallery"
            else:  # vi/cr: infrared / low-res (group 1) queries against the group-0 gallery
                split = "query" if group == 1 else "gallery"
            records.append(ImageRecord(scenario, split, pid, camid, group, outfits[camid], k))
    return sorted(records, key=lambda r: r.path)


def plan_dataset(spec: SyntheticSpec) -> list[ImageRecord]:
    return [record for scenario in spec.scenarios for record in plan_scenario(spec, scenario)]


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _ScenarioWorld:
    """Everything fixed for one scenario: cameras, people, their wardrobes, the infrared mapping."""

    cameras: dict[int, render.CameraStyle]
    identities: dict[int, render.Identity]
    wardrobes: dict[int, list[render.Outfit]]
    infrared_lut: np.ndarray | None


def _sample_wardrobe(rng: np.random.Generator, n_outfits: int) -> list[render.Outfit]:
    """Outfits of one person, each with an upper-garment colour the others do not use."""
    outfits: list[render.Outfit] = []
    for _ in range(n_outfits):
        outfits.append(render.sample_outfit(rng, avoid_upper=frozenset(o.upper.name for o in outfits)))
    return outfits


def _build_world(spec: SyntheticSpec, scenario: str, records: list[ImageRecord]) -> _ScenarioWorld:
    pids = sorted({r.pid for r in records})
    n_outfits = {pid: 1 + max(camera_outfits(spec, scenario, pid).values()) for pid in pids}
    return _ScenarioWorld(
        cameras={c: render.sample_camera_style(_stream(spec, scenario, _STREAM_CAMERA, c)) for c in CAMERAS},
        identities={
            pid: render.sample_identity(_stream(spec, scenario, pid, _STREAM_IDENTITY)) for pid in pids
        },
        wardrobes={
            pid: _sample_wardrobe(_stream(spec, scenario, pid, _STREAM_OUTFIT), n_outfits[pid])
            for pid in pids
        },
        infrared_lut=render.make_infrared_lut(_stream(spec, scenario, _STREAM_LUT))
        if scenario == "vi"
        else None,
    )


def _render_record(spec: SyntheticSpec, world: _ScenarioWorld, record: ImageRecord, out_dir: Path) -> None:
    rng = _stream(spec, record.scenario, record.pid, _STREAM_IMAGE, record.camid, record.index)
    outfit = world.wardrobes[record.pid][record.outfit]
    infrared = record.scenario == "vi" and record.group == 1
    assert not infrared or world.infrared_lut is not None
    # Infrared: the material's reflectance first, the picture's lighting after (generator version 2).
    image, mask = render.render_person(
        world.identities[record.pid], outfit, world.cameras[record.camid], rng, spec.size,
        infrared_lut=world.infrared_lut if infrared else None,
    )
    if record.scenario == "cr" and record.group == 1:
        image = render.to_low_resolution(image, rng)
    # zlib level 1: noisy pictures barely compress, and level 1 is both faster and smaller here.
    image.save(out_dir / record.path, compress_level=PNG_COMPRESS_LEVEL)
    if record.mask_path is not None:
        mask.save(out_dir / record.mask_path, compress_level=PNG_COMPRESS_LEVEL)


def _render_dataset(spec: SyntheticSpec, out_dir: Path, name: str, progress: bool) -> list[ImageRecord]:
    """Render every image of ``spec`` into ``out_dir`` and return the records written."""
    records = plan_dataset(spec)
    for directory in sorted(
        {Path(r.path).parent for r in records} | {Path(r.mask_path).parent for r in records if r.mask_path}
    ):
        (out_dir / directory).mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=len(records), desc=f"rendering synthetic {name}", unit="img", disable=not progress
    ) as bar:
        for scenario in spec.scenarios:
            scenario_records = [r for r in records if r.scenario == scenario]
            world = _build_world(spec, scenario, scenario_records)
            for record in scenario_records:
                _render_record(spec, world, record, out_dir)
                bar.update()
    return records


def _write_manifest(records: list[ImageRecord], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for r in records:
            writer.writerow(
                [r.scenario, r.split, r.path, r.pid, r.camid, r.group, r.clothes, r.mask_path or ""]
            )


def _meta(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "spec": spec.model_dump(mode="json")}


def _meta_matches(dataset_dir: Path, spec: SyntheticSpec) -> bool:
    return folder_meta_matches(dataset_dir, "manifest.csv", _meta(spec))


def dataset_name(root: Path, spec: SyntheticSpec) -> str:
    """The preset name when the spec is exactly a preset and that folder is free or matches,
    else a name derived from a short hash of the spec (and generator version)."""
    preset = spec.preset_name()
    if preset is not None:
        candidate = root / preset
        if not candidate.exists() or _meta_matches(candidate, spec):
            return preset
        return f"{preset}-{spec.short_hash()}"
    return f"custom-{spec.short_hash()}"


def ensure_synthetic(
    root: str | os.PathLike, spec: SyntheticSpec | str = "demo", progress: bool = True
) -> Path:
    """Return the dataset directory for ``spec`` under ``root``, rendering it only if needed.

    Rendering goes to a temporary sibling directory that is renamed into place at the end, so a
    killed run never leaves a half-written dataset that a later call would reuse.
    """
    spec = SyntheticSpec.preset(spec) if isinstance(spec, str) else spec
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final_dir = root / dataset_name(root, spec)
    if _meta_matches(final_dir, spec):
        return final_dir
    with staging_directory(final_dir, lambda d: _meta_matches(d, spec)) as temp_dir:
        records = _render_dataset(spec, temp_dir, final_dir.name, progress)
        _write_manifest(records, temp_dir / "manifest.csv")
        (temp_dir / "meta.json").write_text(
            json.dumps({**_meta(spec), "images": len(records)}, indent=2) + "\n"
        )
    return final_dir


# ---------------------------------------------------------------------------------------------
# Loading


def read_manifest(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    manifest = Path(dataset_dir) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} does not exist; generate the dataset first with ensure_synthetic(root, spec)."
        )
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(
                f"{manifest} has columns {reader.fieldnames}, expected {list(MANIFEST_COLUMNS)}; "
                "regenerate it."
            )
        return list(reader)


def load_synthetic(dataset_dir: str | os.PathLike) -> dict[str, BenchmarkSplit]:
    """One :class:`BenchmarkSplit` per generated scenario, with absolute, sorted sample paths."""
    dataset_dir = Path(dataset_dir).resolve()
    rows = read_manifest(dataset_dir)
    splits: dict[str, BenchmarkSplit] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        scenario = row["scenario"]
        if scenario not in PROTOCOLS or row["split"] not in ("train", "query", "gallery"):
            raise ValueError(
                f"manifest row {row['path']!r} has an unknown scenario or split; regenerate the dataset."
            )
        split = splits.setdefault(
            scenario,
            BenchmarkSplit(name=f"synthetic_{scenario}", scenario=scenario, protocol=PROTOCOLS[scenario]),
        )
        sample = Sample(
            path=str(dataset_dir / row["path"]),
            pid=int(row["pid"]),
            camid=int(row["camid"]),
            scenario=scenario,
            group=int(row["group"]),
            source=f"synthetic_{scenario}",
            clothes=row["clothes"] or None,
            mask_path=str(dataset_dir / row["mask_path"]) if row["mask_path"] else None,
        )
        getattr(split, row["split"]).append(sample)
    return {scenario: splits[scenario] for scenario in SCENARIOS if scenario in splits}
