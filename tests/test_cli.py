import subprocess
import sys
from pathlib import Path

import pytest

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]
# Overlays (conf/ablations) are not standalone configs: tests/test_ablations.py composes them;
# sweep files are W&B's, tested in test_scale_cli.py.
CONFIGS = sorted(p for p in (REPO / "conf").rglob("*.yaml") if not {"ablations", "sweeps"} & set(p.parts))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_print_config_works_for_every_shipped_config(config, capsys):
    command = "pretrain" if config.stem.startswith("pretrain") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "trainer:" in out and "model:" in out and "data:" in out


def test_dotted_override_reaches_the_printed_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--trainer.max_epochs", "7",
              "--model.clustering.eps", "0.45", "--print_config"])
    out = capsys.readouterr().out
    assert "max_epochs: 7" in out and "eps: 0.45" in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.temperature", "abc"], "temperature"),
        (["--model.clustering.eps", "-0.1"], "eps"),
        (["--model.clustering.method", "kmeans"], "method"),
        (["--model.clusterin.eps", "0.5"], "clusterin"),
        (["--data.num_instances", "0"], "num_instances"),
        (["--data.on_unreadable", "ignore"], "on_unreadable"),
    ],
)
def test_bad_values_give_one_clear_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), *args, "--run_dir", "/nonexistent/never-written"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.strip().splitlines()[0]
    assert first.startswith("itkm: error:") and expected in first
    assert not Path("/nonexistent/never-written").exists()


def test_misspelled_key_in_a_config_file_is_named(tmp_path, capsys):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("model:\n  clustering:\n    epss: 0.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(overlay),
              "--run_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert "Traceback" not in err and first.startswith("itkm: error:") and "epss" in first
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "conf/does-not-exist.yaml"])
    assert exit_info.value.code == 2
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert "does-not-exist.yaml" in first


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "itkm_lightning", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "fit" in out.stdout


REAL_OVERLAYS = sorted(p.name for p in (REPO / "conf").glob("*.yaml")
                       if p.stem not in ("ums", "smoke") and not p.stem.startswith(("demo", "pretrain", "real_")))
# real_*.yaml name their own data folder (outside data.root): tests/test_timm_pipeline.py checks them.


@pytest.mark.parametrize("overlay", [None, *REAL_OVERLAYS])
def test_real_dataset_configs_without_data_name_the_layout(overlay, tmp_path, capsys):
    args = ["fit", "--config", str(REPO / "conf/ums.yaml")]
    if overlay:
        args += ["--config", str(REPO / "conf" / overlay)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--data.root", str(tmp_path / "empty"), "--run_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Expected layout" in err and "data/README.md" in err
    assert not (tmp_path / "run").exists()  # nothing written half-way


def test_reference_recipe_values_reach_the_composed_configs(capsys):
    """RegDB clusters with PGM's eps 0.3 in both clustering stages; ums.yaml greys visible images with p 0.5
    (CCLNet); Stage III smooths L_txt by 0.1 (CLIP-ReID) unless a config says otherwise."""
    import yaml

    def printed(*configs: str) -> dict:
        with pytest.raises(SystemExit):
            main(["fit", *[a for c in configs for a in ("--config", str(REPO / "conf" / c))], "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    regdb = printed("ums.yaml", "regdb.yaml")
    assert regdb["model"]["clustering"]["eps"] == 0.3
    assert regdb["stage3"]["init_args"]["clustering"]["eps"] == 0.3
    ums = printed("ums.yaml")
    assert ums["model"]["clustering"]["eps"] == 0.6 and ums["data"]["visible_grayscale"] == 0.5
    assert ums["stage3"]["init_args"]["txt_label_smoothing"] == 0.1
    assert ums["stage2"]["init_args"]["epoch_covers"] == "images"


def test_one_seed_sets_the_batch_order_and_the_prompts_too_unless_they_are_given_their_own(
        synthetic_root, tmp_path, monkeypatch):
    """`--seed_everything S` reaches the P x K sampler (`data.seed`) and Stage II's prompt initialisation and
    sampler (`stage2.seed`); without that, runs "over seeds" would only vary the initialisation."""
    import lightning as L

    from itkm_lightning.cli import ITKMCLI
    from itkm_lightning.fit_config import build_section

    monkeypatch.setattr(sys, "argv", ["itkm"])

    def seeds(run: str, *extra: str) -> tuple[int, int]:
        cli = ITKMCLI(args=["--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
                            "--run_dir", str(tmp_path / run), *extra], run=False)
        return cli.datamodule.seed, build_section(L.LightningModule, "stage2", cli.config.stage2).seed

    assert seeds("a", "--seed_everything", "3") == (3, 3)
    assert seeds("b", "--seed_everything", "3", "--data.seed", "5", "--stage2.seed", "0") == (5, 0)
    assert seeds("c", "--seed_everything", "false") == (0, 0)


def test_seed_everything_false_leaves_the_stages_unseeded_where_a_number_reseeds_each_one(
        synthetic_root, tmp_path, monkeypatch):
    """Lightning reads `seed_everything: false` as "do not seed". The pipeline re-seeds before every stage; it must
    not read false as seed 0 (`False` is an int in Python)."""
    import itkm_lightning.pipeline as pipeline_module
    from itkm_lightning.cli import ITKMCLI

    monkeypatch.setattr(sys, "argv", ["itkm"])
    seen = []

    class RecordingPipeline(pipeline_module.Pipeline):
        def run(self, only=None, ckpt_path=None) -> bool:
            seen.append(self.seed)
            return False  # nothing trained: the test is about what the stages would be seeded with

    monkeypatch.setattr(pipeline_module, "Pipeline", RecordingPipeline)
    for run, seed in (("a", "3"), ("b", "false")):
        ITKMCLI(args=["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
                      "--run_dir", str(tmp_path / run), "--seed_everything", seed])
    assert seen == [3, None]
