"""Captions for the pretraining corpus, generated from the attributes that drew each picture.

The captions describe a person at the level of *coarse* attributes, the way web captions describe
people for real CLIP: an everyday colour name for the top, the bottom and the bag ("navy", "red",
...), whether the top is striped or checked, sleeve length, trousers or skirt, the kind of bag, the
hair length or style and a hair colour family ("dark", "brown", "blonde", "grey"). They never name
identity-level details (skin tone, height, head shape, shoes, the colour of a pattern), and colour,
pattern and hair phrases are dropped at random (docs/pretraining.md says why and how often). They name
a clearly slim or clearly broad build, as people do ("a slim woman"): a build is what every crop shows
(shoulders and hips against body height), in infrared and at low resolution too, whatever the person wears.

A caption only states what its image can show:

* infrared: no colour word at all (the intensity mapping scrambles colours), only shapes: pattern
  structure, sleeves, trousers or skirt, bag, hair length;
* pattern words ("striped", "checked", "plain") only when a pattern of the garment's period is
  resolved at the image's resolution (so rarely on low-resolution images);
* low resolution: hair is only "long" or "short" (a bun or a shaved head is a few pixels there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from itkm_lightning.synthetic.world import (
    CLOTHES_PALETTE,
    HAIR_PALETTE,
    SKIN_PALETTE,
    Identity,
    Outfit,
)

Condition = Literal["visible", "infrared", "lowres"]
CONDITIONS: tuple[Condition, ...] = ("visible", "infrared", "lowres")

CLOTHES_COLOUR_WORDS: dict[str, str] = {name: name for name in CLOTHES_PALETTE}
"""Palette name -> the colour word a caption uses for a garment or a bag: the 14 everyday colour names
themselves ("navy", "beige", "teal", ...). Calibration run 3 folded them into 9 families; that backbone
told too few people apart (docs/pretraining.md, "Calibration history")."""

COLOUR_WORDS: frozenset[str] = frozenset(
    {*CLOTHES_COLOUR_WORDS.values(), *CLOTHES_PALETTE, *SKIN_PALETTE, *HAIR_PALETTE, "dark", "light", "blonde"}
    | {word for name in HAIR_PALETTE for word in name.split()}
)
"""Every word that names a colour or a brightness, family or shade; none may appear in an infrared caption."""

PATTERN_WORDS: frozenset[str] = frozenset({"striped", "checked", "plain", "stripes", "checks", "patterned"})

PATTERN_ADJECTIVES = {"plain": "plain", "stripes": "striped", "checks": "checked"}

MIN_RESOLVED_PATTERN_PERIOD_PX = 3.0
"""A stripe or check period below this many pixels of the stored image blurs into a uniform tone."""

SMALLEST_BODY_SCALE = 0.9
"""Lower end of the renderer's per-picture scale jitter: periods are estimated for the smallest body."""

BODY_HEIGHT_FRACTION = 0.82
"""Body height over image height at scale 1 (the renderer's ``_body_geometry``)."""

KEEP_PROBABILITY = 0.8
"""Chance that each attribute phrase survives in a caption."""

TEMPLATES = (
    "a photo of a person wearing {clothes}{extras}.",
    "a pedestrian in {clothes}{extras}.",
    "a person dressed in {clothes}{extras}.",
    "someone wearing {clothes}{extras}.",
)
NO_CLOTHES_TEMPLATES = ("a photo of a person{extras}.", "a pedestrian{extras}.")

BAG_PHRASES = {
    "none": "without a bag",
    "backpack": "carrying a backpack",
    "handbag": "carrying a handbag",
    "shoulder": "with a shoulder bag",
}
HAIR_PHRASES = {"short": "short hair", "long": "long hair", "bun": "hair in a bun", "shaved": "a shaved head"}
SLIM_BUILD_BELOW = 0.95
BROAD_BUILD_ABOVE = 1.1
"""Body width (relative, 0.85-1.2) below / above which a caption may say "of slim / broad build";
the middle third is not named (a person of average build is not described by it)."""


def build_phrase(identity: Identity) -> str | None:
    """"of slim build", "of broad build" or None (average build)."""
    if identity.width < SLIM_BUILD_BELOW:
        return "of slim build"
    if identity.width > BROAD_BUILD_ABOVE:
        return "of broad build"
    return None


HAIR_COLOUR_FAMILIES: dict[str, str] = {
    "black": "dark",
    "dark brown": "dark",
    "brown": "brown",
    "auburn": "brown",
    "blonde": "blonde",
    "grey": "grey",
}
"""Hair palette name -> the coarse word a caption uses (6 shades become 4 families)."""


@dataclass(frozen=True)
class Visibility:
    """What one stored image can show about the clothes."""

    colour: bool
    """Colours are visible (False for infrared)."""
    pattern: bool
    """A pattern of the garment's period is resolved (so pattern words, "plain" included, are true and checkable)."""
    fine_detail: bool
    """Small shapes (a bun, a shaved head) are resolved (False for low resolution)."""


def pattern_period_px(identity: Identity, outfit: Outfit, image_height: int, downsample: float = 1.0) -> float:
    """Smallest period, in stored pixels, that the garment's stripes or checks can have in this image."""
    body_px = BODY_HEIGHT_FRACTION * image_height * identity.height * SMALLEST_BODY_SCALE
    return outfit.pattern_period * body_px / downsample


def visibility(
    condition: Condition, identity: Identity, outfit: Outfit, image_height: int, downsample: float = 1.0
) -> Visibility:
    """What an image rendered ``image_height`` pixels tall, then stored ``downsample`` times smaller, shows."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {list(CONDITIONS)}.")
    if downsample < 1.0:
        raise ValueError(f"downsample must be >= 1 (stored size over rendered size), got {downsample}.")
    resolved = pattern_period_px(identity, outfit, image_height, downsample) >= MIN_RESOLVED_PATTERN_PERIOD_PX
    return Visibility(colour=condition != "infrared", pattern=resolved, fine_detail=condition != "lowres")


def _kept(rng: np.random.Generator, probability: float = KEEP_PROBABILITY) -> bool:
    return bool(rng.random() < probability)


def _upper_phrase(outfit: Outfit, seen: Visibility, rng: np.random.Generator, keep: float) -> str:
    words = []
    if seen.colour and _kept(rng, 0.8):
        words.append(CLOTHES_COLOUR_WORDS[outfit.upper.name])
    if seen.pattern and _kept(rng, 0.5):
        words.append(PATTERN_ADJECTIVES[outfit.pattern])
    if _kept(rng, keep):
        words.append("t-shirt" if outfit.sleeves == "short" else "long-sleeved top")
    else:
        words.append("top")
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}"


def _lower_phrase(outfit: Outfit, seen: Visibility, rng: np.random.Generator) -> str:
    noun = "trousers" if outfit.lower_kind == "trousers" else "a skirt"
    if seen.colour and _kept(rng, 0.8):
        colour = CLOTHES_COLOUR_WORDS[outfit.lower.name]
        return f"{colour} trousers" if outfit.lower_kind == "trousers" else f"a {colour} skirt"
    return noun


def _hair_phrase(identity: Identity, seen: Visibility, rng: np.random.Generator) -> str:
    phrase = HAIR_PHRASES[identity.hair_style] if seen.fine_detail else (
        "long hair" if identity.hair_style == "long" else "short hair")
    # A shaved head shows skin, not hair colour; a colour word needs a colour picture.
    if seen.colour and identity.hair_style != "shaved" and _kept(rng, 0.8):
        colour = HAIR_COLOUR_FAMILIES[identity.hair_colour.name]
        phrase = phrase.replace("hair", f"{colour} hair", 1)
    return phrase


def _bag_phrase(identity: Identity, seen: Visibility, rng: np.random.Generator) -> str:
    phrase = BAG_PHRASES[identity.bag]
    if seen.colour and identity.bag_colour is not None and _kept(rng, 0.8):
        kind = phrase.split(" a ", 1)[1]
        colour = CLOTHES_COLOUR_WORDS[identity.bag_colour.name]
        phrase = phrase.replace(f" a {kind}", f" a {colour} {kind}", 1)
    return phrase


def make_caption(
    identity: Identity, outfit: Outfit, seen: Visibility, rng: np.random.Generator, keep: float = KEEP_PROBABILITY
) -> str:
    """One caption: a random subset of the attribute phrases the image can show, in a random template.

    ``keep`` is the chance that each of top, bottom, bag and sleeve length is mentioned (hair: 2/3 of it).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}.")
    clothes = []
    if _kept(rng, keep):
        clothes.append(_upper_phrase(outfit, seen, rng, keep))
    if _kept(rng, keep):
        clothes.append(_lower_phrase(outfit, seen, rng))
    extras = []
    if _kept(rng, keep):
        extras.append(_bag_phrase(identity, seen, rng))
    if _kept(rng, keep * 2 / 3):
        extras.append("with " + _hair_phrase(identity, seen, rng))
    build = build_phrase(identity)
    if _kept(rng, keep * 2 / 3) and build is not None:
        extras.insert(0, build)
    if not clothes and not extras:  # say at least one thing: the top, which every image shows
        clothes.append(_upper_phrase(outfit, seen, rng, keep))
    if len(clothes) == 2 and _kept(rng, 0.5):
        clothes.reverse()
    extra_text = "".join(f", {phrase}" if clothes else f" {phrase}" for phrase in extras)
    if clothes:
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        return template.format(clothes=" and ".join(clothes), extras=extra_text)
    template = NO_CLOTHES_TEMPLATES[int(rng.integers(len(NO_CLOTHES_TEMPLATES)))]
    return template.format(extras=extra_text)


def make_captions(
    identity: Identity,
    outfit: Outfit,
    seen: Visibility,
    rng: np.random.Generator,
    count: int,
    keep: float = KEEP_PROBABILITY,
) -> list[str]:
    """``count`` captions of one image (duplicates allowed: short captions often coincide)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    return [make_caption(identity, outfit, seen, rng, keep) for _ in range(count)]


def caption_words(caption: str) -> set[str]:
    """Lower-case words of a caption, punctuation stripped ("long-sleeved" stays one word)."""
    return {word.strip(".,") for word in caption.lower().split()}
