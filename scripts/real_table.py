"""The real-photo demo's evidence table from finished run directories (docs/real_photos.md).

    python scripts/real_table.py runs/real_seed0 runs/real_seed1 runs/real_seed2

Per run: LR->HR mAP / R1 of raw pixels, untrained, Stage I and Stage III (results.json); pseudo-label ARI/NMI
per group at every re-clustering (Stage I and III metrics.csv, `pseudo/<block>/*`); CHM and IHM precision
(Stage III metrics.csv, `match/cr/*`); wall time (timings.json).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

BENCH = "mlr_cuhk03"
ROWS = ("raw_pixels", "untrained", "stage1", "stage3")


def metric_rows(path: Path, prefix: str) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = []
        for row in csv.DictReader(handle):
            kept = {k: float(v) for k, v in row.items() if k.startswith(prefix) and v not in ("", None)}
            if kept:
                rows.append(kept)
        return rows


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main(run_dirs: list[str]) -> None:
    print("| run | " + " | ".join(ROWS) + " | Stage I - untrained | pipeline time |")
    print("|---|" + "---|" * (len(ROWS) + 2))
    for run in map(Path, run_dirs):
        results = json.loads((run / "results.json").read_text())
        cells = [f"{pct(results[r][BENCH]['mAP'])} / {pct(results[r][BENCH]['R1'])}" if r in results else "-"
                 for r in ROWS]
        gain = (pct(results["stage1"][BENCH]["mAP"] - results["untrained"][BENCH]["mAP"])
                if {"stage1", "untrained"} <= set(results) else "-")
        timings = json.loads((run / "timings.json").read_text()) if (run / "timings.json").is_file() else {}
        total = timings.get("total_s") or sum(v for v in timings.values() if isinstance(v, (int, float)))
        print(f"| {run.name} | " + " | ".join(cells) + f" | {gain} | {total / 60:.1f} min |")
    for run in map(Path, run_dirs):
        print(f"\n{run.name}: pseudo-label ARI / NMI per re-clustering (g0 = high-res, g1 = low-res)")
        for stage in ("stage1", "stage3"):
            quality = metric_rows(run / stage / "logs" / "metrics.csv", "pseudo/")
            line = "; ".join(
                f"g0 {q.get('pseudo/cr-g0/ari', float('nan')):.2f}/{q.get('pseudo/cr-g0/nmi', float('nan')):.2f} "
                f"g1 {q.get('pseudo/cr-g1/ari', float('nan')):.2f}/{q.get('pseudo/cr-g1/nmi', float('nan')):.2f}"
                for q in quality)
            print(f"  {stage}: {line}")
        matching = metric_rows(run / "stage3" / "logs" / "metrics.csv", "match/cr/")
        line = "; ".join(f"CHM {m.get('match/cr/chm_precision', float('nan')):.2f} "
                         f"({m.get('match/cr/chm_pairs', float('nan')):.0f} pairs), "
                         f"IHM {m.get('match/cr/ihm_precision', float('nan')):.2f} "
                         f"(size {m.get('match/cr/ihm_size', float('nan')):.1f})" for m in matching)
        print(f"  stage3 matching per re-clustering: {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
