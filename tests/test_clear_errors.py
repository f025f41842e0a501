"""Every failure a new user meets is one line naming the file and the fix, exit code 2, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]


def one_line_error(args: list[str], capsys) -> str:
    """Run ``itkm ARGS``; it must exit 2 with no traceback. Returns the first stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[0]


def smoke(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "conf/smoke.yaml"), "--run_dir", str(tmp_path / "run"), *extra]


@pytest.fixture()
def trained(tmp_path, tiny_backbone):
    """A Stage I checkpoint and hand-over of a tiny model."""
    from itkm_lightning.handoffs import save_handoff
    from itkm_lightning.stages.stage1 import Stage1

    stage = Stage1(backbone=tiny_backbone)
    ckpt = tmp_path / "model" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams), "epoch": 0,
                "global_step": 0, "loops": {}, "optimizer_states": [], "pytorch-lightning_version": "2.6"}, ckpt)
    handoff = tmp_path / "model" / "stage1" / "handoff.pt"
    save_handoff(handoff, {"stage": "stage1", "encoder": stage.encoder_state(), "backbone": tiny_backbone.model_dump()})
    return ckpt, handoff


# ------------------------------------------------------------------ checkpoints and subcommands
def test_fit_ckpt_path_to_a_junk_file(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("junk\n")
    line = one_line_error(["fit", *smoke(tmp_path, "--stage", "stage1", "--ckpt_path", str(junk))], capsys)
    assert line == f"itkm: error: checkpoint {junk} cannot be read (not a PyTorch file: truncated, empty or another format)"
    assert not (tmp_path / "run").exists()


def test_only_fit_and_the_tools_are_offered(capsys):
    # validate/test could only run Stage I's module; `itkm evaluate` scores any model (tests/test_evaluate_cli.py).
    line = one_line_error(["predict", "--config", str(REPO / "conf/smoke.yaml")], capsys)
    assert "invalid choice: 'predict'" in line
    help_text = subprocess.run([sys.executable, "-m", "itkm_lightning", "--help"], capture_output=True, text=True,
                               env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}).stdout
    usage = help_text.splitlines()[0]
    commands = set(usage[usage.index("{") + 1:usage.index("}")].split(","))
    assert commands == {"fit", "evaluate", "embed", "search", "export", "report", "prepare", "pretrain"}
    from itkm_lightning.command import TOOLS

    assert commands == {"fit", *TOOLS}  # the help lists what runs


# ------------------------------------------------------------------ config files
@pytest.mark.parametrize("text, expected", [
    ("model:\n  temperature: [0.1\n", "line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ("model:\n\ttemperature: 0.1\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ("- model\n- data\n", "holds a YAML list, not a mapping of settings"),
    ("", "is empty; put settings in it"),
    ("# only a comment\n", "is empty; put settings in it"),
])
def test_config_file_that_is_not_a_yaml_mapping(text, expected, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    for command in (["fit", "--config", str(config)], ["embed", "--config", str(config), "--model", "m", "--out", "o"]):
        line = one_line_error([*command, "--run_dir", str(tmp_path / "run")] if command[0] == "fit" else command,
                              capsys)
        assert f"config {config}" in line and expected in line, line
    assert not (tmp_path / "run").exists()


def test_data_root_expands_home_and_variables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATASETS", str(tmp_path / "scratch"))
    for root, expected in (("~/datasets", tmp_path / "home" / "datasets"), ("$DATASETS", tmp_path / "scratch")):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(REPO / "conf/sysu.yaml"), "--data.root", root,
                  "--run_dir", str(tmp_path / "run")])
        assert f"expected {expected / 'SYSU-MM01'} but it does not exist" in capsys.readouterr().err


def test_every_missing_dataset_is_reported_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "conf/ums.yaml"), "--data.root", str(tmp_path / "empty"),
              "--run_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert err.startswith("itkm: error: 3 configured datasets are not usable:")
    for name in ("SYSU-MM01", "LTCC_ReID", "MLR-CUHK03"):
        assert f"{tmp_path / 'empty' / name} but it does not exist" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ export
def test_export_takes_its_format_from_the_suffix_or_refuses_a_mismatch(tmp_path, trained, capsys):
    from itkm_lightning.tools.export import output_format

    assert [output_format(Path(f"e{s}"), None) for s in (".pt", ".pt2", ".onnx")] == ["torchscript", "program", "onnx"]
    ckpt, _ = trained
    line = one_line_error(["export", str(ckpt), "--out", str(tmp_path / "e.onnx"), "--format", "torchscript"], capsys)
    assert "does not end in .pt, the suffix of --format torchscript" in line
    line = one_line_error(["export", str(ckpt), "--out", str(tmp_path / "e.bin")], capsys)
    assert "cannot tell the format from .bin" in line
    assert list(tmp_path.glob("e.*")) == []


def _crashing_check(encoder, path):
    raise ValueError(f"cannot load {path} back")  # e.g. a program that torch.export.load rejects


def test_export_that_fails_its_parity_check_leaves_no_file(tmp_path, trained, capsys, monkeypatch):
    from itkm_lightning.tools import export

    monkeypatch.setattr(export, "parity", lambda encoder, path: 1.0)
    ckpt, _ = trained
    line = one_line_error(["export", str(ckpt), "--out", str(tmp_path / "out" / "e.pt2")], capsys)
    assert "differs from the checkpoint by 1.00e+00" in line
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor a temporary one


def test_export_whose_check_crashes_keeps_the_traceback_and_leaves_no_file(tmp_path, trained, monkeypatch):
    # torch failing to load its own export is not a user error: the traceback shows where, and still no file is left.
    from itkm_lightning.tools import export

    monkeypatch.setattr(export, "parity", _crashing_check)
    ckpt, _ = trained
    with pytest.raises(ValueError, match="cannot load"):
        main(["export", str(ckpt), "--out", str(tmp_path / "out" / "e.pt2")])
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ search
def embedding_folder(tmp_path: Path, name: str = "gallery") -> Path:
    from itkm_lightning.data.schema import Sample
    from itkm_lightning.tools.embedding_files import save_embeddings

    samples = [Sample(path=f"/img/{i}.jpg", pid=-1, camid=-1, scenario="vi", group=0, source="t") for i in range(6)]
    features = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    return save_embeddings(tmp_path / name, features, samples)


def test_search_with_a_mistyped_gallery_says_it_does_not_exist(tmp_path, capsys):
    queries = embedding_folder(tmp_path, "queries")
    line = one_line_error(["search", str(queries), "--gallery", str(tmp_path / "galery")], capsys)
    assert line.startswith(f"itkm search: error: gallery {tmp_path / 'galery'} does not exist")


def test_search_with_truncated_features_names_the_file(tmp_path, capsys):
    gallery = embedding_folder(tmp_path)
    data = (gallery / "features.npy").read_bytes()
    (gallery / "features.npy").write_bytes(data[: len(data) // 2])
    line = one_line_error(["search", str(gallery), "--gallery", str(gallery)], capsys)
    assert f"{gallery / 'features.npy'} cannot be read" in line and "embed the folder again" in line


def test_search_rebuilds_a_corrupt_faiss_index(tmp_path, capsys):
    pytest.importorskip("faiss")
    gallery = embedding_folder(tmp_path)
    main(["search", str(gallery), "--gallery", str(gallery), "--format", "json", "--topk", "1"])
    expected = capsys.readouterr().out
    (gallery / "faiss.index").write_bytes(b"not an index")
    with pytest.warns(UserWarning, match="faiss.index cannot be read .*rebuilding it"):
        main(["search", str(gallery), "--gallery", str(gallery), "--format", "json", "--topk", "1"])
    assert capsys.readouterr().out == expected
    import faiss

    assert faiss.read_index(str(gallery / "faiss.index")).ntotal == 6  # rebuilt and saved again


# ------------------------------------------------------------------ embed --config
@pytest.mark.parametrize("source, expected", [
    ("{class_path: itkm_lightning.data.SynteticBenchmark}",
     "itkm: error: data.sources: Problem with given class_path 'itkm_lightning.data.SynteticBenchmark': module "
     "'itkm_lightning.data' has no attribute 'SynteticBenchmark'"),
    ("{class_path: itkm_lightning.data.SyntheticBenchmark, init_args: {presett: tiny}}",
     "itkm: error: Option 'presett' is not accepted: no class_path in the config takes an argument 'presett'"),
])
def test_embed_config_with_a_misspelled_source(source, expected, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(f"data:\n  sources:\n    - {source}\n")
    line = one_line_error(["embed", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(config),
                           "--model", str(tmp_path), "--out", str(tmp_path / "emb")], capsys)
    assert line.startswith(expected), line
    assert not (tmp_path / "emb").exists()


def test_embed_config_takes_the_overrides_of_fit(tmp_path, trained, synthetic_root):
    from itkm_lightning.tools.embedding_files import load_embeddings

    ckpt, _ = trained
    main(["embed", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
          "--model", str(ckpt), "--out", str(tmp_path / "emb"), "--split", "query", "--benchmark", "synthetic_cr"])
    features, rows = load_embeddings(tmp_path / "emb")
    assert len(rows) == len(features) > 0
    assert all(row["path"].startswith(str(synthetic_root)) and row["scenario"] == "cr" for row in rows)


def test_weights_only_false_is_refused(tmp_path, capsys):
    line = one_line_error(["fit", *smoke(tmp_path, "--weights_only", "false")], capsys)
    assert "--weights_only false is not supported" in line
    assert not (tmp_path / "run").exists()


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(capsys, monkeypatch):
    from itkm_lightning.errors import ConfigError

    def tool(error):
        def run(argv):
            raise error
        return run

    monkeypatch.setattr("itkm_lightning.tools.report.main", tool(ConfigError("--x 3: must be even; pass --x 4")))
    assert one_line_error(["report"], capsys) == "itkm report: error: --x 3: must be even; pass --x 4"
    monkeypatch.setattr("itkm_lightning.tools.report.main", tool(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        main(["report"])


def _raising(error: BaseException):
    def run(*args, **kwargs):
        raise error
    return run


def test_search_reports_its_own_errors_in_one_line_and_a_plain_value_error_with_its_traceback(tmp_path, capsys,
                                                                                              monkeypatch):
    # A bare ValueError is no longer taken for a user error: only the project's classes (ITKMError) are one line.
    gallery = embedding_folder(tmp_path)
    line = one_line_error(["search", str(gallery), "--gallery", str(gallery), "--topk", "0"], capsys)
    assert line == "itkm search: error: --topk must be >= 1, got 0"
    monkeypatch.setattr("itkm_lightning.tools.search.search_results", _raising(ValueError("a bug in search")))
    with pytest.raises(ValueError, match="a bug in search"):
        main(["search", str(gallery), "--gallery", str(gallery)])


def test_fit_reports_a_config_error_in_one_line_and_a_plain_value_error_with_its_traceback(tmp_path, capsys,
                                                                                           monkeypatch):
    from itkm_lightning.errors import ConfigError

    monkeypatch.setattr("itkm_lightning.run_record.check_run_dir", _raising(ConfigError("--x: cannot work; fix it")))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke(tmp_path)])
    err = capsys.readouterr().err  # Lightning may log "Seed set to 0" first
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert "itkm: error: --x: cannot work; fix it" in err.splitlines(), err
    monkeypatch.setattr("itkm_lightning.run_record.check_run_dir", _raising(ValueError("a bug in fit")))
    with pytest.raises(ValueError, match="a bug in fit"):
        main(["fit", *smoke(tmp_path)])
    assert not (tmp_path / "run").exists()
