"""scripts/ablations.py: an ablation run starts from the full run's finished stages only, and the tables read
what the runs wrote (no training here: run directories are written by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablations():
    spec = importlib.util.spec_from_file_location("ablations_script", REPO / "scripts" / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(vi: float, cr: float, cc: float) -> dict:
    return {f"synthetic_{sc}": {"mAP": v, "R1": v} for sc, v in zip(("vi", "cr", "cc"), (vi, cr, cc))}


def full_run(path: Path) -> Path:
    for stage in ("stage1", "stage2", "stage3", "supervised"):
        (path / stage / "checkpoints").mkdir(parents=True)
        (path / stage / "handoff.pt").write_bytes(b"h")
        (path / stage / "checkpoints" / "last.ckpt").write_bytes(b"c")
    (path / "run.json").write_text("{}")
    results = {"raw_pixels": entry(.07, .28, .02), "untrained": entry(.2, .3, .06), "stage1": entry(.25, .65, .12),
               "stage2_text": {"top1": 0.6}, "stage3": entry(.35, .8, .15), "supervised": entry(.37, .8, .16)}
    (path / "results.json").write_text(json.dumps(results))
    return path


def test_an_ablation_starts_from_the_stages_it_does_not_change(ablations, tmp_path):
    full = full_run(tmp_path / "seed0" / "full")
    for variant in ("no_chm", "no_separation"):
        target = ablations.run_dir(tmp_path, 0, variant)
        ablations.start_from_full(full, target, ablations.REUSES[variant])
        reused = set(ablations.REUSES[variant])
        for stage in ("stage1", "stage2", "stage3", "supervised"):
            assert (target / stage / "handoff.pt").is_file() is (stage in reused), (variant, stage)
        assert not list(target.rglob("*.ckpt"))  # hand-overs only: the optimiser state is not carried over
        rows = set(json.loads((target / "results.json").read_text()))
        expected = {"raw_pixels", "untrained", "stage1"} | ({"stage2_text"} if "stage2" in reused else set())
        assert rows == expected  # Stage II writes no metrics row, only its text statistics
        assert (target / "run.json").is_file()  # --resume_anyway then records that it continued this run


def test_tables_read_the_runs(ablations, tmp_path, capsys):
    for seed in (0, 1):
        full_run(tmp_path / f"seed{seed}" / "full")
    ablations.table(tmp_path, [0, 1], ["full"])
    ablations.targets(tmp_path, [0, 1])
    out = capsys.readouterr().out
    assert "| full | stage3 | 35.0 ± 0.0 | 80.0 ± 0.0 | 15.0 ± 0.0 | 43.3 ± 0.0 | 43.3 / 43.3 |" in out
    # Stage III closed (43.3 - 18.7) / (44.3 - 18.7) of the mean distance; Stage I gained 15.3 on the mean
    assert "| 0 | 37.0 / 80.0 / 16.0 |" in out and "| +15.3 |" in out and "| 96% / 88% / 100% / 90% |" in out
