"""Drawing one synthetic pedestrian: body, clothes, hair, bag, scene, lighting and sensor noise.

The generator passed to :func:`render_person` is consumed in a fixed order, so one seed gives one
picture on every run. Drawing happens on a canvas twice the requested size and is box-downsampled,
which is cheaper than anti-aliased drawing in PIL and gives smooth edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from itkm_lightning.synthetic.modalities import INFRARED_NOISE_STD, add_gray_noise, infrared_reflectance
from itkm_lightning.synthetic.world import RGB, CameraStyle, Identity, Outfit, Pose, sample_pose

BINARY_THRESHOLD_LUT = [0] * 128 + [255] * 128
"""``Image.point`` table: 255 for values >= 128, else 0 (a table avoids 256 Python calls per image)."""


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
        image = add_gray_noise(image, rng, INFRARED_NOISE_STD)
    mask = painter.mask.reduce(2).point(BINARY_THRESHOLD_LUT)
    return image, mask

