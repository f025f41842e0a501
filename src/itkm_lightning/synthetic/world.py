"""The people, clothes and cameras of the synthetic pictures: palettes, traits and their random draws.

Everything a picture shows comes from small dataclasses with named attributes (colours carry their
palette name), so that captions can be generated from the same values that drew the image
(``synthetic/captions.py``). All randomness flows through the ``numpy.random.Generator`` passed in,
and every function consumes it in a fixed order, so one seed gives one person on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

RGB = tuple[int, int, int]

CLOTHES_PALETTE: dict[str, RGB] = {
    "black": (30, 30, 32),
    "white": (235, 235, 230),
    "grey": (128, 128, 128),
    "red": (200, 35, 40),
    "orange": (235, 130, 35),
    "yellow": (235, 210, 50),
    "green": (50, 140, 60),
    "teal": (30, 140, 140),
    "blue": (45, 95, 210),
    "navy": (25, 35, 90),
    "purple": (120, 50, 150),
    "pink": (235, 140, 175),
    "brown": (115, 70, 40),
    "beige": (215, 195, 155),
}
"""Named garment, shoe and bag colours; each draw jitters the nominal value a little."""

SKIN_PALETTE: dict[str, RGB] = {
    "pale": (245, 215, 195),
    "light": (230, 190, 160),
    "medium": (200, 150, 115),
    "tan": (165, 115, 80),
    "brown": (120, 80, 55),
    "dark": (80, 55, 40),
}

HAIR_PALETTE: dict[str, RGB] = {
    "black": (25, 22, 20),
    "dark brown": (70, 45, 30),
    "brown": (120, 80, 45),
    "blonde": (215, 185, 120),
    "auburn": (150, 65, 35),
    "grey": (165, 165, 160),
}

HairStyle = Literal["short", "long", "bun", "shaved"]
HeadShape = Literal["round", "oval"]
BagType = Literal["none", "backpack", "handbag", "shoulder"]
Pattern = Literal["plain", "stripes", "checks"]
Sleeves = Literal["short", "long"]
LowerKind = Literal["trousers", "skirt"]
View = Literal["front", "back"]

HAIR_STYLES: tuple[HairStyle, ...] = ("short", "long", "bun", "shaved")
HEAD_SHAPES: tuple[HeadShape, ...] = ("round", "oval")
BAG_TYPES: tuple[BagType, ...] = ("none", "backpack", "handbag", "shoulder")
PATTERNS: tuple[Pattern, ...] = ("plain", "stripes", "checks")

COLOUR_JITTER = 14
"""Largest per-channel offset added to a palette colour when it is drawn."""

PATTERN_MIN_LUMINANCE_CONTRAST = 0.35
"""Pattern colours differ this much in luminance (0-1) from the garment, so that the pattern
survives as intensity contrast in infrared."""


@dataclass(frozen=True)
class NamedColour:
    """A palette colour: the caption word and the jittered RGB value actually drawn."""

    name: str
    rgb: RGB


@dataclass(frozen=True)
class Identity:
    """Traits that stay the same whatever a person wears."""

    height: float
    """Body height relative to the average person (about 0.88-1.06)."""
    width: float
    """Body width relative to the average person (about 0.85-1.2)."""
    skin: NamedColour
    hair_colour: NamedColour
    hair_style: HairStyle
    head_size: float
    head_shape: HeadShape
    shoes: NamedColour
    bag: BagType
    bag_colour: NamedColour | None
    """None exactly when ``bag == "none"``."""


@dataclass(frozen=True)
class Outfit:
    """One set of clothes: an upper garment, possibly patterned, and trousers or a skirt."""

    upper: NamedColour
    lower: NamedColour
    pattern: Pattern
    pattern_colour: NamedColour | None
    """None exactly when ``pattern == "plain"``."""
    pattern_period: float
    """Stripe or check period as a fraction of body height (unused for plain garments)."""
    sleeves: Sleeves
    lower_kind: LowerKind


@dataclass(frozen=True)
class CameraStyle:
    """What one camera adds to every picture it takes: scene colours, lighting, sensor noise."""

    background: RGB
    floor: RGB
    floor_level: float
    """Row (fraction of height) where the floor starts."""
    background_variation: float
    """Amplitude (0-255 units) of the smooth random variation of the background."""
    noise_std: float
    """Per-pixel Gaussian sensor noise (0-255 units)."""
    light: float
    """Global brightness multiplier of the camera."""
    tint: tuple[float, float, float]
    """Per-channel colour cast."""
    clutter_colours: tuple[RGB, ...]
    max_clutter: int = 3


@dataclass(frozen=True)
class Pose:
    """Per-picture body variation."""

    view: View
    stride: float
    """Horizontal ankle offset of the legs, fraction of body height (signed)."""
    arm_swing: float
    """Horizontal wrist offset of the arms, fraction of body height (signed)."""


# ---------------------------------------------------------------------------------------------
# Sampling


def luminance(rgb: RGB) -> float:
    """ITU-R 601 luma in [0, 1], the weights PIL's ``convert("L")`` uses."""
    r, g, b = rgb
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def jitter_colour(rgb: RGB, rng: np.random.Generator, amount: int = COLOUR_JITTER) -> RGB:
    offsets = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + o, 0, 255)) for c, o in zip(rgb, offsets, strict=True))  # type: ignore[return-value]


def sample_colour(
    rng: np.random.Generator, palette: dict[str, RGB], names: list[str] | None = None
) -> NamedColour:
    """Pick a palette name (optionally from a subset) and jitter its RGB value."""
    choices = sorted(palette) if names is None else names
    name = choices[int(rng.integers(len(choices)))]
    return NamedColour(name, jitter_colour(palette[name], rng))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw the lasting traits of one person."""
    height = float(rng.uniform(0.88, 1.06))
    width = float(rng.uniform(0.85, 1.2))
    skin = sample_colour(rng, SKIN_PALETTE)
    hair_colour = sample_colour(rng, HAIR_PALETTE)
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    head_size = float(rng.uniform(0.9, 1.15))
    head_shape = HEAD_SHAPES[int(rng.integers(len(HEAD_SHAPES)))]
    shoes = sample_colour(rng, CLOTHES_PALETTE)
    bag = BAG_TYPES[int(rng.choice(len(BAG_TYPES), p=[0.4, 0.2, 0.2, 0.2]))]
    bag_colour = sample_colour(rng, CLOTHES_PALETTE)  # drawn unconditionally: fixed rng order
    return Identity(
        height=height,
        width=width,
        skin=skin,
        hair_colour=hair_colour,
        hair_style=hair_style,
        head_size=head_size,
        head_shape=head_shape,
        shoes=shoes,
        bag=bag,
        bag_colour=None if bag == "none" else bag_colour,
    )


def contrasting_colour_names(rgb: RGB, min_contrast: float = PATTERN_MIN_LUMINANCE_CONTRAST) -> list[str]:
    """Palette names whose luminance differs from ``rgb`` by at least ``min_contrast``."""
    own = luminance(rgb)
    return [n for n in sorted(CLOTHES_PALETTE) if abs(luminance(CLOTHES_PALETTE[n]) - own) >= min_contrast]


def sample_outfit(rng: np.random.Generator, avoid_upper: frozenset[str] = frozenset()) -> Outfit:
    """Draw one outfit; ``avoid_upper`` lists upper-garment colour names already worn."""
    upper_names = [n for n in sorted(CLOTHES_PALETTE) if n not in avoid_upper] or sorted(CLOTHES_PALETTE)
    upper = sample_colour(rng, CLOTHES_PALETTE, upper_names)
    lower = sample_colour(rng, CLOTHES_PALETTE)
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.5, 0.3, 0.2]))]
    contrast_names = contrasting_colour_names(upper.rgb) or sorted(CLOTHES_PALETTE)
    pattern_colour = sample_colour(rng, CLOTHES_PALETTE, contrast_names)
    pattern_period = float(rng.uniform(0.03, 0.07))
    sleeves: Sleeves = "long" if rng.random() < 0.5 else "short"
    lower_kind: LowerKind = "skirt" if rng.random() < 0.25 else "trousers"
    return Outfit(
        upper=upper,
        lower=lower,
        pattern=pattern,
        pattern_colour=None if pattern == "plain" else pattern_colour,
        pattern_period=pattern_period,
        sleeves=sleeves,
        lower_kind=lower_kind,
    )


def sample_camera_style(rng: np.random.Generator) -> CameraStyle:
    """Draw one camera's scene and sensor characteristics."""
    # Muted scene colours: a grey level plus a moderate cast, as in real indoor/outdoor footage.
    grey = rng.uniform(70, 190)
    background = tuple(int(v) for v in np.clip(grey + rng.integers(-40, 41, size=3), 0, 255))
    floor_grey = grey * rng.uniform(0.5, 0.9)
    floor = tuple(int(v) for v in np.clip(floor_grey + rng.integers(-25, 26, size=3), 0, 255))
    clutter = tuple(tuple(int(v) for v in rng.integers(20, 236, size=3)) for _ in range(3))
    return CameraStyle(
        background=background,  # type: ignore[arg-type]
        floor=floor,  # type: ignore[arg-type]
        floor_level=float(rng.uniform(0.72, 0.9)),
        background_variation=float(rng.uniform(8.0, 30.0)),
        noise_std=float(rng.uniform(3.0, 9.0)),
        light=float(rng.uniform(0.85, 1.15)),
        tint=tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3)),  # type: ignore[arg-type]
        clutter_colours=clutter,  # type: ignore[arg-type]
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    view: View = "front" if rng.random() < 0.5 else "back"
    return Pose(view=view, stride=float(rng.uniform(-0.05, 0.05)), arm_swing=float(rng.uniform(-0.04, 0.04)))


def sample_wardrobe(rng: np.random.Generator, n_outfits: int) -> list[Outfit]:
    """Outfits of one person, each with an upper-garment colour the others do not use."""
    outfits: list[Outfit] = []
    for _ in range(n_outfits):
        outfits.append(sample_outfit(rng, avoid_upper=frozenset(o.upper.name for o in outfits)))
    return outfits
