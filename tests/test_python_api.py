"""`from itkm_lightning import FeatureExtractor` and short dataset names (issue 17, item 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def trained(tmp_path, tiny_backbone):
    from itkm_lightning.handoffs import save_handoff
    from itkm_lightning.stages.stage1 import Stage1

    torch.manual_seed(5)
    stage = Stage1(backbone=tiny_backbone)
    with torch.no_grad():
        for param in stage.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    handoff = tmp_path / "run" / "stage1" / "handoff.pt"
    save_handoff(handoff, {"stage": "stage1", "encoder": stage.encoder_state(), "backbone": tiny_backbone.model_dump()})
    return tmp_path / "run", stage.encoder.eval()


def images(synthetic_root: Path) -> list[Path]:
    return sorted((synthetic_root / "synthetic" / "tiny" / "vi" / "query").glob("*.png"))[:3]


def test_paths_pil_images_and_tensors_give_the_encoders_features(trained, synthetic_root):
    from itkm_lightning import FeatureExtractor
    from itkm_lightning.data.dataset import load_rgb
    from itkm_lightning.data.transforms import test_transform

    run_dir, encoder = trained
    paths = images(synthetic_root)
    fx = FeatureExtractor(run_dir, device="cpu")
    pil = [load_rgb(str(p)) for p in paths]
    as_tensor = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in pil])
    by_path = fx([str(p) for p in paths], scenario="vi", group=1)
    assert by_path.shape == (3, encoder.cfg.vision["hidden_size"]) and by_path.dtype == torch.float32
    with torch.no_grad():
        batch = torch.stack([test_transform(encoder.cfg.image_size)(im) for im in pil])
        expected = torch.nn.functional.normalize(encoder(batch, torch.zeros(3, dtype=torch.long),
                                                         torch.ones(3, dtype=torch.long)).f, dim=1)
    torch.testing.assert_close(by_path, expected)
    mixed = fx([paths[0], pil[1], as_tensor[2]], scenario="vi", group=1)  # one call, three kinds of input
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fx(as_tensor, scenario="vi", group=1), expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(fx(pil, scenario="vi", group=1), expected, atol=1e-5)
    assert torch.allclose(torch.linalg.norm(by_path, dim=1), torch.ones(3))


def test_embed_writes_what_the_extractor_computes(trained, synthetic_root, tmp_path):
    from itkm_lightning import FeatureExtractor
    from itkm_lightning.tools.embedding_files import load_embeddings

    run_dir, _ = trained
    folder = synthetic_root / "synthetic" / "tiny" / "vi" / "query"
    main(["embed", str(folder), "--model", str(run_dir), "--scenario", "vi", "--group", "1", "--out",
          str(tmp_path / "emb")])
    feats, rows = load_embeddings(tmp_path / "emb")
    expected = FeatureExtractor(run_dir, device="cpu")([r["path"] for r in rows], scenario="vi", group=1)
    np.testing.assert_allclose(feats, expected.numpy(), atol=1e-5)


def test_bad_extractor_input_says_what_to_pass(trained, tmp_path):
    from itkm_lightning import FeatureExtractor

    fx = FeatureExtractor(trained[0], device="cpu")
    with pytest.raises(ValueError, match="scenario must be one of"):
        fx([Image.new("RGB", (32, 64))], scenario="ir")
    with pytest.raises(ValueError, match="group must be 0 or 1"):
        fx([Image.new("RGB", (32, 64))], scenario="vi", group=2)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        fx(torch.full((3, 64, 32), 255.0), scenario="vi")
    with pytest.raises(ValueError, match="3 x H x W"):
        fx(torch.zeros(64, 32), scenario="vi")
    with pytest.raises(ValueError, match="cannot read an image from a int"):
        fx([3], scenario="vi")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureExtractor(tmp_path / "nope")


def test_importing_the_package_loads_no_model_code():
    code = ("import sys, itkm_lightning; assert hasattr(itkm_lightning, '__version__'); "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ short names
def test_short_names_are_the_sources_with_their_defaults(tmp_path):
    from itkm_lightning.fit_config import parse_fit_config
    from itkm_lightning.data.names import source_of
    from itkm_lightning.data.datasets import LTCC, MLRCUHK03, SYSUMM01
    from itkm_lightning.data.names import SHORT_NAMES

    config = tmp_path / "short.yaml"
    config.write_text("data:\n  sources: [sysu, ltcc, mlr_cuhk03]\n")
    data = parse_fit_config([str(REPO / "conf/smoke.yaml"), str(config)]).data
    sources = [source_of(entry) for entry in data.sources]
    assert [type(s) for s in sources] == [SYSUMM01, LTCC, MLRCUHK03]
    assert vars(sources[0]) == vars(SYSUMM01())
    assert type(source_of("MLR-CUHK03")) is MLRCUHK03  # case and dashes do not matter
    for name, class_path in SHORT_NAMES.items():  # every name imports and is a dataset source
        if name != "folder":
            source_of(name)


def test_unknown_short_name_is_one_line(tmp_path, capsys):
    config = tmp_path / "short.yaml"
    config.write_text("data:\n  sources: [sysmm]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(config), "--run_dir",
              str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "unknown dataset name 'sysmm'; short names are sysu, regdb" in err.splitlines()[0]
    assert not (tmp_path / "run").exists()


def test_a_short_name_loads_real_images_as_its_class_path_does():
    from test_realdata import dataset_or_skip

    from itkm_lightning.data.names import source_of
    from itkm_lightning.data.datasets import CUHK01

    cuhk01 = dataset_or_skip("cuhk01_manideep2510")
    (by_name,) = source_of("cuhk01").load(cuhk01)
    (by_class,) = CUHK01().load(cuhk01)
    assert by_name == by_class and len(by_name.query) == 100
