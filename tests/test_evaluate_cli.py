"""`itkm evaluate`: a trained model scored on the benchmarks of a data config, without training (issue 17, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "conf" / "smoke.yaml")


def reference_scores(stage, configs: list[str], overrides: list[str], rerank=None) -> dict:
    """What `itkm fit` records for this module: its own retrieval features through the datamodule's loaders."""
    from itkm_lightning.fit_config import parse_fit_config
    from itkm_lightning.data.names import source_of
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.evaluation.benchmark import evaluate_benchmark

    data = parse_fit_config(configs, overrides).data
    dm = ReIDDataModule([source_of(s) for s in data.sources], root=data.root, image_size=(64, 32), num_workers=0,
                        test_sources=None if not data.get("test_sources") else [source_of(s) for s in data.test_sources])
    dm.setup("validate")
    return {b.name: evaluate_benchmark(b, stage.extract(dm.extraction_dataloader(b.query + b.gallery), "retrieval"),
                                       rerank=rerank) for b in dm.benchmarks}


def evaluate(args: list[str]) -> dict:
    main(["evaluate", *args])
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "results.json").read_text())


def assert_same_scores(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, metrics in expected.items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert got[name][key] == pytest.approx(value, abs=1e-6), (name, key)
            else:
                assert got[name][key] == value


def test_evaluate_scores_every_benchmark_as_fit_does(trained, synthetic_root, tmp_path, capsys):
    run_dir, _, stage = trained
    out = tmp_path / "eval"
    results = evaluate(["--model", str(run_dir), "--config", SMOKE, "--data.root", str(synthetic_root),
                        "--out", str(out)])
    assert list(results) == ["evaluated"]
    expected = reference_scores(stage, [SMOKE], ["--data.root", str(synthetic_root)])
    assert set(expected) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
    assert_same_scores(results["evaluated"], expected)
    for name in expected:
        assert (out / "figures" / f"ranked_{name}.png").stat().st_size > 0
    record = json.loads((out / "evaluation.json").read_text())
    assert record["model"] == str(run_dir.resolve()) and record["rerank"] is None
    printed = capsys.readouterr().out
    assert "evaluated" in printed and "synthetic_cc" in printed


def test_every_model_source_scores_the_same(trained, synthetic_root, tmp_path):
    run_dir, handoff, _ = trained
    common = ["--config", SMOKE, "--data.root", str(synthetic_root), "--benchmark", "synthetic_cr",
              "--queries_shown", "0"]
    scores = [evaluate(["--model", str(source), *common, "--out", str(tmp_path / f"e{i}")])["evaluated"]
              for i, source in enumerate((run_dir, run_dir / "checkpoints" / "last.ckpt", handoff))]
    assert scores[0] == scores[1] == scores[2]
    assert not (tmp_path / "e0" / "figures").exists()


def test_rerank_uses_the_reference_parameters_or_the_configs(trained, synthetic_root, tmp_path):
    from itkm_lightning.config import RerankConfig

    run_dir, _, stage = trained
    common = ["--model", str(run_dir), "--config", SMOKE, "--data.root", str(synthetic_root), "--rerank"]
    got = evaluate([*common, "--out", str(tmp_path / "a")])["evaluated"]
    expected = reference_scores(stage, [SMOKE], ["--data.root", str(synthetic_root)], rerank=RerankConfig())
    assert_same_scores(got, expected)
    assert got["synthetic_vi"]["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    # The config's evaluation.rerank wins over the defaults (and applies even without --rerank).
    got = evaluate([*common[:-1], "--evaluation.rerank", "{k1: 6, k2: 3, lambda: 0.5}", "--out", str(tmp_path / "b")])
    assert got["evaluated"]["synthetic_cr"]["rerank"] == {"k1": 6, "k2": 3, "lambda": 0.5}


def labelled_folder_config(synthetic_root: Path, tmp_path: Path, as_test_sources: bool) -> Path:
    """A config training on the synthetic benchmark and testing on an ImageFolder of its cr images (own labels)."""
    import csv

    cr = synthetic_root / "synthetic" / "tiny" / "cr"
    manifest = list(csv.DictReader((cr.parent / "manifest.csv").open()))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pid", "camid", "split"])
        for row in manifest:
            if row["scenario"] == "cr":
                writer.writerow([row["path"].removeprefix("cr/"), row["pid"], row["camid"], row["split"]])
    folder = (f"    - class_path: itkm_lightning.data.datasets.ImageFolder\n"
              f"      init_args: {{path: {cr}, scenario: cr, labels: {labels}, name: mine}}\n")
    config = tmp_path / "cross.yaml"
    config.write_text(f"data:\n  root: {synthetic_root}\n  sources: [synthetic]\n"
                      + (f"  test_sources:\n{folder}" if as_test_sources else ""))
    return config


def test_test_sources_differ_from_the_training_sources(trained, synthetic_root, tmp_path):
    run_dir, _, stage = trained
    config = labelled_folder_config(synthetic_root, tmp_path, as_test_sources=True)
    got = evaluate(["--model", str(run_dir), "--config", SMOKE, "--config", str(config), "--out", str(tmp_path / "x")])
    assert list(got["evaluated"]) == ["mine"]  # torchreid's -s synthetic -t mine
    assert_same_scores(got["evaluated"], reference_scores(stage, [SMOKE, str(config)], []))


def test_test_sources_in_the_datamodule(synthetic_root, tmp_path):
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.data.datasets import ImageFolder
    from itkm_lightning.data.sources import SyntheticBenchmark

    labelled_folder_config(synthetic_root, tmp_path, as_test_sources=True)
    folder = ImageFolder(path=str(synthetic_root / "synthetic/tiny/cr"), scenario="cr",
                         labels=str(tmp_path / "labels.csv"), name="mine")
    dm = ReIDDataModule([SyntheticBenchmark(preset="tiny")], root=str(synthetic_root), num_workers=0,
                        test_sources=[folder])
    dm.setup("fit")
    assert [b.name for b in dm.benchmarks] == ["mine"]
    assert {s.source for s in dm.train_samples} == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}  # sources only


def test_bad_evaluate_input_is_one_line(trained, synthetic_root, tmp_path, capsys):
    run_dir, _, _ = trained
    (run_dir / "run.json").write_text("{}\n")

    def one_line(args):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        return err.strip().splitlines()[0]

    base = ["--config", SMOKE, "--data.root", str(synthetic_root)]
    assert "is a training run directory" in one_line(["--model", str(run_dir), *base, "--out", str(run_dir)])
    assert "does not exist" in one_line(["--model", str(tmp_path / "nope"), *base, "--out", str(tmp_path / "o")])
    assert "config nope.yaml does not exist" in one_line(["--model", str(run_dir), "--config", "nope.yaml",
                                                          "--out", str(tmp_path / "o")])
    assert "--benchmark zz: the config has" in one_line(["--model", str(run_dir), *base, "--benchmark", "zz",
                                                         "--out", str(tmp_path / "o")])


# real_*.yaml read an absolute folder of their own (~/.cache/itkm/real), which --data.root does not move.
REAL_CONFIGS = sorted(p.name for p in (REPO / "conf").glob("*.yaml")
                      if p.stem != "smoke" and not p.stem.startswith(("demo", "pretrain", "real_")))


@pytest.mark.parametrize("config", REAL_CONFIGS)
def test_every_real_config_without_its_data_names_the_layout(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(tmp_path / "model"), "--config", str(REPO / "conf" / config),
              "--data.root", str(tmp_path / "empty"), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "Expected layout" in err and "data/README.md" in err
    if config == "ums.yaml":  # three datasets, all named at once
        assert "3 configured datasets are not usable" in err
    assert not (tmp_path / "eval").exists()


def test_lightning_validate_and_test_are_not_offered(capsys):
    for subcommand in ("validate", "test", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", SMOKE])
        assert exit_info.value.code == 2
        assert f"invalid choice: '{subcommand}'" in capsys.readouterr().err


# ------------------------------------------------------------------ real images (../shared/realdata)
def cuhk01_or_skip() -> Path:
    from test_realdata import dataset_or_skip

    return dataset_or_skip("cuhk01_manideep2510")


@pytest.mark.parametrize("rerank", [False, True])
def test_evaluate_on_cuhk01_real_images(rerank, trained, tmp_path):
    cuhk01 = cuhk01_or_skip()
    run_dir, _, stage = trained
    config = tmp_path / "cuhk01.yaml"
    config.write_text(f"data:\n  root: {json.dumps(str(cuhk01))}\n  sources: [cuhk01]\n")
    got = evaluate(["--model", str(run_dir), "--config", str(config), "--out", str(tmp_path / "eval"),
                    *(["--rerank"] if rerank else [])])["evaluated"]
    assert list(got) == ["cuhk01"]
    from itkm_lightning.config import RerankConfig

    assert_same_scores(got, reference_scores(stage, [str(config)], [], rerank=RerankConfig() if rerank else None))
    assert ("rerank" in got["cuhk01"]) == rerank
    assert (tmp_path / "eval" / "figures" / "ranked_cuhk01.png").is_file()


# ------------------------------------------------------------------ the timm image tower (model.backbone.kind: timm)
def test_evaluate_and_the_extractor_open_a_timm_model(synthetic_root, tmp_path):
    from itkm_lightning import FeatureExtractor
    from itkm_lightning.fit_config import parse_fit_config
    from itkm_lightning.data.names import source_of
    from itkm_lightning.handoffs import save_handoff
    from itkm_lightning.models.backbone import build_image_encoder
    from itkm_lightning.models.backbone_config import BackboneConfig
    from itkm_lightning.evaluation.benchmark import evaluate_benchmark
    from itkm_lightning.tools.features import embed_samples, encoder_features, samples_from_config

    pytest.importorskip("timm")
    cfg = BackboneConfig(kind="timm", timm_name="mobilenetv2_100", timm_weights=None, pretrained=False,
                         image_size=(64, 32), projection_dim=16)
    torch.manual_seed(0)
    trained = build_image_encoder(cfg).eval()
    with torch.no_grad():
        trained.scenario_embedding.normal_()
    save_handoff(tmp_path / "run" / "stage1" / "handoff.pt",
                 {"stage": "stage1", "encoder": trained.state_dict(), "backbone": cfg.model_dump()})
    overrides = ["--data.root", str(synthetic_root)]
    got = evaluate(["--model", str(tmp_path / "run"), "--config", SMOKE, *overrides, "--benchmark", "synthetic_vi",
                    "--queries_shown", "0", "--out", str(tmp_path / "eval")])["evaluated"]
    samples = samples_from_config([SMOKE], "test", "synthetic_vi", overrides)
    features = embed_samples(encoder_features(trained), samples, (64, 32), progress=False)
    data = parse_fit_config([SMOKE], overrides).data
    (bench,) = [b for b in source_of(data.sources[0]).load(synthetic_root) if b.name == "synthetic_vi"]
    assert_same_scores(got, {"synthetic_vi": evaluate_benchmark(bench, features)})
    fx = FeatureExtractor(tmp_path / "run", device="cpu")
    for group in (0, 1):  # one call tags all its images alike
        rows = [i for i, s in enumerate(samples) if s.group == group][:3]
        torch.testing.assert_close(fx([samples[i].path for i in rows], scenario="vi", group=group), features[rows],
                                   atol=1e-5, rtol=1e-4)
