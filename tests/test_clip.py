"""CLIP backbone: rectangular input, scenario embedding, dual branch, loading, frozen text side, tokenizer."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_image import CLIPImageEncoder, resize_position_table
from itkm_lightning.models.clip_loading import BackboneUnavailableError, check_clip_layout, load_clip_model
from itkm_lightning.models.clip_text import CLIPTextEncoder
from itkm_lightning.models.tokenizer import CLIP_VOCAB_SIZE, clip_tokenizer, open_clip_bpe_path, write_clip_vocab_files

torch.set_num_threads(1)

BATCH = 4


def make_config(tiny_backbone: BackboneConfig, **changes) -> BackboneConfig:
    return BackboneConfig(**{**tiny_backbone.model_dump(), **changes})


def make_encoder(cfg: BackboneConfig, seed: int = 0) -> CLIPImageEncoder:
    torch.manual_seed(seed)
    return CLIPImageEncoder(cfg).eval()


def images(cfg: BackboneConfig, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *cfg.image_size, generator=generator)


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# ----------------------------------------------------------------------------------------------- image side


def test_output_shapes_and_dims(tiny_backbone):
    encoder = make_encoder(tiny_backbone)
    out = encoder(images(tiny_backbone), ids(0, 1, 2, 0), ids(0, 1, 0, 1))
    assert out.f.shape == (BATCH, 32) and out.v.shape == (BATCH, 16)
    assert (encoder.feature_dim, encoder.projection_dim) == (32, 16)
    assert torch.isfinite(out.f).all() and torch.isfinite(out.v).all()


def test_position_table_resized_with_cls_row_kept(tiny_backbone):
    torch.manual_seed(0)
    clip = load_clip_model(tiny_backbone)
    original = clip.vision_model.embeddings.position_embedding.weight.detach().clone()
    encoder = CLIPImageEncoder(tiny_backbone, clip)
    assert original.shape == (1 + 28 * 28, 32)  # 224 / 8 = 28 patches a side in HF's default config
    assert encoder.grid_size == (8, 4)
    assert encoder.position_embedding.shape == (1 + 8 * 4, 32)
    assert encoder.position_embedding.requires_grad
    torch.testing.assert_close(encoder.position_embedding[0].detach(), original[0], rtol=0, atol=0)


def test_resize_position_table_interpolates():
    table = torch.randn(1 + 4 * 4, 6)
    torch.testing.assert_close(resize_position_table(table, (4, 4)), table)  # same grid: untouched
    constant = torch.cat([torch.randn(1, 6), torch.ones(16, 1) * torch.randn(1, 6)])
    resized = resize_position_table(constant, (6, 2))  # bicubic weights sum to one: constants survive
    assert resized.shape == (1 + 12, 6)
    torch.testing.assert_close(resized[1:], constant[1:2].expand(12, 6), rtol=1e-5, atol=1e-5)
    ramp = torch.arange(4.0).repeat_interleave(4)[:, None].expand(16, 6)  # value = row of the 4x4 grid
    upsampled = resize_position_table(torch.cat([torch.zeros(1, 6), ramp]), (8, 2))[1:, 0].reshape(8, 2)[:, 0]
    assert (upsampled.diff() > 0).all()  # interpolated, not nearest-neighbour (which repeats rows)
    square = ramp.reshape(1, 4, 4, 6).permute(0, 3, 1, 2)
    bicubic = torch.nn.functional.interpolate(square, size=(8, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(upsampled, bicubic[0, 0, :, 0])
    with pytest.raises(ValueError, match="square"):
        resize_position_table(torch.randn(1 + 12, 6), (4, 2))


def test_square_input_matches_hf_vision_forward(tiny_backbone):
    """With HF's own square size, no scenario and one branch, our embeddings path equals HF's forward."""
    cfg = make_config(
        tiny_backbone,
        image_size=(32, 32),
        vision={**tiny_backbone.vision, "image_size": 32},
        scenario_embedding="none",
        dual_branch=False,
    )
    torch.manual_seed(0)
    clip = load_clip_model(cfg).eval()
    encoder = CLIPImageEncoder(cfg, clip).eval()
    pixels = images(cfg)
    with torch.no_grad():
        out = encoder(pixels, ids(0, 1, 2, 0), ids(0, 1, 0, 1))
        reference = clip.vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(out.f, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.v, clip.visual_projection(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["cls", "all", "none"])
def test_scenario_embedding_touches_only_its_tokens(tiny_backbone, mode):
    cfg = make_config(tiny_backbone, scenario_embedding=mode, scenario_embedding_scale=2.0)
    encoder = make_encoder(cfg)
    pixels, group = images(cfg), ids(0, 0, 1, 1)
    with torch.no_grad():
        tokens_0 = encoder.embed(pixels, ids(0, 0, 0, 0), group)
        tokens_1 = encoder.embed(pixels, ids(1, 1, 1, 1), group)
        f_0 = encoder(pixels, ids(0, 0, 0, 0), group).f
        f_1 = encoder(pixels, ids(1, 1, 1, 1), group).f
    difference = tokens_1 - tokens_0
    if mode == "none":
        assert encoder.scenario_embedding is None
        torch.testing.assert_close(f_0, f_1, rtol=0, atol=0)
        return
    shift = 2.0 * (encoder.scenario_embedding[1] - encoder.scenario_embedding[0]).detach()
    assert shift.abs().max() > 1e-3  # trunc-normal std 0.02: the two rows do differ
    touched = slice(0, 1) if mode == "cls" else slice(None)
    torch.testing.assert_close(difference[:, touched], shift.expand_as(difference[:, touched]), rtol=1e-5, atol=1e-6)
    if mode == "cls":
        assert difference[:, 1:].abs().max() == 0
    assert (f_0 - f_1).abs().max() > 1e-4


def test_scenario_embedding_init_is_truncated_normal(tiny_backbone):
    cfg = make_config(tiny_backbone, num_scenarios=200)
    table = make_encoder(cfg).scenario_embedding.detach()
    assert table.shape == (200, 32)
    assert 0.015 < table.std().item() < 0.025
    assert table.abs().max().item() <= 2.0  # trunc_normal_ default bounds [-2, 2]


def test_dual_branch_routes_each_sample_to_its_group(tiny_backbone):
    encoder = make_encoder(tiny_backbone)
    first, second = encoder.patch_embeddings
    torch.testing.assert_close(second.weight, first.weight, rtol=0, atol=0)  # both start from CLIP's conv
    assert second.weight.data_ptr() != first.weight.data_ptr()
    with torch.no_grad():
        second.weight.add_(0.05 * torch.randn_like(second.weight))
        pixels, scenario = images(tiny_backbone), ids(0, 1, 2, 0)
        all_zero = encoder(pixels, scenario, ids(0, 0, 0, 0)).f
        mixed = encoder(pixels, scenario, ids(0, 1, 0, 1)).f
        singles = [encoder(pixels[i : i + 1], scenario[i : i + 1], ids(g)).f for i, g in enumerate((0, 1, 0, 1))]
        one_by_one = torch.cat(singles)
    torch.testing.assert_close(mixed[[0, 2]], all_zero[[0, 2]], rtol=1e-5, atol=1e-6)
    assert (mixed[[1, 3]] - all_zero[[1, 3]]).abs().max() > 1e-3
    torch.testing.assert_close(mixed, one_by_one, rtol=1e-4, atol=1e-5)  # batch order restored


def test_single_branch_ignores_group(tiny_backbone):
    cfg = make_config(tiny_backbone, dual_branch=False)
    encoder = make_encoder(cfg)
    assert len(encoder.patch_embeddings) == 1
    pixels, scenario = images(cfg), ids(0, 1, 2, 0)
    with torch.no_grad():
        out_0 = encoder(pixels, scenario, ids(0, 0, 0, 0)).f
        out_1 = encoder(pixels, scenario, ids(1, 1, 1, 1)).f
    torch.testing.assert_close(out_0, out_1, rtol=0, atol=0)


def test_gradients_reach_the_right_parameters(tiny_backbone):
    encoder = make_encoder(tiny_backbone).train()
    out = encoder(images(tiny_backbone), ids(0, 2, 0, 2), ids(0, 0, 0, 0))
    (out.f.square().sum() + out.v.square().sum()).backward()
    assert encoder.patch_embeddings[0].weight.grad.abs().sum() > 0
    # no group-1 image in the batch: the branch gets an exact-zero gradient (present for DDP, no effect)
    assert encoder.patch_embeddings[1].weight.grad.abs().sum() == 0
    scenario_grad = encoder.scenario_embedding.grad
    assert scenario_grad[[0, 2]].abs().sum(dim=1).min() > 0 and scenario_grad[1].abs().sum() == 0
    for name in ("position_embedding", "class_embedding", "visual_projection.weight", "post_layernorm.weight"):
        assert encoder.get_parameter(name).grad.abs().sum() > 0, name


def test_new_and_pretrained_parameters_partition(tiny_backbone):
    encoder = make_encoder(tiny_backbone)
    new, pretrained = encoder.new_parameters(), encoder.pretrained_parameters()
    new_ids, pretrained_ids = {id(p) for p in new}, {id(p) for p in pretrained}
    assert not new_ids & pretrained_ids
    assert new_ids | pretrained_ids == {id(p) for p in encoder.parameters()}
    assert new_ids == {id(encoder.scenario_embedding)}
    # the second branch is a copy of CLIP's convolution: pretrained, not new
    assert {id(p) for p in encoder.patch_embeddings.parameters()} <= pretrained_ids
    single = make_encoder(make_config(tiny_backbone, dual_branch=False, scenario_embedding="none"))
    assert single.new_parameters() == []


def test_checkpoint_keys_keep_their_order(tiny_backbone):
    """Parameters are created and registered in one fixed order: seeded runs start from the same weights and
    checkpoints keep their keys."""
    keys = list(make_encoder(tiny_backbone).state_dict())
    assert keys[:5] == ["class_embedding", "position_embedding", "scenario_embedding", "patch_embeddings.0.weight",
                        "patch_embeddings.1.weight"]
    assert keys[-2:] == ["post_layernorm.bias", "visual_projection.weight"]


@pytest.mark.parametrize("config", ["ums.yaml", "demo.yaml", "smoke.yaml"])
def test_optimizer_gives_lr_new_to_the_scenario_embedding_only(tiny_backbone, config):
    """The second patch branch is a copy of CLIP's convolution: it trains at the base lr, like branch 0;
    only the scenario embedding gets lr_new (issue 13, defect 2). Every real config goes through this."""
    import yaml

    from itkm_lightning.config import OptimConfig
    from itkm_lightning.stages.stage1 import Stage1

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / config).read_text())["model"]
    optim = OptimConfig(**{**section.get("optim", {}), "warmup_epochs": 1})  # warm-up: no Trainer needed
    module = Stage1(backbone=make_config(tiny_backbone, dual_branch=True, scenario_embedding="cls"), optim=optim)
    optimizer = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    encoder = module.encoder
    assert lr_of[id(encoder.scenario_embedding)] == optim.lr_new
    for branch in encoder.patch_embeddings:
        assert all(lr_of[id(p)] == optim.lr for p in branch.parameters())
    assert all(lr_of[id(p)] == optim.lr for p in encoder.encoder.parameters())
    assert len(lr_of) == sum(1 for p in module.parameters() if p.requires_grad)


def test_encoder_holds_no_unused_clip_parameters(tiny_backbone):
    """Only what forward uses is registered: no text tower, no square position table (DDP-safe)."""
    encoder = make_encoder(tiny_backbone).train()
    out = encoder(images(tiny_backbone), ids(0, 1, 2, 0), ids(0, 1, 0, 1))
    (out.f.sum() + out.v.sum()).backward()
    unused = [name for name, param in encoder.named_parameters() if param.grad is None]
    assert unused == []


# ------------------------------------------------------------------------------------------------- loading


def test_save_pretrained_round_trip_gives_identical_outputs(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    clip = load_clip_model(tiny_backbone)
    clip.save_pretrained(tmp_path)
    reloaded_cfg = BackboneConfig(name_or_path=str(tmp_path), image_size=tiny_backbone.image_size, projection_dim=16)
    torch.manual_seed(5)
    original_encoder = CLIPImageEncoder(tiny_backbone, clip).eval()
    torch.manual_seed(5)
    reloaded_encoder = CLIPImageEncoder(reloaded_cfg).eval()
    pixels, scenario, group = images(tiny_backbone), ids(0, 1, 2, 0), ids(0, 1, 0, 1)
    with torch.no_grad():
        expected, actual = original_encoder(pixels, scenario, group), reloaded_encoder(pixels, scenario, group)
    torch.testing.assert_close(actual.f, expected.f, rtol=0, atol=0)
    torch.testing.assert_close(actual.v, expected.v, rtol=0, atol=0)


def assert_fast_unavailable(cfg: BackboneConfig, *fragments: str) -> None:
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError) as caught:
        load_clip_model(cfg)
    assert time.perf_counter() - start < 3.0
    message = str(caught.value)
    for fragment in ("hf download", "model.backbone.name_or_path", *fragments):
        assert fragment in message


def test_missing_local_directory_fails_fast(tmp_path):
    assert_fast_unavailable(BackboneConfig(name_or_path=str(tmp_path / "absent")), "does not exist")
    assert_fast_unavailable(BackboneConfig(name_or_path=str(tmp_path)), "no config.json")


def test_offline_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_fast_unavailable(BackboneConfig(name_or_path="itkm-tests/not-a-cached-clip"), "HF_HUB_OFFLINE")


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port
    assert_fast_unavailable(BackboneConfig(name_or_path="itkm-tests/not-a-cached-clip"), "unreachable")


def test_checkpoint_missing_weights_is_not_loaded_randomly(tiny_backbone, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    load_clip_model(tiny_backbone).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("text_model.")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(BackboneUnavailableError, match="lacks"):
        load_clip_model(BackboneConfig(name_or_path=str(tmp_path), image_size=(64, 32)))


def test_layout_check_names_the_missing_attribute(tiny_backbone):
    clip = load_clip_model(tiny_backbone)
    del clip.vision_model.pre_layrnorm
    with pytest.raises(RuntimeError, match="vision_model.pre_layrnorm"):
        check_clip_layout(clip)


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_size": (60, 32)}, "divisible"),
        ({"image_size": (0, 32)}, "positive"),
        ({"unknown_field": 1}, "Extra inputs"),
        ({"vision": {"hidden_sise": 32}}, "hidden_sise"),
        ({"vision": {"hidden_size": 30, "num_attention_heads": 4}}, "divisible"),
        ({"num_groups": 0}, "greater than 0"),
        ({"pretrained": True}, "pretrained: false"),
    ],
)
def test_config_rejects_bad_values(tiny_backbone, changes, message):
    with pytest.raises(ValidationError, match=message):
        make_config(tiny_backbone, **changes)


def test_forward_rejects_bad_inputs(tiny_backbone):
    encoder = make_encoder(tiny_backbone)
    with pytest.raises(ValueError, match="backbone.image_size"):
        encoder(torch.zeros(2, 3, 32, 32), ids(0, 0), ids(0, 0))
    with pytest.raises(ValueError, match="scenario values"):
        encoder(images(tiny_backbone, 2), ids(0, 3), ids(0, 0))
    with pytest.raises(ValueError, match="group must be"):
        encoder(images(tiny_backbone, 2), ids(0, 0), ids(0, 0, 1))


def test_encoder_checks_patch_divisibility_of_pretrained_models(tiny_backbone, tmp_path):
    load_clip_model(tiny_backbone).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="divisible by the patch size 8"):
        CLIPImageEncoder(BackboneConfig(name_or_path=str(tmp_path), image_size=(60, 32)))


# ------------------------------------------------------------------------------------------------ text side


@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer_cache")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_cache):
    return clip_tokenizer(cache_dir=tokenizer_cache)


@pytest.fixture()
def text_setup(tiny_backbone):
    torch.manual_seed(0)
    clip = load_clip_model(tiny_backbone).eval()
    return clip, CLIPTextEncoder(clip)


def test_text_encoder_matches_hf_text_forward(text_setup, tokenizer):
    clip, text_encoder = text_setup
    sentences = ["a photo of a person.", "a man in a red coat"]
    batch = tokenizer(sentences, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        ours = text_encoder.encode(batch["input_ids"], batch["attention_mask"])
        hf_pooled = clip.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    assert ours.shape == (2, 16)
    torch.testing.assert_close(ours, clip.text_projection(hf_pooled), rtol=1e-5, atol=1e-5)


def test_text_features_ignore_padding_and_accept_embeddings(text_setup, tokenizer):
    _, text_encoder = text_setup
    short = tokenizer(["a photo of a person."], padding="max_length", max_length=12, return_tensors="pt")["input_ids"]
    long = tokenizer(["a photo of a person."], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        from_short, from_long = text_encoder.encode(short), text_encoder.encode(long)
        from_embeddings = text_encoder.encode_embeddings(text_encoder.token_embedding(long), ids(7))
    torch.testing.assert_close(from_short, from_long, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_embeddings, from_long, rtol=0, atol=0)


def test_text_encoder_is_frozen_but_passes_gradients_to_prompts(text_setup, tokenizer):
    _, text_encoder = text_setup
    assert all(not param.requires_grad for param in text_encoder.parameters())
    text_encoder.train()
    assert not text_encoder.training and not text_encoder.encoder.training
    input_ids = tokenizer(["a photo of a x x x x person."], return_tensors="pt")["input_ids"]
    prompt = text_encoder.token_embedding(input_ids).detach().requires_grad_(True)
    eot = (input_ids == 49407).int().argmax(dim=1)
    text_encoder.encode_embeddings(prompt, eot).square().sum().backward()
    assert prompt.grad is not None and prompt.grad[0, : int(eot) + 1].abs().sum(dim=1).min() > 0
    assert prompt.grad[0, int(eot) + 1 :].abs().sum() == 0  # causal: nothing after EOT matters
    assert text_encoder.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-4)  # HF's default init


def test_text_encoder_rejects_rows_without_eot(text_setup):
    _, text_encoder = text_setup
    with pytest.raises(ValueError, match="endoftext"):
        text_encoder.encode(torch.tensor([[49406, 320, 1125]]))


# ------------------------------------------------------------------------------------------------ tokenizer


def load_open_clip_tokenizer_module():
    """open_clip's SimpleTokenizer without importing the whole open_clip package (seconds of model imports)."""
    path = open_clip_bpe_path().parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("open_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tokenizer_has_the_real_clip_vocabulary(tokenizer):
    assert len(tokenizer) == CLIP_VOCAB_SIZE == 49408
    assert tokenizer("a photo of a person.")["input_ids"] == [49406, 320, 1125, 539, 320, 2533, 269, 49407]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 49407


def test_tokenizer_agrees_with_open_clip(tokenizer, tokenizer_cache):
    reference = load_open_clip_tokenizer_module().SimpleTokenizer(open_clip_bpe_path())
    sentences = [
        "a photo of a person.",
        "A Photo of a  WOMAN wearing a red-and-white T-shirt!",
        "he's carrying 2 bags; it'll rain at 10:30",
        "backpack umbrella skateboard wheelchair café",
    ]
    for sentence in sentences:
        expected = [49406, *reference.encode(sentence), 49407]
        assert tokenizer(sentence)["input_ids"] == expected, sentence
    vocab = json.loads((write_clip_vocab_files(tokenizer_cache) / "vocab.json").read_text(encoding="utf-8"))
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert vocab == {renamed.get(token, token): index for token, index in reference.encoder.items()}


def test_tokenizer_prefers_a_model_directory_with_tokenizer_files(tokenizer, tmp_path, caplog):
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    assert len(clip_tokenizer(saved)) == 49408
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (broken / "merges.txt").write_text("#version: 0.2\n")
    fallback = clip_tokenizer(broken, cache_dir=tmp_path / "cache")
    assert len(fallback) == 49408 and "not CLIP's" in caplog.text
    assert len(clip_tokenizer(tmp_path / "no-tokenizer-here", cache_dir=tmp_path / "cache")) == 49408


def test_vocab_files_are_cached(tmp_path):
    folder = write_clip_vocab_files(tmp_path)
    stamp = (folder / "vocab.json").stat().st_mtime_ns
    assert write_clip_vocab_files(tmp_path) == folder
    assert (folder / "vocab.json").stat().st_mtime_ns == stamp
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 49152 - 256 - 2
