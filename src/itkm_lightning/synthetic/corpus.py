"""The captioned pretraining corpus: synthetic people of the benchmark's kind, from another domain.

Layout written by :func:`ensure_corpus` under ``<root>/<name>/``::

    manifest.jsonl      one record per image: path, pid, outfit, condition, captions, attributes
    meta.json           generator version and the spec
    images/<pid>_o<outfit>_<condition>_<k>.png

Every identity, outfit and image draws from its own random stream seeded with
``(CORPUS_STREAM_SALT, seed, ...)``. The benchmark seeds its streams with ``(seed, scenario, ...)``,
so no corpus person is a benchmark person (``tests/test_pretrain.py`` checks it on the traits);
corpus pids start at :data:`CORPUS_FIRST_PID`, far above the benchmark's.

The corpus is a different *domain* from the benchmark (docs/pretraining.md): every picture has its
own "web photo" scene (a coloured or near-white backdrop with a strong lighting gradient, no
clutter, little sensor noise) while the benchmark films everybody with four fixed, muted, cluttered,
noisier cameras.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from itkm_lightning.errors import ConfigError, DataUnavailableError
from itkm_lightning.fileio import folder_meta_matches, staging_directory
from itkm_lightning.synthetic.captions import KEEP_PROBABILITY, CONDITIONS, Condition, make_captions, visibility
from itkm_lightning.synthetic.modalities import make_infrared_lut, to_low_resolution
from itkm_lightning.synthetic.render import render_person
from itkm_lightning.synthetic.world import RGB, CameraStyle, Identity, Outfit, sample_identity, sample_wardrobe

CORPUS_VERSION = "7"
"""Bump when the pictures or captions change for the same spec, so cached corpora are not reused."""

CORPUS_STREAM_SALT = 0x50524554  # "PRET": keeps every corpus stream apart from the benchmark's
CORPUS_FIRST_PID = 1_000_000
"""Corpus pids start here; benchmark pids stay below 300,000 (``PID_STRIDE`` per scenario)."""
PNG_COMPRESS_LEVEL = 1

_STREAM_IDENTITY, _STREAM_WARDROBE, _STREAM_IMAGE, _STREAM_CAPTIONS = range(4)


class CorpusSpec(BaseModel):
    """What to render: ``identities`` people, each in ``outfits`` outfits, each outfit seen in every condition.

    Args:
        seed: corpus seed (independent of the benchmark's seed).
        identities: number of people.
        outfits: outfits per person.
        visible: visible pictures per outfit.
        infrared: infrared pictures per outfit (each with a new random intensity mapping).
        lowres: low-resolution pictures per outfit (stored 2-4x smaller).
        captions_per_image: captions stored per picture (training picks one at random each time).
        caption_keep_probability: chance that a caption mentions each attribute (lower: vaguer captions).
        image_height: rendered height in pixels.
        image_width: rendered width in pixels.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    identities: int = Field(600, ge=1, lt=1_000_000)
    outfits: int = Field(2, ge=1, le=8)
    visible: int = Field(2, ge=0)
    infrared: int = Field(2, ge=0)
    lowres: int = Field(1, ge=0)
    captions_per_image: int = Field(4, ge=1)
    caption_keep_probability: float = Field(KEEP_PROBABILITY, gt=0.0, le=1.0)
    image_height: int = Field(128, ge=32)
    image_width: int = Field(64, ge=16)

    @property
    def images_per_outfit(self) -> dict[Condition, int]:
        return {"visible": self.visible, "infrared": self.infrared, "lowres": self.lowres}

    @property
    def num_images(self) -> int:
        return self.identities * self.outfits * sum(self.images_per_outfit.values())

    def short_hash(self) -> str:
        text = json.dumps({"spec": self.model_dump(mode="json"), "version": CORPUS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


CORPUS_PRESETS: dict[str, CorpusSpec] = {
    "tiny": CorpusSpec(identities=4, outfits=1, visible=1, infrared=1, lowres=1, captions_per_image=2,
                       image_height=64, image_width=32),
    "demo": CorpusSpec(caption_keep_probability=1.0),  # conf/pretrain.yaml's corpus
}


def corpus_name(root: Path, spec: CorpusSpec) -> str:
    """The preset name when ``spec`` is exactly a preset and that folder is free or holds it, else
    ``<preset or custom>-<hash of spec and corpus version>`` (so an older corpus is never reused)."""
    preset = next((name for name, preset_spec in CORPUS_PRESETS.items() if preset_spec == spec), None)
    if preset is not None and (not (root / preset).exists() or _meta_matches(root / preset, spec)):
        return preset
    return f"{preset or 'custom'}-{spec.short_hash()}"


# ---------------------------------------------------------------------------------------------
# People and scenes


def _stream(spec: CorpusSpec, *keys: int) -> np.random.Generator:
    return np.random.default_rng([CORPUS_STREAM_SALT, spec.seed, *keys])


def corpus_pids(spec: CorpusSpec) -> list[int]:
    return list(range(CORPUS_FIRST_PID, CORPUS_FIRST_PID + spec.identities))


def corpus_identity(spec: CorpusSpec, pid: int) -> Identity:
    return sample_identity(_stream(spec, pid, _STREAM_IDENTITY))


def corpus_wardrobe(spec: CorpusSpec, pid: int) -> list[Outfit]:
    """The person's outfits, each with an upper-garment colour the others do not use."""
    return sample_wardrobe(_stream(spec, pid, _STREAM_WARDROBE), spec.outfits)


def traits_hash(identity: Identity) -> str:
    """A digest of every lasting trait of a person (equal digests = the same drawn person)."""
    return hashlib.sha256(repr(sorted(asdict(identity).items())).encode()).hexdigest()[:16]


def _hsv_colour(hue: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def sample_web_scene(rng: np.random.Generator) -> CameraStyle:
    """A per-picture "web photo" scene, deliberately unlike the benchmark's surveillance cameras.

    Benchmark cameras: muted grey backgrounds (grey 70-190 plus a +-40 cast) with a darker floor, 0-3
    clutter boxes, sensor noise 3-9, four fixed cameras. Here: a clearly coloured (or, 30% of the
    time, near-white) backdrop, a floor of another hue, a strong lighting gradient, no clutter, little
    noise, each picture its own scene. The varied, saturated backdrops teach the model to read the
    person rather than the scene; plain studio backdrops were learnt faster but did not transfer to
    the benchmark at all (docs/pretraining.md, "Calibration history").
    """
    if rng.random() < 0.3:  # a bright studio backdrop
        background = _hsv_colour(float(rng.random()), float(rng.uniform(0.0, 0.12)), float(rng.uniform(0.85, 1.0)))
    else:
        background = _hsv_colour(float(rng.random()), float(rng.uniform(0.35, 0.75)), float(rng.uniform(0.5, 0.95)))
    floor = _hsv_colour(float(rng.random()), float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.3, 0.8)))
    return CameraStyle(
        background=background,
        floor=floor,
        floor_level=float(rng.uniform(0.8, 0.98)),
        background_variation=float(rng.uniform(25.0, 50.0)),
        noise_std=float(rng.uniform(0.5, 2.5)),
        light=float(rng.uniform(0.95, 1.2)),
        tint=tuple(float(v) for v in rng.uniform(0.94, 1.06, size=3)),  # type: ignore[arg-type]
        clutter_colours=((0, 0, 0),),
        max_clutter=0,
    )


# ---------------------------------------------------------------------------------------------
# The plan and the rendering


@dataclass(frozen=True)
class CorpusImage:
    """One picture of the corpus (path relative to the corpus directory)."""

    pid: int
    outfit: int
    condition: Condition
    index: int

    @property
    def path(self) -> str:
        return f"images/{self.pid}_o{self.outfit}_{self.condition}_{self.index}.png"


def plan_corpus(spec: CorpusSpec) -> list[CorpusImage]:
    return [
        CorpusImage(pid, outfit, condition, index)
        for pid in corpus_pids(spec)
        for outfit in range(spec.outfits)
        for condition in CONDITIONS
        for index in range(spec.images_per_outfit[condition])
    ]


def render_corpus_image(
    spec: CorpusSpec, image: CorpusImage, identity: Identity, outfit: Outfit
) -> tuple[Image.Image, dict]:
    """Draw one picture and return it with its manifest record (captions included)."""
    condition_id = CONDITIONS.index(image.condition)
    rng = _stream(spec, image.pid, _STREAM_IMAGE, image.outfit, condition_id, image.index)
    scene = sample_web_scene(rng)
    # Each infrared picture has its own table (another camera and filter each time), applied to the
    # material before the picture is lit, as in the benchmark (corpus version 6).
    lut = make_infrared_lut(rng) if image.condition == "infrared" else None
    picture, _ = render_person(
        identity, outfit, scene, rng, (spec.image_height, spec.image_width), infrared_lut=lut
    )
    if image.condition == "lowres":
        picture = to_low_resolution(picture, rng)
    downsample = spec.image_height / picture.height
    seen = visibility(image.condition, identity, outfit, spec.image_height, downsample)
    caption_rng = _stream(spec, image.pid, _STREAM_CAPTIONS, image.outfit, condition_id, image.index)
    record = {
        "path": image.path,
        "pid": image.pid,
        "outfit": image.outfit,
        "condition": image.condition,
        "captions": make_captions(
            identity, outfit, seen, caption_rng, spec.captions_per_image, spec.caption_keep_probability
        ),
        "attributes": {
            "upper": outfit.upper.name,
            "lower": outfit.lower.name,
            "pattern": outfit.pattern,
            "sleeves": outfit.sleeves,
            "lower_kind": outfit.lower_kind,
            "bag": identity.bag,
            "bag_colour": None if identity.bag_colour is None else identity.bag_colour.name,
            "hair_style": identity.hair_style,
            "hair_colour": identity.hair_colour.name,
            "downsample": round(downsample, 4),
            "colour_visible": seen.colour,
            "pattern_visible": seen.pattern,
            "fine_detail_visible": seen.fine_detail,
            "traits": traits_hash(identity),
        },
    }
    return picture, record


def _render_corpus(spec: CorpusSpec, out_dir: Path, name: str, progress: bool) -> list[dict]:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(spec)
    records: list[dict] = []
    people: dict[int, tuple[Identity, list[Outfit]]] = {}
    with tqdm(total=len(plan), desc=f"rendering pretraining corpus {name}", unit="img", disable=not progress) as bar:
        for image in plan:
            if image.pid not in people:
                people = {image.pid: (corpus_identity(spec, image.pid), corpus_wardrobe(spec, image.pid))}
            identity, wardrobe = people[image.pid]
            picture, record = render_corpus_image(spec, image, identity, wardrobe[image.outfit])
            picture.save(out_dir / image.path, compress_level=PNG_COMPRESS_LEVEL)
            records.append(record)
            bar.update()
    return records


def _meta(spec: CorpusSpec) -> dict:
    return {"corpus_version": CORPUS_VERSION, "spec": spec.model_dump(mode="json")}


def _meta_matches(corpus_dir: Path, spec: CorpusSpec) -> bool:
    return folder_meta_matches(corpus_dir, "manifest.jsonl", _meta(spec))


def ensure_corpus(root: str | os.PathLike, spec: CorpusSpec | str = "demo", progress: bool = True) -> Path:
    """Return the corpus directory for ``spec`` under ``root``, rendering it only if needed.

    Renders into a temporary sibling that is renamed into place at the end, so a killed run never
    leaves a half-written corpus that a later call would reuse.
    """
    if isinstance(spec, str):
        if spec not in CORPUS_PRESETS:
            raise ConfigError(f"unknown corpus preset {spec!r}; choose one of {sorted(CORPUS_PRESETS)}.")
        spec = CORPUS_PRESETS[spec]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final_dir = root / corpus_name(root, spec)
    if _meta_matches(final_dir, spec):
        return final_dir
    if final_dir.exists() and any(final_dir.iterdir()):
        raise FileExistsError(
            f"{final_dir} exists but holds another corpus (older version or other spec); delete it and run again."
        )
    with staging_directory(final_dir, lambda d: _meta_matches(d, spec)) as temp_dir:
        records = _render_corpus(spec, temp_dir, final_dir.name, progress)
        with (temp_dir / "manifest.jsonl").open("w") as handle:
            handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in records)
        (temp_dir / "meta.json").write_text(json.dumps({**_meta(spec), "images": len(records)}, indent=2) + "\n")
    return final_dir


def read_corpus(corpus_dir: str | os.PathLike) -> list[dict]:
    """The manifest records of a rendered corpus, in rendering order."""
    manifest = Path(corpus_dir) / "manifest.jsonl"
    if not manifest.is_file():
        raise DataUnavailableError(f"{manifest} does not exist; render the corpus first with ensure_corpus(root, spec).")
    with manifest.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
