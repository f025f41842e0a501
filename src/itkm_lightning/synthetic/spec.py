"""What the embedded synthetic multi-scenario benchmark holds: its spec, presets, and which images exist.

Three scenarios, each with its own identities and four cameras (1-based camid; cameras 1-2 are
group 0, cameras 3-4 group 1):

- ``vi``: group 0 visible, group 1 infrared (a fixed per-dataset colour-to-intensity mapping);
  query = infrared test images, gallery = visible test images.
- ``cr``: group 1 stored down-sampled 2-4x (the loader up-samples); query = low-res, gallery = high-res.
- ``cc``: every identity wears 2-3 outfits, one per camera, at least two of them seen; exact clothes
  masks are written; all samples are group 0 (group 1 is the clothing-agnostic view made by
  ``ClothesMasker``); about a quarter of each test identity's images are queries.

The plan here draws nothing but the wardrobe sizes; ``synthetic/benchmark.py`` renders and stores it.
Every purpose has its own random stream derived from (seed, scenario, keys), so images do not depend
on the rendering order and one seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from itkm_lightning.data.schema import SCENARIOS
from itkm_lightning.errors import ConfigError

GENERATOR_VERSION = "2"
"""Bump when the pictures change for the same spec, so cached datasets are not reused."""

CAMERAS = (1, 2, 3, 4)
CAMERA_GROUP = {1: 0, 2: 0, 3: 1, 4: 1}
PID_STRIDE = 100_000
"""pid = PID_STRIDE * scenario index + n, so pids are distinct across scenarios too."""
CC_QUERY_FRACTION = 0.25

ScenarioTag = Literal["vi", "cr", "cc"]
Split = Literal["train", "query", "gallery"]

# Stream tags that keep the random streams of different purposes apart.
STREAM_CAMERA, STREAM_IDENTITY, STREAM_OUTFIT, STREAM_WARDROBE, STREAM_IMAGE, STREAM_LUT = range(6)


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
            raise ConfigError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}.")
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


def stream(spec: SyntheticSpec, scenario: str, *keys: int) -> np.random.Generator:
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
    rng = stream(spec, scenario, pid, STREAM_WARDROBE)
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


