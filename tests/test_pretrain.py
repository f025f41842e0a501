"""`itkm pretrain`: captions, the captioned corpus, contrastive pretraining, saving, zero-shot evaluation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from itkm_lightning.synthetic import spec as synthetic
from itkm_lightning.synthetic import world
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder, resize_position_table
from itkm_lightning.models.clip_loading import load_clip_model, save_clip_directory
from itkm_lightning.models.clip_text import CLIPTextEncoder
from itkm_lightning.models.tokenizer import clip_tokenizer
from itkm_lightning.pretrain import cli
from itkm_lightning.synthetic.captions import (
    BROAD_BUILD_ABOVE,
    COLOUR_WORDS,
    CONDITIONS,
    PATTERN_WORDS,
    SLIM_BUILD_BELOW,
    caption_words,
    make_captions,
    visibility,
)
from itkm_lightning.synthetic.corpus import (
    CORPUS_PRESETS,
    CorpusSpec,
    corpus_identity,
    corpus_pids,
    ensure_corpus,
    read_corpus,
    traits_hash,
)
from itkm_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from itkm_lightning.pretrain.datamodule import CorpusDataModule, augment_batch
from itkm_lightning.pretrain.module import CLIPPretraining, clip_contrastive_loss
from itkm_lightning.pretrain.position_table import fit_square_position_table

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_CORPUS = CORPUS_PRESETS["tiny"]
TINY_ARCHITECTURE = {
    "pretrained": False,
    "image_size": [64, 32],
    "projection_dim": 16,
    # vision.image_size 64 / patch 8: an 8x8 square table for the 8x4 grid of 64x32 inputs
    "vision": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 8, "image_size": 64},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


def tiny_module(seed: int = 0) -> CLIPPretraining:
    torch.manual_seed(seed)
    return CLIPPretraining(BackboneConfig(**TINY_ARCHITECTURE), warmup_steps=1)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain_corpus")
    ensure_corpus(root, TINY_CORPUS, progress=False)
    return root


# ------------------------------------------------------------------------------------------ captions
def random_people(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield world.sample_identity(rng), world.sample_outfit(rng), rng


def test_captions_never_mention_what_the_image_cannot_show():
    colour_seen, pattern_seen, fine_seen = 0, 0, 0
    for identity, outfit, rng in random_people(300):
        for condition in CONDITIONS:
            for downsample in ((1.0,) if condition != "lowres" else (2.0, 3.0, 4.0)):
                seen = visibility(condition, identity, outfit, 128, downsample)
                for caption in make_captions(identity, outfit, seen, rng, 4):
                    words = caption_words(caption)
                    if not seen.colour:
                        assert not words & COLOUR_WORDS, caption
                    if not seen.pattern:
                        assert not words & PATTERN_WORDS, caption
                    if not seen.fine_detail:
                        assert not words & {"bun", "shaved"}, caption
                    colour_seen += bool(words & COLOUR_WORDS)
                    pattern_seen += bool(words & PATTERN_WORDS)
                    fine_seen += bool(words & {"bun", "shaved"})
    # The words do appear where the image shows them, so the checks above could fail.
    assert colour_seen > 500 and pattern_seen > 100 and fine_seen > 20


def test_visibility_follows_condition_and_resolution():
    identity, outfit, _ = next(random_people(1))
    assert not visibility("infrared", identity, outfit, 128).colour
    assert visibility("visible", identity, outfit, 128).colour
    assert not visibility("lowres", identity, outfit, 128, 4.0).fine_detail
    wide, fine = replace(outfit, pattern_period=0.07), replace(outfit, pattern_period=0.03)
    assert visibility("visible", identity, wide, 128).pattern
    assert not visibility("lowres", identity, wide, 128, 4.0).pattern
    assert not visibility("visible", identity, fine, 64).pattern
    with pytest.raises(ValueError, match="condition"):
        visibility("thermal", identity, outfit, 128)  # type: ignore[arg-type]


def test_captions_are_coarse_and_varied():
    vocabulary: set[str] = set()
    for identity, outfit, rng in random_people(100, seed=3):
        seen = visibility("visible", identity, outfit, 128)
        captions = make_captions(identity, outfit, seen, rng, 8)
        vocabulary |= set().union(*(caption_words(c) for c in captions))
    # Everyday colour names only: no skin tones, no exact hair shades, no body measurements, no shoes.
    fine_words = {"pale", "medium", "tan", "light", "auburn", "tall", "small", "skin", "shoes", "round", "oval"}
    assert not vocabulary & fine_words
    assert {"navy", "red", "striped", "checked", "backpack", "skirt", "trousers", "blonde", "dark"} <= vocabulary
    assert len(vocabulary) < 64


def test_build_is_named_only_at_its_extremes_and_in_every_condition():
    """A build survives infrared, low resolution and a change of clothes, so every condition may name it;
    only clearly slim or broad people are described, and always truly."""
    named = {"infrared": 0, "lowres": 0, "visible": 0}
    for identity, outfit, rng in random_people(300, seed=5):
        for condition in CONDITIONS:
            seen = visibility(condition, identity, outfit, 128, 1.0 if condition != "lowres" else 3.0)
            for caption in make_captions(identity, outfit, seen, rng, 4):
                words = caption_words(caption)
                if "slim" in words:
                    assert identity.width < SLIM_BUILD_BELOW, caption
                if "broad" in words:
                    assert identity.width > BROAD_BUILD_ABOVE, caption
                if SLIM_BUILD_BELOW <= identity.width <= BROAD_BUILD_ABOVE:
                    assert "build" not in words, caption
                named[condition] += "build" in words
    assert min(named.values()) > 50, named


def test_hair_and_bag_colours_are_the_true_families():
    from itkm_lightning.synthetic.captions import CLOTHES_COLOUR_WORDS, HAIR_COLOUR_FAMILIES

    hair_named = bag_named = 0
    for identity, outfit, rng in random_people(200, seed=5):
        seen = visibility("visible", identity, outfit, 128)
        for caption in make_captions(identity, outfit, seen, rng, 4, keep=1.0):
            words = caption.rstrip(".").split()
            for i, word in enumerate(words[:-1]):
                if words[i + 1] == "hair" and word in set(HAIR_COLOUR_FAMILIES.values()):
                    assert word == HAIR_COLOUR_FAMILIES[identity.hair_colour.name], caption
                    hair_named += 1
                if words[i + 1] in {"backpack", "handbag", "shoulder"} and word in set(CLOTHES_COLOUR_WORDS.values()):
                    assert word == CLOTHES_COLOUR_WORDS[identity.bag_colour.name], caption
                    bag_named += 1
            if identity.hair_style == "shaved":
                assert "head" in caption or "hair" not in caption, caption
    assert hair_named > 100 and bag_named > 100


# ------------------------------------------------------------------------------------------ corpus
def test_corpus_records_respect_visibility(corpus_root):
    records = read_corpus(corpus_root / "tiny")
    assert len(records) == TINY_CORPUS.num_images == 12
    assert {r["condition"] for r in records} == set(CONDITIONS)
    for record in records:
        attributes = record["attributes"]
        assert len(record["captions"]) == TINY_CORPUS.captions_per_image
        for caption in record["captions"]:
            words = caption_words(caption)
            if record["condition"] == "infrared":
                assert not attributes["colour_visible"] and not words & COLOUR_WORDS, caption
            if not attributes["pattern_visible"]:
                assert not words & PATTERN_WORDS, caption
        if record["condition"] == "lowres":
            assert 2.0 <= attributes["downsample"] <= 4.2
        assert (corpus_root / "tiny" / record["path"]).is_file()


def test_corpus_is_deterministic_atomic_and_reused(tmp_path, corpus_root):
    again = ensure_corpus(tmp_path, TINY_CORPUS, progress=False)
    first = corpus_root / "tiny"

    def digests(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    assert digests(again) == digests(first)
    stamp = (again / "meta.json").stat().st_mtime_ns
    assert ensure_corpus(tmp_path, TINY_CORPUS, progress=False) == again
    assert (again / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary folder left behind


def test_corpus_leaves_a_foreign_folder_alone(tmp_path, corpus_root):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "older-corpus.txt").write_text("x")
    rendered = ensure_corpus(tmp_path, TINY_CORPUS, progress=False)
    assert rendered.name == f"tiny-{TINY_CORPUS.short_hash()}"
    assert (tmp_path / "tiny" / "older-corpus.txt").is_file()
    assert read_corpus(rendered) == read_corpus(corpus_root / "tiny")


def test_corpus_identities_are_disjoint_from_the_benchmarks():
    corpus = {traits_hash(corpus_identity(CORPUS_PRESETS["demo"], pid)) for pid in corpus_pids(CORPUS_PRESETS["demo"])}
    assert len(corpus) == CORPUS_PRESETS["demo"].identities  # distinct people inside the corpus
    benchmark, benchmark_pids = set(), set()
    for preset in ("tiny", "demo"):
        spec = synthetic.SyntheticSpec.preset(preset)
        for scenario in spec.scenarios:
            train, test = synthetic.scenario_pids(spec, scenario)
            for pid in train + test:
                # The benchmark's own identity stream (benchmark._build_world draws identities this way).
                rng = synthetic.stream(spec, scenario, pid, synthetic.STREAM_IDENTITY)
                benchmark.add(traits_hash(world.sample_identity(rng)))
                benchmark_pids.add(pid)
    assert len(benchmark) == len(benchmark_pids) == 300  # tiny and demo share seed 0, so tiny is a subset
    assert not corpus & benchmark
    assert not set(corpus_pids(CORPUS_PRESETS["demo"])) & benchmark_pids
    # Same seed number, same pid: still other people, because the streams are salted.
    same_pid = synthetic.stream(synthetic.SyntheticSpec.preset("demo"), "vi", 1, synthetic.STREAM_IDENTITY)
    assert traits_hash(world.sample_identity(same_pid)) != traits_hash(corpus_identity(CorpusSpec(), 1))


# ------------------------------------------------------------------------------------------ training
def test_clip_loss_rewards_matching_pairs():
    text = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    matched = clip_contrastive_loss(text, text, torch.tensor(100.0))
    shuffled = clip_contrastive_loss(text.roll(1, dims=0), text, torch.tensor(100.0))
    assert float(matched) < 0.05 < 5.0 < float(shuffled)
    duplicate = torch.stack([text[0], text[0], text[1]])  # two pictures share one caption: loss floor log 2 * 2/3
    floor = clip_contrastive_loss(duplicate, duplicate, torch.tensor(100.0))
    assert abs(float(floor) - 2 / 3 * np.log(2)) < 1e-3


def test_a_few_steps_train_with_finite_loss(corpus_root):
    L.seed_everything(0, verbose=False)
    module = tiny_module()
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    data = CorpusDataModule(corpus=TINY_CORPUS, root=str(corpus_root), image_size=(64, 32), batch_size=6,
                            progress=False)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    loss = trainer.callback_metrics["train/loss"]
    assert trainer.global_step == 4 and torch.isfinite(loss) and float(loss) > 0
    changed = [name for name, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert "image_encoder.position_embedding" in changed and any("text_model" in name for name in changed)


def test_batch_augmentation_flips_shifts_and_normalises():
    images = torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = augment_batch(images, flip=0.0, padding=0)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(plain, (images.float() / 255 - mean) / std)
    torch.testing.assert_close(augment_batch(images, flip=1.0, padding=0), plain.flip(3))
    shifted = augment_batch(images, flip=0.0, padding=3)
    assert shifted.shape == plain.shape and not torch.equal(shifted, plain)
    constant = torch.full((2, 3, 16, 8), 77, dtype=torch.uint8)  # edge padding never brings in new values
    torch.testing.assert_close(augment_batch(constant, flip=0.5, padding=3), augment_batch(constant, 0.0, 0))


def test_fit_square_position_table_is_an_exact_preimage():
    table = torch.randn(1 + 8 * 4, 16)
    for side in (8, 14):
        square = fit_square_position_table(table, (8, 4), side)
        assert square.shape == (1 + side * side, 16)
        torch.testing.assert_close(resize_position_table(square, (8, 4)), table, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="side"):
        fit_square_position_table(table, (8, 4), 6)


def test_saved_directory_loads_back_with_identical_outputs(tmp_path):
    module = tiny_module().eval()
    with torch.no_grad():  # a trained-looking rectangular table, far from any square table's resize
        module.image_encoder.position_embedding.add_(torch.randn_like(module.image_encoder.position_embedding))
    folder = save_clip_directory(module.to_clip_model(), clip_tokenizer(), tmp_path / "clip")
    loaded = load_clip_model(BackboneConfig(name_or_path=str(folder), pretrained=True, image_size=(64, 32)))
    plain = BackboneConfig(name_or_path=str(folder), pretrained=True, image_size=(64, 32),
                           scenario_embedding="none", dual_branch=False)
    encoder = CLIPImageEncoder(plain, loaded).eval()
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        expected = module.image_encoder(images, zeros, zeros)
        got = encoder(images, zeros, zeros)
        torch.testing.assert_close(got.f, expected.f, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.v, expected.v, rtol=0, atol=1e-5)
        tokenizer = clip_tokenizer(folder)
        ids = tokenizer(["a pedestrian in a red t-shirt.", "someone wearing a checked top and trousers."],
                        padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, clip_tokenizer()(["a pedestrian in a red t-shirt.",
                                                 "someone wearing a checked top and trousers."],
                                                padding=True, return_tensors="pt")["input_ids"])
        torch.testing.assert_close(CLIPTextEncoder(loaded).encode(ids), module.encode_text(ids), rtol=0, atol=1e-5)
    # The demo's encoder (scenario embedding, dual branch) loads the same folder too.
    demo = CLIPImageEncoder(BackboneConfig(name_or_path=str(folder), pretrained=True, image_size=(64, 32)))
    assert demo(images, zeros, zeros).f.shape == (5, 32)


def test_pretraining_rejects_a_square_grid_smaller_than_the_input():
    small = {**TINY_ARCHITECTURE, "vision": {**TINY_ARCHITECTURE["vision"], "image_size": 32}}
    with pytest.raises(ValueError, match="vision.image_size"):
        CLIPPretraining(BackboneConfig(**small))
    with pytest.raises(ValueError, match="pretrained must be false"):
        CLIPPretraining(BackboneConfig(name_or_path="x", pretrained=True))


# ------------------------------------------------------------------------------------------ command line
def test_print_config_works_on_the_shipped_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(REPO / "conf/pretrain.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] > 0 and printed["data"]["corpus"]["identities"] > 0
    assert printed["model"]["backbone"]["image_size"] == [128, 64] == printed["data"]["image_size"]


def tiny_config(tmp_path: Path, synthetic_root: Path, steps: int = 3) -> list[str]:
    config = {
        "threads": 1,
        "trainer": {"max_steps": steps, "enable_progress_bar": False, "log_every_n_steps": 1},
        "model": {"backbone": TINY_ARCHITECTURE, "warmup_steps": 1},
        "data": {"root": str(tmp_path / "corpus"), "corpus": TINY_CORPUS.model_dump(), "image_size": [64, 32],
                 "batch_size": 6, "progress": False},
        "evaluation": {"root": str(synthetic_root), "preset": "tiny", "batch_size": 64},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(REPO / "conf/pretrain.yaml"), "--config", str(path), "--out", str(tmp_path / "clip")]


def test_cli_trains_saves_evaluates_and_reuses(tmp_path, synthetic_root, capsys):
    args = tiny_config(tmp_path, synthetic_root)
    cli.main([*args, "--eval"])
    out = tmp_path / "clip"
    for name in ("config.json", "model.safetensors", "pretrain_meta.json", "eval.json", "logs/metrics.csv"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "pretrain_meta.json").read_text())
    assert meta["steps"] == 3 and np.isfinite(meta["final_loss"])
    report = json.loads((out / "eval.json").read_text())["results"]
    assert set(report) == {"raw_pixels", "random_init_f", "random_init_v", "pretrained_f", "pretrained_v"}
    assert set(report["pretrained_f"]) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
    assert all(0.0 <= r["mAP"] <= 1.0 for row in report.values() for r in row.values())
    assert "pretrained_f" in capsys.readouterr().out
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    cli.main(args)  # same settings: reused, not retrained
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        cli.main([*args, "--trainer.max_steps", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "corpus", "tiny.yaml"]  # no temporary folder


def test_a_failed_run_leaves_nothing_that_looks_finished(tmp_path, synthetic_root, monkeypatch):
    def fail(self):
        raise RuntimeError("killed")

    monkeypatch.setattr(CLIPPretraining, "to_clip_model", fail)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(tiny_config(tmp_path, synthetic_root, steps=1))
    assert not (tmp_path / "clip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clip")]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.image_size", "[64, 64]"], "image_size"),
        (["--trainer.max_steps", "-1"], "max_steps"),
        (["--data.batch_size", "1"], "batch_size"),
    ],
)
def test_bad_settings_give_one_clear_line(tmp_path, synthetic_root, capsys, args, expected):
    from itkm_lightning.command import main as itkm

    with pytest.raises(SystemExit) as exit_info:
        itkm(["pretrain", *tiny_config(tmp_path, synthetic_root), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err.strip().splitlines()[0]
    assert not (tmp_path / "clip").exists()
