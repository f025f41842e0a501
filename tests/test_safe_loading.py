"""No file runs code when loaded: a pickle payload in a checkpoint or hand-over is refused by every command that
reads one, and a config's ``class_path`` can only name a dataset source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the marker file is the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_file(path: Path, marker: Path) -> Path:
    """A file shaped like a training checkpoint *and* a hand-over, carrying the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "loops": {}, "optimizer_states": [],
                "stage": "stage1", "encoder": {}, "labels": torch.zeros(2), "text_features": torch.zeros(2, 2),
                "cluster_scenario": torch.zeros(2), "payload": RunsCode(marker)}, path)
    return path


def test_the_payload_runs_when_loaded_unsafely(tmp_path):
    """Control: the file used below really executes code under weights_only=False (so the tests can fail)."""
    marker = tmp_path / "ran"
    torch.load(payload_file(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def smoke(root: Path, run_dir: Path) -> list[str]:
    return ["--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(root), "--run_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false"]


def refuse(args: list[str], marker: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "was refused" in err and "open" in err and "nothing was run" in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    return err


def test_fit_resume_refuses_a_checkpoint_holding_code(tmp_path, synthetic_root, capsys):
    marker, run_dir = tmp_path / "ran", tmp_path / "run"
    payload_file(run_dir / "stage1" / "checkpoints" / "epoch=000.ckpt", marker)
    refuse(["fit", *smoke(synthetic_root, run_dir), "--resume_anyway"], marker, capsys)


def test_fit_refuses_a_hand_over_holding_code(tmp_path, synthetic_root, capsys):
    marker, run_dir = tmp_path / "ran", tmp_path / "run"
    payload_file(run_dir / "stage1" / "handoff.pt", marker)  # stage1 "finished": stage2 reads its hand-over
    err = refuse(["fit", *smoke(synthetic_root, run_dir), "--resume_anyway"], marker, capsys)
    assert "hand-over" in err


def test_ckpt_path_holding_code_is_refused(tmp_path, synthetic_root, capsys):
    marker = tmp_path / "ran"
    evil = payload_file(tmp_path / "evil.ckpt", marker)
    refuse(["fit", *smoke(synthetic_root, tmp_path / "run"), "--stage", "stage1", "--ckpt_path", str(evil)], marker,
           capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["evil.ckpt", "stage1/handoff.pt"])
@pytest.mark.parametrize("command", ["embed", "search", "export", "evaluate"])
def test_model_tools_refuse_a_model_file_holding_code(command, name, tmp_path, synthetic_root, capsys):
    marker = tmp_path / "ran"
    evil = payload_file(tmp_path / "run" / name, marker)
    images = str(synthetic_root / "synthetic" / "tiny" / "cr" / "query")
    args = {
        "embed": ["embed", images, "--scenario", "cr", "--model", str(evil), "--out", str(tmp_path / "emb")],
        "search": ["search", images, "--gallery", images, "--scenario", "cr", "--model", str(evil)],
        "export": ["export", str(evil), "--out", str(tmp_path / "encoder.pt")],
        "evaluate": ["evaluate", "--model", str(evil), "--config", str(REPO / "conf/smoke.yaml"), "--data.root",
                     str(synthetic_root), "--out", str(tmp_path / "emb")],
    }[command]
    refuse(args, marker, capsys)
    assert not (tmp_path / "emb").exists() and not (tmp_path / "encoder.pt").exists()


def test_report_refuses_a_hand_over_holding_code(tmp_path, capsys):
    marker, run_dir = tmp_path / "ran", tmp_path / "run"
    payload_file(run_dir / "stage2" / "handoff.pt", marker)
    (run_dir / "results.json").write_text("{}\n")
    refuse(["report", str(run_dir), "--figures"], marker, capsys)


def test_our_own_checkpoints_load_with_weights_only(tmp_path, tiny_backbone):
    """A stage built outside LightningCLI pickles its pydantic configs in the hyper-parameters: allow-listed."""
    from itkm_lightning import safe_load
    from itkm_lightning.config import ClusteringConfig
    from itkm_lightning.stages.stage1 import Stage1

    stage = Stage1(backbone=tiny_backbone, clustering=ClusteringConfig(eps=0.4))
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams)}, tmp_path / "own.ckpt")
    loaded = safe_load.load(tmp_path / "own.ckpt")
    assert loaded["hyper_parameters"]["clustering"] == ClusteringConfig(eps=0.4)
    assert loaded["hyper_parameters"]["backbone"] == tiny_backbone


def test_embed_config_class_path_must_be_a_dataset_source(tmp_path, capsys):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text("data:\n  sources:\n    - class_path: subprocess.run\n"
                      f"      init_args: {{args: [touch, {marker}]}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(config), "--model", str(tmp_path),
              "--out", str(tmp_path / "emb")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "data.sources" in err and "subprocess.run" in err and "DatasetSource" in err
    assert not marker.exists() and not (tmp_path / "emb").exists()


def test_source_class_refuses_anything_but_a_dataset_source():
    from itkm_lightning.data.names import source_class
    from itkm_lightning.data.sources import SyntheticBenchmark

    assert source_class("itkm_lightning.data.SyntheticBenchmark") is SyntheticBenchmark
    with pytest.raises(ValueError, match="not a dataset source"):
        source_class("subprocess.run")
    with pytest.raises(ValueError, match="cannot be imported"):
        source_class("itkm_lightning.data.SynteticBenchmark")


def test_a_file_from_before_the_reorganisation_names_the_fix(tmp_path, monkeypatch):
    """A hand-over pickling a project class under a module path that no longer exists (``models.clip``, split in
    issue 16) is refused with the fix (a new run directory), not called foreign code; nothing is loaded."""
    import sys
    import types

    from itkm_lightning import safe_load

    class Old:  # pickled under the old dotted path, which exists only while the file is written
        pass

    Old.__module__, Old.__qualname__ = "itkm_lightning.models.clip", "BackboneConfig"
    path = tmp_path / "handoff.pt"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "itkm_lightning.models.clip", types.SimpleNamespace(BackboneConfig=Old))
        torch.save({"backbone": Old()}, path)
    with pytest.raises(safe_load.UnsafeFileError,
                       match=r"older itkm-lightning \(itkm_lightning\.models\.clip\.BackboneConfig no longer exists\)"
                             r".*new --run_dir"):
        safe_load.load(path, what="hand-over")


def test_a_refused_project_name_is_looked_up_without_importing_it(tmp_path, monkeypatch):
    """Telling an old project class from foreign code must not import the module the file names:
    ``itkm_lightning.__main__`` would run the CLI."""
    import sys
    import types

    from itkm_lightning import safe_load

    class Named:
        pass

    Named.__module__, Named.__qualname__ = "itkm_lightning.__main__", "Anything"
    path = tmp_path / "handoff.pt"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "itkm_lightning.__main__", types.SimpleNamespace(Anything=Named))
        torch.save({"x": Named()}, path)
    monkeypatch.delitem(sys.modules, "itkm_lightning.__main__", raising=False)
    with pytest.raises(safe_load.UnsafeFileError, match="was refused: it contains itkm_lightning.__main__.Anything"):
        safe_load.load(path, what="hand-over")
    assert "itkm_lightning.__main__" not in sys.modules  # looked up on disk, not imported (that would run main())

