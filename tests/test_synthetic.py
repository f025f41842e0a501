"""The embedded synthetic benchmark: renderer properties, layout, determinism, protocols."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from itkm_lightning.synthetic import benchmark as synthetic
from itkm_lightning.synthetic import modalities, render, world
from itkm_lightning.synthetic.benchmark import (
    MANIFEST_COLUMNS,
    SyntheticSpec,
    ensure_synthetic,
    load_synthetic,
)

TINY = SyntheticSpec.preset("tiny")


def file_hashes(dataset_dir: Path, pattern: str = "**/*.png") -> dict[str, str]:
    return {
        str(p.relative_to(dataset_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(dataset_dir.glob(pattern))
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), TINY, progress=False)


@pytest.fixture(scope="module")
def tiny_splits(tiny_dir):
    return load_synthetic(tiny_dir)


@pytest.fixture(scope="module")
def manifest_rows(tiny_dir) -> list[dict[str, str]]:
    with (tiny_dir / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# Spec


def test_presets_and_validation():
    assert SyntheticSpec.preset("demo").train_ids == 60
    assert SyntheticSpec.preset("demo").test_ids == 40
    assert SyntheticSpec.preset("large").image_height == 256
    assert TINY.preset_name() == "tiny"
    assert SyntheticSpec(seed=5).preset_name() is None
    assert SyntheticSpec(scenarios=("cc", "vi")).scenarios == ("vi", "cc")  # canonical order
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        SyntheticSpec.preset("huge")
    for bad in (
        dict(train_ids=0),
        dict(images_per_camera=-1),
        dict(scenarios=()),
        dict(scenarios=("vi", "vi")),
        dict(scenarios=("xx",)),
        dict(image_height=8),
        dict(seed=-1),
    ):
        with pytest.raises(ValueError):
            SyntheticSpec(**bad)


# ---------------------------------------------------------------------------------------------
# Layout, determinism, reuse


def test_manifest_schema_and_counts(tiny_dir, manifest_rows):
    with (tiny_dir / "manifest.csv").open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    per_id = 4 * TINY.images_per_camera
    for scenario in ("vi", "cr", "cc"):
        rows = [r for r in manifest_rows if r["scenario"] == scenario]
        assert len(rows) == (TINY.train_ids + TINY.test_ids) * per_id
        assert sum(r["split"] == "train" for r in rows) == TINY.train_ids * per_id
        assert {int(r["camid"]) for r in rows} == {1, 2, 3, 4}
        for r in rows:
            assert (tiny_dir / r["path"]).is_file()
            expected_group = 0 if scenario == "cc" else int(int(r["camid"]) >= 3)
            assert int(r["group"]) == expected_group
    meta = json.loads((tiny_dir / "meta.json").read_text())
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    assert meta["spec"] == TINY.model_dump(mode="json")
    assert meta["images"] == len(manifest_rows)


def test_same_seed_gives_identical_bytes(tiny_dir, tmp_path):
    again = ensure_synthetic(tmp_path, TINY, progress=False)
    assert again != tiny_dir
    first, second = file_hashes(tiny_dir), file_hashes(again)
    assert len(first) == 240 + 80  # 3 scenarios x 10 ids x 8 images, plus one mask per cc image
    assert first == second
    assert (tiny_dir / "manifest.csv").read_bytes() == (again / "manifest.csv").read_bytes()


def test_images_do_not_depend_on_other_scenarios_and_seed_matters(tiny_dir, tmp_path):
    vi_only = ensure_synthetic(tmp_path, TINY.model_copy(update={"scenarios": ("vi",)}), progress=False)
    assert vi_only.name.startswith("custom-")
    assert file_hashes(vi_only, "vi/**/*.png") == file_hashes(tiny_dir, "vi/**/*.png")
    other_seed = ensure_synthetic(
        tmp_path, TINY.model_copy(update={"scenarios": ("vi",), "seed": 1}), progress=False
    )
    assert other_seed != vi_only
    reference, changed = file_hashes(tiny_dir, "vi/**/*.png"), file_hashes(other_seed, "vi/**/*.png")
    assert reference.keys() == changed.keys()
    assert sum(reference[k] != changed[k] for k in reference) == len(reference)


def test_second_call_reuses_without_rendering(tiny_dir, monkeypatch):
    manifest_mtime = (tiny_dir / "manifest.csv").stat().st_mtime_ns
    image = next(tiny_dir.glob("vi/train/*.png"))
    image_mtime = image.stat().st_mtime_ns

    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered although a matching dataset exists")

    monkeypatch.setattr(synthetic, "_render_dataset", must_not_render)
    assert ensure_synthetic(tiny_dir.parent, "tiny", progress=False) == tiny_dir
    assert (tiny_dir / "manifest.csv").stat().st_mtime_ns == manifest_mtime
    assert image.stat().st_mtime_ns == image_mtime


def test_mismatching_meta_goes_to_a_new_directory(tmp_path, monkeypatch):
    stale = tmp_path / "tiny"
    stale.mkdir()
    (stale / "manifest.csv").write_text(",".join(MANIFEST_COLUMNS) + "\n")
    (stale / "meta.json").write_text(
        json.dumps({"generator_version": "0", "spec": TINY.model_dump(mode="json")})
    )
    monkeypatch.setattr(synthetic, "_render_dataset", lambda *args, **kwargs: [])
    fresh = ensure_synthetic(tmp_path, TINY, progress=False)
    assert fresh.name == f"tiny-{TINY.short_hash()}"
    assert json.loads((stale / "meta.json").read_text())["generator_version"] == "0"  # left alone
    assert ensure_synthetic(tmp_path, TINY, progress=False) == fresh  # and found again next time


def test_killed_generation_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render_record = synthetic._render_record

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        real_render_record(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_record", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_load_synthetic_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_synthetic"):
        load_synthetic(tmp_path)


# ---------------------------------------------------------------------------------------------
# Splits and protocols


def test_splits_are_sorted_absolute_and_labelled(tiny_splits):
    assert list(tiny_splits) == ["vi", "cr", "cc"]
    for scenario, split in tiny_splits.items():
        assert split.name == f"synthetic_{scenario}"
        assert split.scenario == scenario
        assert split.protocol == ("cloth_changing" if scenario == "cc" else "market")
        for samples in (split.train, split.query, split.gallery):
            assert samples, f"{scenario} has an empty list"
            assert [s.path for s in samples] == sorted(s.path for s in samples)
            for s in samples:
                assert Path(s.path).is_absolute() and Path(s.path).is_file()
                assert s.source == f"synthetic_{scenario}" and s.scenario == scenario and s.pseudo_label == -1


def test_train_and_test_identities_are_disjoint(tiny_splits):
    all_pids: list[set[int]] = []
    for split in tiny_splits.values():
        train = {s.pid for s in split.train}
        test = {s.pid for s in split.query + split.gallery}
        assert len(train) == TINY.train_ids and len(test) == TINY.test_ids
        assert not train & test
        all_pids.append(train | test)
    assert not (all_pids[0] & all_pids[1]) and not (all_pids[1] & all_pids[2])


@pytest.mark.parametrize("scenario", ["vi", "cr"])
def test_vi_cr_query_is_group1_gallery_group0(tiny_splits, scenario):
    split = tiny_splits[scenario]
    assert {s.group for s in split.query} == {1} and {s.camid for s in split.query} == {3, 4}
    assert {s.group for s in split.gallery} == {0} and {s.camid for s in split.gallery} == {1, 2}
    assert {s.pid for s in split.query} == {s.pid for s in split.gallery}
    assert {s.clothes for s in split.train + split.query + split.gallery} == {
        f"{s.pid}_0" for s in split.train + split.query + split.gallery
    }


def test_cc_queries_quarter_spread_and_every_query_has_a_cloth_changing_positive(tiny_splits):
    split = tiny_splits["cc"]
    assert {s.group for s in split.train + split.query + split.gallery} == {0}
    per_id = 4 * TINY.images_per_camera
    queries = defaultdict(list)
    for s in split.query:
        queries[s.pid].append(s)
    assert set(queries) == {s.pid for s in split.gallery}
    for pid, qs in queries.items():
        assert len(qs) == max(1, round(per_id / 4))
        assert len({q.camid for q in qs}) == len(qs)  # spread over cameras
        for q in qs:
            positives = [
                g for g in split.gallery if g.pid == pid and g.camid != q.camid and g.clothes != q.clothes
            ]
            assert positives, f"query {q.path} has no cloth-changing positive"


def test_cc_identities_wear_two_or_more_outfits_with_masks(tiny_splits):
    split = tiny_splits["cc"]
    clothes = defaultdict(set)
    for s in split.train + split.query + split.gallery:
        clothes[s.pid].add(s.clothes)
        assert s.clothes.startswith(f"{s.pid}_")
        assert s.mask_path is not None
        mask = np.asarray(Image.open(s.mask_path))
        assert mask.shape == (TINY.image_height, TINY.image_width)
        assert set(np.unique(mask)) <= {0, 255}
        assert 0.05 < (mask == 255).mean() < 0.6
    assert all(len(keys) >= 2 for keys in clothes.values())
    for other in ("vi", "cr"):
        assert all(s.mask_path is None for s in tiny_splits[other].train)


def test_cr_low_resolution_images_are_stored_small(tiny_splits):
    split = tiny_splits["cr"]
    for s in split.gallery + [t for t in split.train if t.group == 0]:
        assert Image.open(s.path).size == (TINY.image_width, TINY.image_height)
    for s in split.query + [t for t in split.train if t.group == 1]:
        width, height = Image.open(s.path).size
        assert TINY.image_height / 4 - 1 <= height <= TINY.image_height / 2 + 1
        assert width < TINY.image_width


def test_vi_infrared_images_are_one_channel_replicated(tiny_splits):
    split = tiny_splits["vi"]
    for s in split.query:
        pixels = np.asarray(Image.open(s.path).convert("RGB"))
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    visible = np.stack([np.asarray(Image.open(s.path).convert("RGB"), dtype=np.int16) for s in split.gallery])
    assert np.abs(visible[..., 0] - visible[..., 1]).mean() > 5


# ---------------------------------------------------------------------------------------------
# Renderer


def flat_infrared(colours: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Mean infrared intensity of flat patches of each colour (no noise, no detail)."""
    patch = Image.fromarray(np.repeat(colours[:, None, :], 8, axis=1).astype(np.uint8))
    ir = modalities.to_infrared(patch, lut, np.random.default_rng(0), noise_std=0.0, detail_gain=0.0)
    return np.asarray(ir, dtype=np.float32)[..., 0].mean(axis=1)


def test_infrared_order_is_not_monotone_in_luminance_but_partly_consistent():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(200, 3))
    luma = np.array([world.luminance(tuple(c)) for c in colours])
    correlations = []
    for seed in range(5):
        intensity = flat_infrared(colours, modalities.make_infrared_lut(np.random.default_rng(seed)))
        # A flipped pair: brighter in luminance by >= 0.2, darker in infrared by >= 20 levels.
        brighter = luma[:, None] - luma[None, :] >= 0.2
        darker = intensity[:, None] - intensity[None, :] <= -20
        assert (brighter & darker).any()
        correlations.append(
            np.corrcoef(np.argsort(np.argsort(luma)), np.argsort(np.argsort(intensity)))[0, 1]
        )
    assert 0.15 < np.mean(correlations) < 0.9


def test_infrared_keeps_pattern_structure():
    rng = np.random.default_rng(3)
    identity, camera = world.sample_identity(rng), world.sample_camera_style(rng)
    for pattern in ("stripes", "checks"):
        for seed in range(6):
            plain = replace(
                world.sample_outfit(np.random.default_rng(100 + seed)),
                pattern="plain",
                pattern_colour=None,
                sleeves="long",
            )
            name = world.contrasting_colour_names(plain.upper.rgb)[0]
            patterned = replace(
                plain,
                pattern=pattern,
                pattern_period=0.06,
                pattern_colour=world.NamedColour(name, world.CLOTHES_PALETTE[name]),
            )
            lut = modalities.make_infrared_lut(np.random.default_rng(seed))
            pictures = []
            for outfit in (plain, patterned):
                ir, mask = render.render_person(
                    identity, outfit, camera, np.random.default_rng(7), (128, 64), infrared_lut=lut
                )
                pictures.append(np.asarray(ir, dtype=np.float32)[..., 0])
            on_clothes = np.asarray(mask) == 255
            difference = np.abs(pictures[0] - pictures[1])[on_clothes].mean()
            assert difference > 8, f"{pattern} vanished in infrared (lut seed {seed}): {difference:.1f}"


def test_a_garments_infrared_intensity_belongs_to_the_material_not_the_lighting():
    """Real near-infrared reflectance is a property of the material, lit afterwards: across pictures
    of different brightness, cameras and colour casts, a garment's intensity *relative to* another
    garment of the same picture stays the same (up to noise), and is a fixed function of its colour."""
    rng = np.random.default_rng(5)
    identity = world.sample_identity(rng)
    lut = modalities.make_infrared_lut(np.random.default_rng(1))
    for trial in range(4):
        outfit = replace(world.sample_outfit(np.random.default_rng(40 + trial)), pattern="plain",
                         pattern_colour=None, sleeves="long", lower_kind="trousers")
        ratios, old_ratios = [], []
        for seed in range(8):
            camera = world.sample_camera_style(np.random.default_rng(200 + seed))
            pose = world.Pose(view="front", stride=0.0, arm_swing=0.0)
            ir, mask = render.render_person(identity, outfit, camera, np.random.default_rng(seed), (128, 64),
                                            pose=pose, infrared_lut=lut)
            visible, _ = render.render_person(identity, outfit, camera, np.random.default_rng(seed), (128, 64),
                                              pose=pose)
            old = modalities.to_infrared(visible, lut, np.random.default_rng(seed))
            clothes = np.asarray(mask) == 255
            rows = np.nonzero(clothes.any(axis=1))[0]
            middle = (rows.min() + rows.max()) // 2
            upper, lower = clothes.copy(), clothes.copy()
            upper[middle:], lower[:middle] = False, False
            for picture, out in ((ir, ratios), (old, old_ratios)):
                channel = np.asarray(picture, dtype=np.float32)[..., 0]
                out.append((channel[upper].mean() + 8) / (channel[lower].mean() + 8))
        spread, old_spread = np.std(np.log(ratios)), np.std(np.log(old_ratios))
        assert spread < 0.06, f"outfit {trial}: upper/lower infrared ratio varies by {spread:.3f} (log std)"
        assert spread < old_spread or old_spread < 0.06


def test_infrared_pictures_have_no_colour_cast():
    rng = np.random.default_rng(9)
    identity, outfit, camera = world.sample_identity(rng), world.sample_outfit(rng), world.sample_camera_style(rng)
    ir, _ = render.render_person(identity, outfit, camera, rng, (64, 32),
                                 infrared_lut=modalities.make_infrared_lut(rng))
    pixels = np.asarray(ir)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_clothes_mask_covers_exactly_what_the_outfit_changes():
    rng = np.random.default_rng(11)
    for _ in range(6):
        identity, camera = world.sample_identity(rng), world.sample_camera_style(rng)
        first = world.sample_outfit(rng)
        second = replace(
            first,
            upper=world.NamedColour("x", tuple(255 - c for c in first.upper.rgb)),
            lower=world.NamedColour("y", tuple(255 - c for c in first.lower.rgb)),
        )
        seed = int(rng.integers(1 << 30))
        image_a, mask_a = render.render_person(
            identity, first, camera, np.random.default_rng(seed), (128, 64)
        )
        image_b, mask_b = render.render_person(
            identity, second, camera, np.random.default_rng(seed), (128, 64)
        )
        assert np.array_equal(np.asarray(mask_a), np.asarray(mask_b))
        difference = np.abs(np.asarray(image_a, np.int16) - np.asarray(image_b, np.int16)).max(axis=2)
        mask = np.asarray(mask_a) == 255
        within = {px: np.asarray(mask_a.filter(ImageFilter.MaxFilter(2 * px + 1))) == 255 for px in (2, 3)}
        assert mask.sum() > 300
        # The slight blur lets a garment tint its neighbours faintly: > 4 levels only within 2 px,
        # nothing at all beyond 3 px.
        assert not ((difference > 4) & ~within[2]).any(), "pixels off the clothes changed with the outfit"
        assert not ((difference > 0) & ~within[3]).any(), "pixels off the clothes changed with the outfit"
        assert (difference[mask] > 0).mean() > 0.95, "clothes pixels did not change with the outfit"


def test_traits_are_named_palette_attributes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        identity = world.sample_identity(rng)
        outfit = world.sample_outfit(rng)
        assert identity.skin.name in world.SKIN_PALETTE and identity.hair_colour.name in world.HAIR_PALETTE
        assert identity.hair_style in world.HAIR_STYLES and identity.bag in world.BAG_TYPES
        assert (identity.bag == "none") == (identity.bag_colour is None)
        assert outfit.upper.name in world.CLOTHES_PALETTE and outfit.lower.name in world.CLOTHES_PALETTE
        assert (outfit.pattern == "plain") == (outfit.pattern_colour is None)
        if outfit.pattern_colour is not None:
            contrast = abs(world.luminance(outfit.pattern_colour.rgb) - world.luminance(outfit.upper.rgb))
            assert contrast > world.PATTERN_MIN_LUMINANCE_CONTRAST - 0.1  # jitter moves it a little
    image, mask = render.render_person(identity, outfit, world.sample_camera_style(rng), rng, (96, 48))
    assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (48, 96)
    with pytest.raises(ValueError, match="at least"):
        render.render_person(identity, outfit, world.sample_camera_style(rng), rng, (4, 2))


def test_infrared_lut_is_indexed_red_green_blue():
    grid = np.linspace(0.0, 1.0, 6, dtype=np.float32)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]])
    for axis in range(3):
        lut = np.broadcast_to(grid.reshape([6 if a == axis else 1 for a in range(3)]), (6, 6, 6))
        intensity = flat_infrared(colours, np.ascontiguousarray(lut))
        luma = np.array([world.luminance(tuple(c)) for c in colours]) * 255
        lut_part = (intensity - 0.4 * luma) / 0.6  # undo the luminance share
        expected = np.zeros(4)
        expected[axis] = 255
        assert np.allclose(lut_part, expected, atol=3), (axis, lut_part)
