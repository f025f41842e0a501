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
    assert "| 0 | 37.0 / 80.0 / 16.0 |" in out and "| +15.3 |" in out and "| 96.1% / 88.2% / 100.0% / 90.0% |" in out


def test_a_frontend_ablation_retrains_every_stage_and_measures_its_own_untrained_row(ablations, tmp_path):
    full = full_run(tmp_path / "seed0" / "full")
    for variant in ("no_scenario_embedding", "no_dual_branch"):
        target = ablations.run_dir(tmp_path, 0, variant)
        ablations.start_from_full(full, target, ablations.REUSES[variant])
        assert not any((target / stage).exists() for stage in ("stage1", "stage2", "stage3", "supervised"))
        # raw pixels do not depend on the model; `untrained` does (another tower), so the run measures it
        assert set(json.loads((target / "results.json").read_text())) == {"raw_pixels"}


def test_the_table_shows_each_ablation_against_the_full_method_per_seed(ablations, tmp_path, capsys):
    for seed, cc in ((0, .10), (1, .17)):
        full_run(tmp_path / f"seed{seed}" / "full")
        variant = full_run(tmp_path / f"seed{seed}" / "no_dual_branch")
        results = json.loads((variant / "results.json").read_text())
        results["untrained"] = entry(.21, .3, .06)
        results["stage3"] = entry(.34, .8, cc)
        (variant / "results.json").write_text(json.dumps(results))
    ablations.table(tmp_path, [0, 1], ["full", "no_dual_branch"])
    out = capsys.readouterr().out
    assert "| no_dual_branch | untrained | 21.0 ± 0.0 |" in out  # its own tower's start, next to the full one's
    # vi 34 - 35, cr 0, cc 10 - 15 (seed 0) and 17 - 15 (seed 1); the mean of the three per seed
    assert "| no_dual_branch | -1.0 / -1.0 | +0.0 / +0.0 | -5.0 / +2.0 | -2.0 / +0.3 |" in out


def test_a_run_without_the_supervised_reference_still_shows_its_gains(ablations, tmp_path, capsys):
    full = full_run(tmp_path / "seed3" / "full")  # as `itkm fit ... --supervised.enabled false` leaves it
    results = json.loads((full / "results.json").read_text())
    del results["supervised"]
    (full / "results.json").write_text(json.dumps(results))
    ablations.targets(tmp_path, [3])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| 3 | - / - / - | 20.0 vs 7.0 (-), ")
    assert "| +15.3 | +10.0 / +15.0 / +3.0 | - / - / - / - |" in row  # Stage I and III gains need no reference
