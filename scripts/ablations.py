"""The demo's ablation table over several seeds (docs/ablations.md).

    python scripts/ablations.py run --seeds 0 1 2          # trains what is missing under runs/ablations/
    python scripts/ablations.py table --seeds 0 1 2        # the markdown tables, read from those runs

For every seed, ``full`` is the whole demo (``itkm fit --config conf/demo.yaml --seed_everything S``, the
supervised reference included). Each ablation starts from a copy of the stages it does not change (the full
run's Stage I, and Stage II where only Stage III changes; nothing for the two that change the image tower,
which retrain Stages I-III and measure their own ``untrained`` row) and trains the rest with its overlay from
``conf/ablations/``: ``itkm fit`` skips stages whose hand-over exists, and ``--resume_anyway`` records in the
run's ``run.json`` that it continued the full run with other settings. The benchmark (``data.sources``) is
the demo's, seed 0, in every run; the seed changes training only: initialisation, batch order, augmentation
and Stage II's prompts (``data.seed`` and ``stage2.seed`` follow ``--seed_everything``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("vi", "cr", "cc")
# ablation -> the full run's stages it reuses (it changes only the stages after them)
REUSES = {"no_chm": ("stage1", "stage2"), "no_ihm": ("stage1", "stage2"), "no_dru": ("stage1", "stage2"),
          "no_text": ("stage1", "stage2"), "no_separation": ("stage1",),
          # these change the image tower, so Stages I-III retrain and `untrained` is measured again
          "no_scenario_embedding": (), "no_dual_branch": ()}
VARIANTS = ("full", *REUSES)


def run_dir(root: Path, seed: int, variant: str) -> Path:
    return root / f"seed{seed}" / variant


def itkm(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "itkm"), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def start_from_full(full: Path, target: Path, stages: tuple[str, ...]) -> None:
    """A new run directory holding the full run's finished ``stages`` (hand-overs and logs, no checkpoints) and
    the results rows they and the shared baselines wrote."""
    target.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shutil.copytree(full / stage, target / stage, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    results = json.loads((full / "results.json").read_text())
    shared = ("raw_pixels", "untrained") if stages else ("raw_pixels",)
    kept = {k: v for k, v in results.items() if k in (*shared, *stages) or
            any(k.startswith(f"{s}_") for s in stages)}
    (target / "results.json").write_text(json.dumps(kept, indent=2) + "\n")
    shutil.copy2(full / "run.json", target / "run.json")


def run(root: Path, seeds: list[int], variants: list[str]) -> None:
    for seed in seeds:
        full = run_dir(root, seed, "full")
        if "stage3" not in _results(full):
            itkm("fit", "--config", "conf/demo.yaml", "--seed_everything", str(seed), "--run_dir", str(full))
        for variant in variants:
            target = run_dir(root, seed, variant)
            if variant == "full" or "stage3" in _results(target):
                continue
            if not (target / "run.json").is_file():
                start_from_full(full, target, REUSES[variant])
            itkm("fit", "--config", "conf/demo.yaml", "--config", f"conf/ablations/{variant}.yaml",
                 "--seed_everything", str(seed), "--supervised.enabled", "false", "--run_dir", str(target),
                 "--resume_anyway")


def _results(path: Path) -> dict:
    file = path / "results.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def last_matching(path: Path) -> dict[str, float]:
    """The ``match/*`` values of Stage III's last re-clustering (its metrics.csv)."""
    file = path / "stage3" / "logs" / "metrics.csv"
    last: dict[str, float] = {}
    if file.is_file():
        with file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                values = {k: float(v) for k, v in row.items() if k.startswith("match/") and v not in ("", None)}
                if values:
                    last = values
    return last


def mean_spread(values: list[float]) -> str:
    """Mean and, over several seeds, the half range (max - min) / 2, in %."""
    values = [100 * v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {(max(values) - min(values)) / 2:.1f}"


def mAP(results: dict, row: str, scenario: str) -> float:
    return results.get(row, {}).get(f"synthetic_{scenario}", {}).get("mAP", float("nan"))


def stage3_gaps(runs: list[dict], full: list[dict], scenarios: tuple[str, ...]) -> str:
    """Per seed, a run's Stage III mAP minus the full method's (averaged over ``scenarios``), in points."""
    gaps = [100 * statistics.fmean(mAP(r, "stage3", sc) - mAP(f, "stage3", sc) for sc in scenarios)
            for r, f in zip(runs, full)]
    return " / ".join(_number(g, "+.1f") for g in gaps)


def table(root: Path, seeds: list[int], variants: list[str]) -> None:
    rows = [("full", "untrained"), ("full", "stage1"), *[(v, "stage3") for v in variants], ("full", "supervised")]
    # a variant that retrains Stage I has its own untrained and Stage I rows
    rows[2:2] = [(v, row) for v in variants if REUSES.get(v) == () for row in ("untrained", "stage1")]
    print(f"mAP in %, mean ± half range over seeds {', '.join(map(str, seeds))}\n")
    print("| run | row | " + " | ".join(SCENARIOS) + " | mean | mean per seed |")
    print("|---|---|" + "---|" * (len(SCENARIOS) + 2))
    for variant, row in rows:
        per_seed = [_results(run_dir(root, s, variant)) for s in seeds]
        if not any(row in r for r in per_seed):
            continue
        cells = [mean_spread([mAP(r, row, sc) for r in per_seed]) for sc in SCENARIOS]
        means = [statistics.fmean(mAP(r, row, sc) for sc in SCENARIOS) for r in per_seed]
        seeds_cell = " / ".join(_number(100 * m, ".1f") for m in means)
        print(f"| {variant} | {row} | " + " | ".join(cells) + f" | {mean_spread(means)} | {seeds_cell} |")
    print("\nEach run's Stage III minus the full method's, mAP points per seed "
          f"({' / '.join(map(str, seeds))})\n")
    print("| run | " + " | ".join(SCENARIOS) + " | mean |")
    print("|---|" + "---|" * (len(SCENARIOS) + 1))
    full = [_results(run_dir(root, s, "full")) for s in seeds]
    for variant in variants[1:]:
        runs = [_results(run_dir(root, s, variant)) for s in seeds]
        if not any("stage3" in r for r in runs):
            continue
        cells = [stage3_gaps(runs, full, (sc,)) for sc in SCENARIOS] + [stage3_gaps(runs, full, SCENARIOS)]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print("\nStage III's last re-clustering (match/*): CHM pairs / precision, IHM set size / precision, "
          "mean over seeds\n")
    print("| run | " + " | ".join(SCENARIOS) + " |")
    print("|---|" + "---|" * len(SCENARIOS))
    for variant in variants:
        matching = [last_matching(run_dir(root, s, variant)) for s in seeds]
        if not any(matching):
            continue
        cells = []
        for sc in SCENARIOS:
            def avg(key: str) -> float:
                values = [m.get(f"match/{sc}/{key}", float("nan")) for m in matching]
                values = [v for v in values if not math.isnan(v)]
                return statistics.fmean(values) if values else float("nan")
            ihm = "-" if math.isnan(avg("ihm_size")) else f"{avg('ihm_size'):.2f} / {avg('ihm_precision'):.2f}"
            cells.append(f"{avg('chm_pairs'):.0f} / {avg('chm_precision'):.2f}, {ihm}")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def targets(root: Path, seeds: list[int]) -> None:
    """Issue 13's targets 2-4, per seed, from the full runs (mAP points; closed = share of the distance from
    ``untrained`` to ``supervised`` that Stage III covered)."""
    print("\nIssue 13's targets per seed (full run; mAP in %)\n")
    print("| seed | supervised vi / cr / cc (target 40 / 75 / 30) | zero-shot > raw pixels, <= 60% of supervised "
          "| Stage I - untrained, mean (>= 2) | Stage III - Stage I, vi / cr / cc (>= 3 on vi, cc; none < -0.5) "
          "| closed, mean / vi / cr / cc (>= 40% / 25%) | CHM precision vi / cr / cc (>= 0.6) |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        path = run_dir(root, seed, "full")
        r = _results(path)
        if not {"untrained", "stage1", "stage3", "raw_pixels"} <= set(r):
            continue
        # a run without the supervised reference (--supervised.enabled false) leaves its columns empty
        get = {row: [100 * mAP(r, row, sc) for sc in SCENARIOS] for row in
               ("raw_pixels", "untrained", "stage1", "stage3", "supervised")}
        mean = {row: statistics.fmean(v) for row, v in get.items()}
        premise = ", ".join(f"{u:.1f} vs {raw:.1f} ({_number(100 * u / sup, '.0f', '%')})" for u, raw, sup in
                            zip(get["untrained"], get["raw_pixels"], get["supervised"]))
        closed = [(mean["stage3"] - mean["untrained"]) / (mean["supervised"] - mean["untrained"])] + [
            (s3 - u) / (sup - u) for s3, u, sup in zip(get["stage3"], get["untrained"], get["supervised"])]
        match = last_matching(path)
        chm = " / ".join(_number(match.get(f"match/{sc}/chm_precision", math.nan), ".2f") for sc in SCENARIOS)
        print(f"| {seed} | " + " / ".join(_number(v, ".1f") for v in get["supervised"]) + f" | {premise} | "
              f"{mean['stage1'] - mean['untrained']:+.1f} | "
              + " / ".join(f"{a - b:+.1f}" for a, b in zip(get["stage3"], get["stage1"])) + " | "
              + " / ".join(_number(100 * c, ".1f", "%") for c in closed) + f" | {chm} |")  # .1f: 24.5% is not 25%


def _number(value: float, spec: str, unit: str = "") -> str:
    """``value`` formatted by ``spec`` and followed by ``unit``, or ``-`` for a missing (NaN) value."""
    return "-" if math.isnan(value) else format(value, spec) + unit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/ablations.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "ablations")
    args = parser.parse_args(argv)
    variants = ["full", *[v for v in args.variants if v != "full"]]
    if args.action == "run":
        run(args.root, args.seeds, variants)
    table(args.root, args.seeds, variants)
    targets(args.root, args.seeds)


if __name__ == "__main__":
    main()
