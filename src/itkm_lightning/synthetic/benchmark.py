"""The embedded synthetic benchmark on disk: rendering, layout, loading (``data.sources.SyntheticBenchmark`` uses it).

Layout written by :func:`ensure_synthetic` under ``<root>/<name>/``::

    manifest.csv            scenario, split, path, pid, camid, group, clothes, mask_path
    meta.json               generator version and the spec
    <scenario>/<split>/<pid>_c<camid>_<k>.png
    cc/masks/<split>/<pid>_c<camid>_<k>.png

What is rendered (scenarios, identities, splits) is planned in ``synthetic/spec.py``. Every image has
its own random stream derived from (seed, scenario, pid, camid, k), so images do not depend on the
rendering order and one seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.errors import DataFormatError, DataUnavailableError
from itkm_lightning.fileio import folder_meta_matches, read_csv_table, staging_directory
from itkm_lightning.synthetic.modalities import make_infrared_lut, to_low_resolution
from itkm_lightning.synthetic.render import render_person
from itkm_lightning.synthetic.spec import (
    CAMERAS,
    GENERATOR_VERSION,
    STREAM_CAMERA,
    STREAM_IDENTITY,
    STREAM_IMAGE,
    STREAM_LUT,
    STREAM_OUTFIT,
    ImageRecord,
    SyntheticSpec,
    camera_outfits,
    plan_dataset,
    stream,
)
from itkm_lightning.synthetic.world import (
    CameraStyle,
    Identity,
    Outfit,
    sample_camera_style,
    sample_identity,
    sample_wardrobe,
)

PROTOCOLS = {"vi": "market", "cr": "market", "cc": "cloth_changing"}
MANIFEST_COLUMNS = ("scenario", "split", "path", "pid", "camid", "group", "clothes", "mask_path")
PNG_COMPRESS_LEVEL = 1


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _ScenarioWorld:
    """Everything fixed for one scenario: cameras, people, their wardrobes, the infrared mapping."""

    cameras: dict[int, CameraStyle]
    identities: dict[int, Identity]
    wardrobes: dict[int, list[Outfit]]
    infrared_lut: np.ndarray | None


def _build_world(spec: SyntheticSpec, scenario: str, records: list[ImageRecord]) -> _ScenarioWorld:
    pids = sorted({r.pid for r in records})
    n_outfits = {pid: 1 + max(camera_outfits(spec, scenario, pid).values()) for pid in pids}
    return _ScenarioWorld(
        cameras={c: sample_camera_style(stream(spec, scenario, STREAM_CAMERA, c)) for c in CAMERAS},
        identities={
            pid: sample_identity(stream(spec, scenario, pid, STREAM_IDENTITY)) for pid in pids
        },
        wardrobes={
            pid: sample_wardrobe(stream(spec, scenario, pid, STREAM_OUTFIT), n_outfits[pid])
            for pid in pids
        },
        infrared_lut=make_infrared_lut(stream(spec, scenario, STREAM_LUT))
        if scenario == "vi"
        else None,
    )


def _render_record(spec: SyntheticSpec, world: _ScenarioWorld, record: ImageRecord, out_dir: Path) -> None:
    rng = stream(spec, record.scenario, record.pid, STREAM_IMAGE, record.camid, record.index)
    outfit = world.wardrobes[record.pid][record.outfit]
    infrared = record.scenario == "vi" and record.group == 1
    assert not infrared or world.infrared_lut is not None
    # Infrared: the material's reflectance first, the picture's lighting after (generator version 2).
    image, mask = render_person(
        world.identities[record.pid], outfit, world.cameras[record.camid], rng, spec.size,
        infrared_lut=world.infrared_lut if infrared else None,
    )
    if record.scenario == "cr" and record.group == 1:
        image = to_low_resolution(image, rng)
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
        raise DataUnavailableError(
            f"{manifest} does not exist; generate the dataset first with ensure_synthetic(root, spec)."
        )
    return read_csv_table(manifest, MANIFEST_COLUMNS, "regenerate it.")


def load_synthetic(dataset_dir: str | os.PathLike) -> dict[str, BenchmarkSplit]:
    """One :class:`BenchmarkSplit` per generated scenario, with absolute, sorted sample paths."""
    dataset_dir = Path(dataset_dir).resolve()
    rows = read_manifest(dataset_dir)
    splits: dict[str, BenchmarkSplit] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        scenario = row["scenario"]
        if scenario not in PROTOCOLS or row["split"] not in ("train", "query", "gallery"):
            raise DataFormatError(
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
