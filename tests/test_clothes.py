"""ClothesMasker: the clothing-agnostic view from exact masks, parsing maps, or the fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from itkm_lightning.synthetic import render, world
from itkm_lightning.data.clothes import LIP_CLOTHES_LABELS, ClothesMasker


@pytest.fixture
def person() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(5)
    outfit = world.Outfit(
        upper=world.NamedColour("red", (200, 35, 40)),
        lower=world.NamedColour("blue", (45, 95, 210)),
        pattern="stripes",
        pattern_colour=world.NamedColour("white", (235, 235, 230)),
        pattern_period=0.05,
        sleeves="long",
        lower_kind="trousers",
    )
    return render.render_person(
        world.sample_identity(rng), outfit, world.sample_camera_style(rng), rng, (128, 64)
    )


def test_mask_mode_greys_clothes_and_keeps_everything_else(person):
    image, mask = person
    out = np.asarray(ClothesMasker(mode="mask")(image, mask)).astype(np.int16)
    original = np.asarray(image).astype(np.int16)
    clothes = np.asarray(mask) == 255
    assert clothes.sum() > 500
    assert (out[clothes] == 128).all()  # one neutral grey: no colour, no pattern
    assert np.array_equal(out[~clothes], original[~clothes])
    # The input really had colour on the clothes, so the test can fail.
    assert np.abs(original[clothes][:, 0] - original[clothes][:, 2]).mean() > 30


def test_mask_is_resized_to_the_image_and_dilation_grows_it(person):
    image, mask = person
    small_image = image.resize((32, 64))
    out = np.asarray(ClothesMasker(fill=90)(small_image, mask))
    resized = np.asarray(mask.resize((32, 64), Image.NEAREST)) == 255
    assert (out[resized] == 90).all()
    dilated = np.asarray(ClothesMasker(fill=90, dilate=1)(image, mask))
    grey = (dilated == 90).all(axis=2)
    assert grey.sum() > (np.asarray(mask) == 255).sum()


def test_fallback_greys_and_blurs_the_body_band_only(person):
    image, mask = person
    for masker, given_mask in ((ClothesMasker(mode="fallback"), mask), (ClothesMasker(mode="auto"), None)):
        out = np.asarray(masker(image, given_mask)).astype(np.int16)
        original = np.asarray(image).astype(np.int16)
        top, bottom = round(0.2 * 128), round(0.95 * 128)
        band = out[top:bottom]
        assert (band[..., 0] == band[..., 1]).all() and (band[..., 1] == band[..., 2]).all()
        # Strong blur: neighbouring pixels in the band differ far less than in the original.
        assert (
            np.abs(np.diff(band[..., 0], axis=0)).mean()
            < 0.3 * np.abs(np.diff(original[top:bottom, :, 0], axis=0)).mean()
        )
        assert np.array_equal(out[:top], original[:top]) and np.array_equal(out[bottom:], original[bottom:])


def test_bad_use_raises_a_clear_error(person):
    image, _ = person
    with pytest.raises(ValueError, match="mode='auto'"):
        ClothesMasker(mode="mask")(image, None)
    with pytest.raises(ValueError, match="mode"):
        ClothesMasker(mode="parsing")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band"):
        ClothesMasker(band=(0.9, 0.2))


def test_from_parsing_marks_lip_garment_labels():
    labels = np.arange(20, dtype=np.uint8).repeat(6).reshape(10, 12)
    expected = np.isin(labels, LIP_CLOTHES_LABELS)
    as_array = np.asarray(ClothesMasker.from_parsing(labels))
    assert set(np.unique(as_array)) == {0, 255}
    assert np.array_equal(as_array == 255, expected)
    palette_png = Image.fromarray(labels)  # SCHP writes palette PNGs of label indices
    palette_png.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    assert palette_png.mode == "P"
    assert np.array_equal(np.asarray(ClothesMasker.from_parsing(palette_png)) == 255, expected)
    upper_only = np.asarray(ClothesMasker.from_parsing(labels, clothes_labels=(5,))) == 255
    assert np.array_equal(upper_only, labels == 5)
    with pytest.raises(ValueError, match="one class index per pixel"):
        ClothesMasker.from_parsing(np.zeros((4, 4, 3), dtype=np.uint8))
