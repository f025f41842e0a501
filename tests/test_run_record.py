"""A run directory belongs to one run: ``run.json`` records what shaped its results, and a command with other
settings stops before any work, naming what differs (``--resume_anyway`` / ``--overwrite`` say what to do)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itkm_lightning.command import main
from itkm_lightning.pipeline import Pipeline
from itkm_lightning.run_record import RECORD_FILE, backbone_files, check_run_dir, run_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def runs(monkeypatch):
    """``itkm fit`` up to the training: the calls of Pipeline.run are recorded instead of training."""
    calls = []

    def run(self, only=None, ckpt_path=None):
        calls.append(self.run_dir)
        return False

    monkeypatch.setattr(Pipeline, "run", run)
    return calls


def fit(run_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--run_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false", *extra]


def test_default_run_dir_is_named_after_every_config(tmp_path, monkeypatch, runs):
    """Two commands that differ in an earlier --config no longer share runs/<last config>."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(REPO / "conf/ablations/no_chm.yaml")])
    assert runs == [Path("runs/smoke+no_chm")]
    assert (tmp_path / "runs" / "smoke+no_chm" / RECORD_FILE).is_file()


def test_the_same_command_resumes_and_cosmetic_changes_do_not_count(tmp_path, runs):
    run_dir = tmp_path / "run"
    main(fit(run_dir))
    record = (run_dir / RECORD_FILE).read_text()
    main(fit(run_dir))
    main(fit(run_dir, "--stage", "stage1", "--trainer.log_every_n_steps", "7", "--wandb.mode", "offline"))
    assert len(runs) == 3 and (run_dir / RECORD_FILE).read_text() == record


def test_other_settings_stop_before_any_work_and_name_the_keys(tmp_path, runs, capsys):
    run_dir = tmp_path / "run"
    main(fit(run_dir))
    (run_dir / "stage1").mkdir()  # what the first run trained
    record = (run_dir / RECORD_FILE).read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(fit(run_dir, "--model.clustering.eps", "0.6", "--config", str(REPO / "conf/ablations/no_chm.yaml")))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    first = err.strip().splitlines()[0]
    assert first.startswith(f"itkm: error: run directory {run_dir} holds another run:")
    assert "model.clustering.eps: 0.7 -> 0.6" in first and "stage3.init_args.chm: true -> false" in first
    assert "--run_dir" in first and "--resume_anyway" in first and "--overwrite" in first
    assert len(runs) == 1 and (run_dir / RECORD_FILE).read_text() == record


def test_resume_anyway_keeps_the_run_and_records_the_change(tmp_path, runs):
    run_dir = tmp_path / "run"
    main(fit(run_dir))
    (run_dir / "stage1").mkdir()
    main(fit(run_dir, "--model.clustering.eps", "0.6", "--resume_anyway"))
    record = json.loads((run_dir / RECORD_FILE).read_text())
    assert record["settings"]["model.clustering.eps"] == 0.6
    assert [old["settings"]["model.clustering.eps"] for old in record["previous"]] == [0.7]
    assert (run_dir / "stage1").is_dir() and len(runs) == 2
    main(fit(run_dir, "--model.clustering.eps", "0.6"))  # the adopted settings are now this run's
    assert len(runs) == 3


def test_overwrite_deletes_another_run_but_resumes_the_same_one(tmp_path, runs):
    run_dir = tmp_path / "run"
    main(fit(run_dir))
    (run_dir / "stage1").mkdir()
    main(fit(run_dir, "--overwrite"))  # same settings: a requeued job with --overwrite keeps its progress
    assert (run_dir / "stage1").is_dir()
    main(fit(run_dir, "--model.clustering.eps", "0.6", "--overwrite"))
    assert not (run_dir / "stage1").exists()
    assert json.loads((run_dir / RECORD_FILE).read_text())["settings"]["model.clustering.eps"] == 0.6


def test_a_run_without_a_record_and_a_folder_that_is_no_run(tmp_path, runs, capsys):
    legacy = tmp_path / "legacy"
    (legacy / "stage1").mkdir(parents=True)  # made before run.json existed
    with pytest.raises(SystemExit):
        main(fit(legacy))
    assert f"run directory {legacy} holds a run without a readable run.json" in capsys.readouterr().err
    other = tmp_path / "papers"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(SystemExit):
        main(fit(other, "--overwrite"))
    assert "is not a run directory" in capsys.readouterr().err and (other / "thesis.tex").exists()
    with pytest.raises(SystemExit):
        main(fit(legacy, "--overwrite", "--resume_anyway"))
    assert "exclude each other" in capsys.readouterr().err
    assert runs == []


def test_settings_cover_new_keys_data_roots_backbone_files_and_code(tmp_path, monkeypatch):
    config = {"model": {"backbone": {"name_or_path": str(tmp_path / "clip"), "pretrained": True}},
              "data": {"root": "data"}, "future_section": {"knob": 3}, "trainer": {"enable_progress_bar": False}}
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "model.safetensors").write_bytes(b"weights-1")
    monkeypatch.chdir(tmp_path)
    settings = run_settings(config)
    assert settings["future_section.knob"] == 3  # keys added later are covered without a list of them
    assert "trainer.enable_progress_bar" not in settings
    assert settings["data.root"] == str(tmp_path / "data")
    assert settings["backbone_files"] == backbone_files(str(tmp_path / "clip")) and settings["code_version"]
    check_run_dir(tmp_path / "run", settings).commit("itkm fit ...")
    (tmp_path / "run" / "stage1").mkdir()
    (tmp_path / "clip" / "model.safetensors").write_bytes(b"weights-2")  # same path, other backbone
    with pytest.raises(ValueError, match="holds another run: backbone_files"):
        check_run_dir(tmp_path / "run", run_settings(config))


def test_a_drawn_seed_does_not_make_the_same_command_another_run(tmp_path, runs):
    """`seed_everything: true` draws a new seed every time; the run's settings keep `true`."""
    run_dir = tmp_path / "run"
    main(fit(run_dir, "--seed_everything", "true"))
    main(fit(run_dir, "--seed_everything", "true"))
    assert len(runs) == 2
    assert json.loads((run_dir / RECORD_FILE).read_text())["settings"]["seed_everything"] is True
