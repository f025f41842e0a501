"""Procedural pedestrians for the embedded synthetic benchmark: traits, outfits, cameras, drawing.

Everything a picture shows comes from small dataclasses with named attributes (colours carry their
palette name), so that captions can later be generated from the same values that drew the image.
All randomness flows through the ``numpy.random.Generator`` passed in, and every function consumes
it in a fixed order, so one seed gives one picture on every run.

Drawing happens on a canvas twice the requested size and is box-downsampled, which is cheaper than
anti-aliased drawing in PIL and gives smooth edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

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

BINARY_THRESHOLD_LUT = [0] * 128 + [255] * 128
"""``Image.point`` table: 255 for values >= 128, else 0 (a table avoids 256 Python calls per image)."""

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


# ---------------------------------------------------------------------------------------------
# Drawing


class _Painter:
    """Draws every shape on the picture and, in step, on the clothes mask (255 = clothes)."""

    def __init__(self, canvas: Image.Image) -> None:
        self.canvas = canvas
        self.mask = Image.new("L", canvas.size, 0)
        self.upper_region = Image.new("L", canvas.size, 0)
        self._draw = ImageDraw.Draw(canvas)
        self._mask_draw = ImageDraw.Draw(self.mask)
        self._upper_draw = ImageDraw.Draw(self.upper_region)

    def _targets(self, colour: RGB, clothes: bool, upper: bool):
        yield self._draw, colour
        yield self._mask_draw, 255 if clothes else 0
        if upper:
            yield self._upper_draw, 255

    def polygon(self, points, colour: RGB, clothes: bool = False, upper: bool = False) -> None:
        for draw, fill in self._targets(colour, clothes, upper):
            draw.polygon(points, fill=fill)

    def ellipse(self, box, colour: RGB, clothes: bool = False, upper: bool = False) -> None:
        for draw, fill in self._targets(colour, clothes, upper):
            draw.ellipse(box, fill=fill)

    def chord(self, box, start: float, end: float, colour: RGB, clothes: bool = False) -> None:
        for draw, fill in self._targets(colour, clothes, False):
            draw.chord(box, start, end, fill=fill)

    def rectangle(self, box, colour: RGB, clothes: bool = False) -> None:
        for draw, fill in self._targets(colour, clothes, False):
            draw.rectangle(box, fill=fill)

    def limb(self, start, end, width: float, colour: RGB, clothes: bool = False, upper: bool = False) -> None:
        """A thick segment with round ends (arms, legs, straps)."""
        w = max(1, int(round(width)))
        r = width / 2
        for draw, fill in self._targets(colour, clothes, upper):
            draw.line([start, end], fill=fill, width=w)
            for x, y in (start, end):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def paste_pattern(self, pattern_mask: Image.Image, colour: RGB) -> None:
        """Colour the pattern where it overlaps the upper garment (the mask already says clothes)."""
        region = ImageChops.multiply(pattern_mask, self.upper_region)
        self.canvas.paste(colour, (0, 0), region)


def _background(camera: CameraStyle, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Camera colour above the floor line, floor colour below, plus a smooth random variation.

    Built at half the canvas size and doubled with nearest-neighbour: the canvas is box-reduced by
    two at the end, so this gives the same output at a quarter of the cost.
    """
    width, height = size[0] // 2, size[1] // 2
    base = Image.new("RGB", (width, height), camera.background)
    ImageDraw.Draw(base).rectangle((0, int(camera.floor_level * height), width, height), fill=camera.floor)
    # A bilinear upsample of a random 4x2 grid is a cheap smooth field (lighting falloff, walls);
    # it is stored around 128 and added back with offset -128.
    coarse = np.clip(128 + rng.normal(0.0, camera.background_variation, size=(4, 2, 3)), 0, 255)
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return ImageChops.add(base, smooth, scale=1.0, offset=-128).resize(size, Image.NEAREST)


def _draw_clutter(canvas: Image.Image, camera: CameraStyle, rng: np.random.Generator) -> None:
    """0..max_clutter rectangles behind the person (furniture, signs, other objects)."""
    width, height = canvas.size
    count = int(rng.integers(0, camera.max_clutter + 1))
    boxes = rng.uniform(0.0, 1.0, size=(camera.max_clutter, 4))  # drawn in full: fixed rng order
    colour_ids = rng.integers(0, len(camera.clutter_colours), size=camera.max_clutter)
    draw = ImageDraw.Draw(canvas)
    for (x, y, w, h), colour_id in list(zip(boxes, colour_ids, strict=True))[:count]:
        x0, y0 = x * width, y * height
        x1, y1 = x0 + (0.1 + 0.4 * w) * width, y0 + (0.05 + 0.3 * h) * height
        draw.rectangle((x0, y0, x1, y1), fill=camera.clutter_colours[int(colour_id)])


def _pattern_mask(
    size: tuple[int, int], outfit: Outfit, unit: float, top: float, phase: float
) -> Image.Image | None:
    """Stripes or checks over the whole canvas; clipped to the upper garment when pasted."""
    if outfit.pattern == "plain":
        return None
    width, height = size
    period = max(4.0, outfit.pattern_period * unit)
    band = period / 2
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    y = top + phase * period - period
    while y < height:
        draw.rectangle((0, y, width, y + band - 1), fill=255)
        y += period
    if outfit.pattern == "checks":
        columns = Image.new("L", size, 0)
        column_draw = ImageDraw.Draw(columns)
        x = phase * period - period
        while x < width:
            column_draw.rectangle((x, 0, x + band - 1, height), fill=255)
            x += period
        mask = ImageChops.logical_xor(mask.convert("1"), columns.convert("1")).convert("L")
    return mask


@dataclass(frozen=True)
class _Body:
    """Key points of one drawn person, in canvas pixels."""

    unit: float
    cx: float
    top: float
    feet: float
    head_rx: float
    head_ry: float
    shoulder_y: float
    hip_y: float
    shoulder_half: float
    hip_half: float
    arm_width: float
    leg_width: float


def _body_geometry(identity: Identity, size: tuple[int, int], rng: np.random.Generator) -> _Body:
    width, height = size
    scale = float(rng.uniform(0.9, 1.1))
    # "+-8 px at 256x128", expressed as fractions so any canvas size gets the same relative jitter.
    dx = float(rng.uniform(-1, 1)) * width * 8 / 128
    dy = float(rng.uniform(-1, 1)) * height * 8 / 256
    unit = 0.82 * height * identity.height * scale
    feet = 0.965 * height + dy
    top = feet - unit
    radius = 0.068 * unit * identity.head_size
    rx, ry = (radius, radius) if identity.head_shape == "round" else (radius * 0.9, radius * 1.18)
    shoulder_y = top + 2 * ry + 0.025 * unit
    return _Body(
        unit=unit,
        cx=width / 2 + dx,
        top=top,
        feet=feet,
        head_rx=rx,
        head_ry=ry,
        shoulder_y=shoulder_y,
        hip_y=top + 0.54 * unit,
        shoulder_half=0.125 * unit * identity.width,
        hip_half=0.1 * unit * identity.width,
        arm_width=0.05 * unit * identity.width**0.5,
        leg_width=0.075 * unit * identity.width,
    )


def _draw_legs(p: _Painter, b: _Body, identity: Identity, outfit: Outfit, pose: Pose) -> None:
    ankle_y = b.feet - 0.035 * b.unit
    stride = pose.stride * b.unit
    for side, sign in ((-1, 1), (1, -1)):
        hip = (b.cx + side * b.hip_half * 0.5, b.hip_y)
        ankle = (b.cx + side * b.hip_half * 0.5 + sign * stride, ankle_y)
        if outfit.lower_kind == "trousers":
            p.limb(hip, ankle, b.leg_width, outfit.lower.rgb, clothes=True)
        else:
            p.limb(hip, ankle, b.leg_width * 0.7, identity.skin.rgb)
        shoe_w, shoe_h = b.leg_width * 0.75, 0.03 * b.unit
        p.ellipse(
            (ankle[0] - shoe_w, ankle[1] - shoe_h * 0.5, ankle[0] + shoe_w, ankle[1] + shoe_h * 1.5),
            identity.shoes.rgb,
        )
    if outfit.lower_kind == "trousers":
        # Fill the crotch so the trousers read as one garment.
        p.polygon(
            [
                (b.cx - b.hip_half, b.hip_y - 0.02 * b.unit),
                (b.cx + b.hip_half, b.hip_y - 0.02 * b.unit),
                (b.cx, b.hip_y + 0.1 * b.unit),
            ],
            outfit.lower.rgb,
            clothes=True,
        )


def _draw_skirt(p: _Painter, b: _Body, outfit: Outfit) -> None:
    hem_y = b.hip_y + 0.2 * b.unit
    hem_half = b.hip_half * 1.4
    p.polygon(
        [
            (b.cx - b.hip_half, b.hip_y - 0.03 * b.unit),
            (b.cx + b.hip_half, b.hip_y - 0.03 * b.unit),
            (b.cx + hem_half, hem_y),
            (b.cx - hem_half, hem_y),
        ],
        outfit.lower.rgb,
        clothes=True,
    )


def _arm_points(b: _Body, pose: Pose) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    arms = []
    for side in (-1, 1):
        shoulder = (b.cx + side * (b.shoulder_half - b.arm_width * 0.4), b.shoulder_y + b.arm_width * 0.5)
        wrist = (
            b.cx + side * (b.shoulder_half + 0.02 * b.unit) + side * pose.arm_swing * b.unit,
            b.shoulder_y + 0.34 * b.unit,
        )
        arms.append((shoulder, wrist))
    return arms


def _draw_upper(p: _Painter, b: _Body, identity: Identity, outfit: Outfit, pose: Pose, phase: float) -> None:
    """Bare arms, torso, sleeves, then the pattern, all before anything that can occlude them."""
    arms = _arm_points(b, pose)
    for shoulder, wrist in arms:
        p.limb(shoulder, wrist, b.arm_width * 0.85, identity.skin.rgb)
    p.polygon(
        [
            (b.cx - b.shoulder_half, b.shoulder_y),
            (b.cx + b.shoulder_half, b.shoulder_y),
            (b.cx + b.hip_half, b.hip_y),
            (b.cx - b.hip_half, b.hip_y),
        ],
        outfit.upper.rgb,
        clothes=True,
        upper=True,
    )
    sleeve_length = 0.92 if outfit.sleeves == "long" else 0.38
    for shoulder, wrist in arms:
        elbow = (
            shoulder[0] + (wrist[0] - shoulder[0]) * sleeve_length,
            shoulder[1] + (wrist[1] - shoulder[1]) * sleeve_length,
        )
        p.limb(shoulder, elbow, b.arm_width, outfit.upper.rgb, clothes=True, upper=True)
    pattern = _pattern_mask(p.canvas.size, outfit, b.unit, b.shoulder_y, phase)
    if pattern is not None and outfit.pattern_colour is not None:
        p.paste_pattern(pattern, outfit.pattern_colour.rgb)
    hand_r = b.arm_width * 0.5
    for _, (x, y) in arms:
        p.ellipse((x - hand_r, y - hand_r, x + hand_r, y + hand_r * 1.3), identity.skin.rgb)


def _head_box(b: _Body) -> tuple[float, float, float, float]:
    cy = b.top + b.head_ry
    return (b.cx - b.head_rx, cy - b.head_ry, b.cx + b.head_rx, cy + b.head_ry)


def _draw_long_hair_behind(p: _Painter, b: _Body, identity: Identity) -> None:
    if identity.hair_style == "long":
        x0, y0, x1, _ = _head_box(b)
        p.rectangle(
            (x0 - 0.1 * b.head_rx, b.top + b.head_ry, x1 + 0.1 * b.head_rx, b.shoulder_y + 0.12 * b.unit),
            identity.hair_colour.rgb,
        )


def _draw_head(p: _Painter, b: _Body, identity: Identity, pose: Pose) -> None:
    neck_half = 0.35 * b.head_rx
    p.rectangle(
        (b.cx - neck_half, b.top + 1.6 * b.head_ry, b.cx + neck_half, b.shoulder_y + 2), identity.skin.rgb
    )
    box = _head_box(b)
    p.ellipse(box, identity.skin.rgb)
    x0, y0, x1, y1 = box
    hair = identity.hair_colour.rgb
    grow = 0.08 * b.head_rx
    if identity.hair_style == "shaved":
        p.chord((x0, y0, x1, y1), 200, 340, hair)
        return
    if pose.view == "back":
        p.ellipse((x0 - grow, y0 - grow, x1 + grow, y1), hair)
    else:
        p.chord((x0 - grow, y0 - grow, x1 + grow, y1 - 0.6 * b.head_ry), 180, 360, hair)
        p.rectangle((x0 - grow, y0 + 0.55 * b.head_ry, x0 + 0.2 * b.head_rx, y0 + 1.1 * b.head_ry), hair)
        p.rectangle((x1 - 0.2 * b.head_rx, y0 + 0.55 * b.head_ry, x1 + grow, y0 + 1.1 * b.head_ry), hair)
    if identity.hair_style == "bun":
        r = 0.45 * b.head_rx
        p.ellipse((b.cx - r, y0 - 1.4 * r, b.cx + r, y0 + 0.4 * r), hair)
    if identity.hair_style == "long" and pose.view == "back":
        p.rectangle((x0 - grow, b.top + b.head_ry, x1 + grow, b.shoulder_y + 0.12 * b.unit), hair)


def _draw_backpack_sides(p: _Painter, b: _Body, identity: Identity, pose: Pose) -> None:
    """From the front a backpack shows only as edges sticking out behind the torso."""
    if identity.bag == "backpack" and pose.view == "front" and identity.bag_colour is not None:
        y0, y1 = b.shoulder_y + 0.03 * b.unit, b.shoulder_y + 0.28 * b.unit
        half = b.shoulder_half + 0.03 * b.unit
        p.rectangle((b.cx - half, y0, b.cx + half, y1), identity.bag_colour.rgb)


def _draw_bag(p: _Painter, b: _Body, identity: Identity, pose: Pose) -> None:
    if identity.bag_colour is None:
        return
    colour = identity.bag_colour.rgb
    side = 1 if pose.view == "front" else -1  # the same hand/shoulder, mirrored when seen from behind
    strap = 0.02 * b.unit
    if identity.bag == "backpack":
        if pose.view == "back":
            half = b.shoulder_half * 0.8
            p.rectangle(
                (b.cx - half, b.shoulder_y + 0.03 * b.unit, b.cx + half, b.shoulder_y + 0.3 * b.unit), colour
            )
        else:
            for s in (-1, 1):
                x = b.cx + s * b.shoulder_half * 0.55
                p.limb((x, b.shoulder_y), (x, b.shoulder_y + 0.2 * b.unit), strap, colour)
    elif identity.bag == "shoulder":
        p.limb(
            (b.cx - side * b.shoulder_half * 0.7, b.shoulder_y),
            (b.cx + side * b.hip_half, b.hip_y - 0.05 * b.unit),
            strap,
            colour,
        )
        x = b.cx + side * (b.hip_half + 0.02 * b.unit)
        p.rectangle(
            (x - 0.06 * b.unit, b.hip_y - 0.07 * b.unit, x + 0.06 * b.unit, b.hip_y + 0.03 * b.unit), colour
        )
    elif identity.bag == "handbag":
        _, (x, y) = _arm_points(b, pose)[0 if side < 0 else 1]
        p.rectangle((x - 0.045 * b.unit, y + 0.01 * b.unit, x + 0.045 * b.unit, y + 0.09 * b.unit), colour)


def _finish(
    canvas: Image.Image, camera: CameraStyle, rng: np.random.Generator, monochrome: bool = False
) -> Image.Image:
    """Lighting, slight blur and sensor noise, applied at the output size.

    ``monochrome``: an infrared camera with its own illuminator; the picture's brightness and the
    camera's light still scale it, but the camera's colour cast does not apply.
    """
    brightness = float(rng.uniform(0.7, 1.3))
    blur = float(rng.uniform(0.3, 0.7))
    noise_scale = float(rng.uniform(0.7, 1.3))
    blurred = canvas.filter(ImageFilter.GaussianBlur(blur))
    # Lighting as a per-channel lookup table: one C pass instead of float arithmetic on the image.
    tint = np.ones(3) if monochrome else np.asarray(camera.tint, dtype=np.float64)
    gain = (brightness * camera.light) * tint
    table = np.clip(np.arange(256)[None, :] * gain[:, None] + 0.5, 0, 255).astype(np.uint8)
    lit = np.asarray(blurred.point(table.ravel().tolist()), dtype=np.int16)
    if monochrome:
        noise = rng.standard_normal(size=lit.shape[:2], dtype=np.float32)[..., None]
    else:
        noise = rng.standard_normal(size=lit.shape, dtype=np.float32)
    noise = noise * np.float32(camera.noise_std * noise_scale)
    pixels = lit + np.rint(noise).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_person(
    identity: Identity,
    outfit: Outfit,
    camera: CameraStyle,
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 64),
    pose: Pose | None = None,
    infrared_lut: np.ndarray | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Draw one picture of ``identity`` wearing ``outfit`` as seen by ``camera``.

    With ``infrared_lut`` the picture is a near-infrared one: every surface's colour is first turned
    into its infrared reflectance (:func:`infrared_reflectance`, a property of the material), and only
    then lit (the picture's brightness and the camera's light, no colour cast) and given sensor noise,
    so a garment's infrared intensity relative to the rest of the picture is the same in every picture.

    ``size`` is (height, width) of the output. Returns the RGB picture and its exact clothes mask
    (mode 'L', 255 on upper and lower garments, 0 elsewhere, including where a bag or hand covers
    them). The generator is consumed in the same order whatever the outfit, so two outfits rendered
    with equally seeded generators differ only on the clothes.
    """
    height, width = size
    if height < 8 or width < 4:
        raise ValueError(f"size must be at least (8, 4) pixels (height, width), got {size}.")
    canvas_size = (2 * width, 2 * height)  # PIL sizes are (width, height)
    sampled_pose = sample_pose(rng)
    pose = sampled_pose if pose is None else pose
    body = _body_geometry(identity, canvas_size, rng)
    phase = float(rng.random())
    canvas = _background(camera, canvas_size, rng)
    _draw_clutter(canvas, camera, rng)
    painter = _Painter(canvas)
    _draw_long_hair_behind(painter, body, identity)
    _draw_backpack_sides(painter, body, identity, pose)
    _draw_legs(painter, body, identity, outfit, pose)
    if outfit.lower_kind == "skirt":
        _draw_skirt(painter, body, outfit)
    _draw_upper(painter, body, identity, outfit, pose, phase)
    _draw_head(painter, body, identity, pose)
    _draw_bag(painter, body, identity, pose)
    # Image.reduce is a box filter: the supersampled canvas becomes anti-aliased output.
    reduced = canvas.reduce(2)
    if infrared_lut is not None:
        reduced = infrared_reflectance(reduced, infrared_lut)
    image = _finish(reduced, camera, rng, monochrome=infrared_lut is not None)
    if infrared_lut is not None:
        image = _add_gray_noise(image, rng, INFRARED_NOISE_STD)
    mask = painter.mask.reduce(2).point(BINARY_THRESHOLD_LUT)
    return image, mask


# ---------------------------------------------------------------------------------------------
# Modalities


def make_infrared_lut(rng: np.random.Generator, grid: int = 6) -> np.ndarray:
    """A random ``grid``^3 colour-to-intensity table in [0, 1], indexed [r, g, b]."""
    return rng.uniform(0.0, 1.0, size=(grid, grid, grid)).astype(np.float32)


def _lut_filter(lut: np.ndarray) -> ImageFilter.Color3DLUT:
    """PIL's trilinear 3D lookup (C code) with the intensity copied to three channels."""
    grid = lut.shape[0]
    # PIL's flat table varies the red index fastest, then green, then blue.
    flat = np.repeat(lut.transpose(2, 1, 0).reshape(-1), 3)
    return ImageFilter.Color3DLUT(grid, flat.tolist(), channels=3)


INFRARED_NOISE_STD = 4.0
"""Extra per-pixel noise of an infrared sensor (0-255 units), on top of the camera's own noise."""


def infrared_reflectance(
    image: Image.Image, lut: np.ndarray, luminance_weight: float = 0.4, detail_gain: float = 0.6
) -> Image.Image:
    """Map an *unlit* RGB rendering to near-infrared reflectance (one intensity copied to 3 channels).

    reflectance = w * luminance + (1 - w) * lut(colour) + detail_gain * local luminance contrast.
    The table makes the order of colours only partly consistent with luminance; the local-contrast
    term keeps edges, textures and pattern structure visible, as real NIR does. No noise and no
    lighting: both come afterwards (``render_person(..., infrared_lut=...)``), as in a real camera.
    """
    rgb = image.convert("RGB")
    gray = rgb.convert("L")
    luma = np.asarray(gray, dtype=np.float32)
    mapped = np.asarray(rgb.filter(_lut_filter(lut)), dtype=np.float32)[..., 0]
    radius = max(1.0, rgb.height / 64)
    local_mean = np.asarray(gray.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    intensity = luminance_weight * luma + (1 - luminance_weight) * mapped + detail_gain * (luma - local_mean)
    channel = np.clip(intensity + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(channel[..., None], 3, axis=2))


def _add_gray_noise(image: Image.Image, rng: np.random.Generator, noise_std: float) -> Image.Image:
    channel = np.asarray(image, dtype=np.float32)[..., 0]
    channel = channel + rng.normal(0.0, noise_std, size=channel.shape).astype(np.float32)
    channel = np.clip(channel + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(channel[..., None], 3, axis=2))


def to_infrared(
    image: Image.Image,
    lut: np.ndarray,
    rng: np.random.Generator,
    luminance_weight: float = 0.4,
    detail_gain: float = 0.6,
    noise_std: float = INFRARED_NOISE_STD,
) -> Image.Image:
    """The infrared mapping applied to an already *lit* picture (generator version 1, kept for
    comparison): the picture's brightness and the camera's tint then pass through the colour table,
    so a garment's infrared intensity changes from picture to picture. The generator now renders
    infrared with ``render_person(..., infrared_lut=...)`` instead.
    """
    reflect = infrared_reflectance(image, lut, luminance_weight, detail_gain)
    return _add_gray_noise(reflect, rng, noise_std) if noise_std > 0 else reflect


def to_low_resolution(
    image: Image.Image, rng: np.random.Generator, factor_range: tuple[float, float] = (2.0, 4.0)
) -> Image.Image:
    """Bicubic downsample by a random factor in ``factor_range``; the small image is returned."""
    factor = float(rng.uniform(*factor_range))
    width = max(1, round(image.width / factor))
    height = max(1, round(image.height / factor))
    return image.resize((width, height), Image.BICUBIC)
