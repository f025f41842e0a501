"""``<run_dir>/results.json``: every stage's numbers per benchmark, written atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from itkm_lightning.errors import DataFormatError
from itkm_lightning.fileio import atomic_write_text

# ``supervised``: the supervised reference (ground-truth identities), the upper bound the others are read against.
STAGE_ORDER = ("raw_pixels", "untrained", "stage1", "stage2", "stage2_text", "stage3", "supervised")
METRICS = ("mAP", "R1", "R5", "R10", "mINP")
SPREAD = ("mAP_std", "R1_std")
"""Standard deviation over the trials (or draws) of a multi-trial protocol, beside the means."""
LABELS = ("trials", "protocol", "rerank")
"""What a benchmark entry may also say about how it was scored: number of trials or draws, a protocol
other than the benchmark's own (``single_gallery_shot``), the re-ranking parameters."""


def _entry(values: dict) -> dict:
    entry: dict = {m: float(values[m]) for m in METRICS + SPREAD if m in values}
    entry.update({k: values[k] for k in LABELS if k in values})
    return entry


def _cell(r: dict, metric: str) -> str:
    std = r.get(f"{metric}_std")
    return f"{100 * r[metric]:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


class ResultsFile:
    """``{"<stage>": {"<benchmark>": {"mAP": .., "R1": .., "R5": .., "R10": .., "mINP": ..}}}`` (fractions).

    Multi-trial benchmarks add ``mAP_std``, ``R1_std`` and ``trials``; entries may carry ``protocol`` and
    ``rerank`` labels (see :data:`LABELS`). The printed table shows mAP / R1 as mean ± std where known.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict[str, dict[str, dict[str, float]]] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{self.path} is not valid JSON ({err}); move it away to start a fresh results file") from err

    def __contains__(self, stage: str) -> bool:
        return stage in self.data

    def record(self, stage: str, results: dict[str, dict[str, float]], *, write: bool = True) -> None:
        self.data[stage] = {bench: _entry(v) for bench, v in results.items()}
        if write:
            self.save()

    def record_raw(self, key: str, payload: dict, *, write: bool = True) -> None:
        """Anything else a stage reports (e.g. ``stage2_text`` statistics), stored as given; not in the table."""
        self.data[key] = payload
        if write:
            self.save()

    def is_metrics(self, stage: str) -> bool:
        """A ``{benchmark: {"mAP": .., "R1": ..}}`` entry (what the table shows)."""
        entry = self.data.get(stage)
        return isinstance(entry, dict) and all(isinstance(v, dict) and "mAP" in v and "R1" in v
                                               for v in entry.values())

    def save(self) -> None:
        ordered = {s: self.data[s] for s in sorted(self.data, key=lambda s: (STAGE_ORDER + (s,)).index(s))}
        atomic_write_text(self.path, json.dumps(ordered, indent=2) + "\n")

    def table(self) -> Table:
        stages = [s for s in STAGE_ORDER if s in self.data] + [s for s in self.data if s not in STAGE_ORDER]
        stages = [s for s in stages if self.is_metrics(s)]
        benches = sorted({b for s in stages for b in self.data[s]})
        table = Table(title=f"results ({self.path})", show_lines=False)
        table.add_column("benchmark")
        for stage in stages:
            table.add_column(f"{stage}\nmAP / R1", justify="right")
        for bench in benches:
            cells = []
            for stage in stages:
                r = self.data[stage].get(bench)
                cells.append("-" if r is None else f"{_cell(r, 'mAP')} / {_cell(r, 'R1')}")
            table.add_row(bench, *cells)
        if len(benches) > 1:
            means = []
            for stage in stages:
                vals = [self.data[stage][b] for b in benches if b in self.data[stage]]
                means.append(f"{100 * sum(v['mAP'] for v in vals) / len(vals):.1f} / "
                             f"{100 * sum(v['R1'] for v in vals) / len(vals):.1f}" if vals else "-")
            table.add_row("[bold]mean[/bold]", *means)
        notes = []
        entries = [r for s in stages for r in self.data[s].values()]
        reranks = sorted({", ".join(f"{k} {v}" for k, v in r["rerank"].items()) for r in entries if "rerank" in r})
        if reranks:
            notes.append("re-ranked (" + "; ".join(reranks) + ")")
        if any("mAP_std" in r or "R1_std" in r for r in entries):
            notes.append("± = standard deviation over trials")
        if notes:
            table.caption = "; ".join(notes)
        return table

    def gap_closed(self, stage: str, min_gap: float = 0.01) -> dict[str, float | None]:
        """How far ``stage`` got from ``untrained`` towards ``supervised``: (stage - untrained) / (supervised -
        untrained) in mAP, per benchmark and for the ``mean`` over benchmarks; None where the supervised
        reference gains less than ``min_gap`` mAP over the start (nothing to close). Empty without the rows."""
        if not all(self.is_metrics(s) for s in ("untrained", "supervised", stage)):
            return {}
        start, top, got = (self.data[s] for s in ("untrained", "supervised", stage))
        benches = sorted(set(start) & set(top) & set(got))

        def share(a: float, b: float, c: float) -> float | None:
            return None if b - a < min_gap else (c - a) / (b - a)

        out = {b: share(start[b]["mAP"], top[b]["mAP"], got[b]["mAP"]) for b in benches}
        if len(benches) > 1:
            out["mean"] = share(*(sum(r[b]["mAP"] for b in benches) / len(benches) for r in (start, top, got)))
        return out

    def print(self) -> None:
        console = Console()
        table = self.table()
        if not console.is_terminal:  # a log file: as wide as the table needs, not 80 columns of wrapped cells
            console = Console(width=max(console.width, Console(width=1000).measure(table).maximum))
        console.print(table)
        for stage in ("stage3", "stage1"):  # the method's last image model against the supervised reference
            gaps = self.gap_closed(stage)
            if gaps:
                parts = ", ".join(f"{b} {'n/a' if g is None else f'{100 * g:.0f}%'}" for b, g in gaps.items())
                note = " (n/a: supervised gains under 1 mAP there)" if None in gaps.values() else ""
                console.print(f"{stage} got this far from untrained towards supervised (mAP): {parts}{note}",
                              soft_wrap=True)
                break
        console.print(f"results written to {self.path}")


class Timings:
    """Wall time of each part of a run (seconds), accumulated across resumes in ``timings.json``."""

    def __init__(self, path: str | Path, *, write: bool = True) -> None:
        self.path = Path(path)
        self.write = write
        self.data: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.data = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                self.data = {}  # timings are informative only; a damaged file is started afresh

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data[name] = self.data.get(name, 0.0) + time.perf_counter() - start
            if self.write:
                atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")

    def print(self) -> None:
        parts = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self.data.items())
        Console().print(f"wall time: {parts} (total {sum(self.data.values()):.0f}s; {self.path})")
