"""``itkm report RUN_DIR``: results, timings and figures of a run on one HTML page (RUN_DIR/report.html)."""

from __future__ import annotations

import argparse
import base64
import json
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from itkm_lightning.errors import DataFormatError, DataUnavailableError
from itkm_lightning.fileio import atomic_write_text
from itkm_lightning.results import METRICS, STAGE_ORDER

FIGURES_DIR = "figures"  # tools/run_figures.py writes there (not imported: it needs torch)

CAPTIONS = {
    "ranked": "Ranked lists: each row is a query (blue) and its top-10 gallery images; green = same identity, "
              "red = another identity, score = cosine similarity.",
    "pseudo_labels": "Pseudo-label quality per (scenario, group) block at each re-clustering: clusters, outliers, "
                     "and agreement with the hidden identities (ARI, NMI; monitoring only).",
    "embedding": "2-D t-SNE of test-set features (query + gallery), coloured by identity (left) and by "
                 "scenario/group (right).",
    "text_prototypes": "Cosine similarity between Stage II text prototypes: mean per pair of scenarios, and the full "
                       "matrix sorted by scenario.",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.muted { color: #777; }
"""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path} is not valid JSON ({err}); fix or remove it and run `itkm report` again") from err
    return data if isinstance(data, dict) else {}


def _value(metrics: dict, metric: str) -> str:
    """``45.1`` or, for a multi-trial protocol, ``45.1 ± 1.2`` (percent)."""
    std = metrics.get(f"{metric}_std")
    return f"{100 * metrics[metric]:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def results_table(results: dict) -> str:
    stages = [s for s in STAGE_ORDER if s in results] + [s for s in results if s not in STAGE_ORDER]
    rows = []
    for stage in stages:
        per_bench = results[stage]
        if not isinstance(per_bench, dict):
            continue
        for bench, metrics in per_bench.items():
            if not (isinstance(metrics, dict) and "mAP" in metrics):
                continue  # e.g. stage2's text statistics: shown separately
            cells = "".join(f"<td>{_value(metrics, m)}</td>" if m in metrics else "<td>-</td>" for m in METRICS)
            rows.append(f"<tr><td>{escape(stage)}</td><td>{escape(bench)}</td>{cells}</tr>")
    if not rows:
        return "<p class='muted'>no results.json yet (the run has not finished an evaluation)</p>"
    head = "".join(f"<th>{m} (%)</th>" for m in METRICS)
    return f"<table><tr><th>stage</th><th>benchmark</th>{head}</tr>{''.join(rows)}</table>"


def timings_table(timings: dict) -> str:
    if not timings:
        return "<p class='muted'>no timings.json</p>"
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{float(v):.1f}</td></tr>" for k, v in timings.items())
    total = sum(float(v) for v in timings.values())
    return f"<table><tr><th>part</th><th>seconds</th></tr>{rows}<tr><th>total</th><th>{total:.1f}</th></tr></table>"


def _caption(name: str) -> str:
    for prefix, text in CAPTIONS.items():
        if name.startswith(prefix):
            return text
    return ""


def figures_html(run_dir: Path, embed_images: bool) -> str:
    pngs = sorted((run_dir / FIGURES_DIR).glob("*.png"))
    if not pngs:
        return f"<p class='muted'>no figures in {escape(str(run_dir / FIGURES_DIR))}</p>"
    parts = []
    for png in pngs:
        if embed_images:
            src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        else:
            src = escape(png.relative_to(run_dir).as_posix())
        parts.append(f"<figure><img src=\"{src}\" alt=\"{escape(png.stem)}\"><figcaption><b>{escape(png.stem)}</b>. "
                     f"{escape(_caption(png.stem))}</figcaption></figure>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, embed_images: bool = False) -> Path:
    """Write ``run_dir/report.html``; figures are linked by relative path, or inlined with ``embed_images``."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise DataUnavailableError(f"run directory {run_dir} does not exist; pass the --run_dir of an `itkm fit` run")
    results = _read_json(run_dir / "results.json")
    timings = _read_json(run_dir / "timings.json")
    if not results and not (run_dir / FIGURES_DIR).is_dir():
        raise DataUnavailableError(f"{run_dir} has neither results.json nor {FIGURES_DIR}/; is it a run directory?")
    extra = {k: v for k, v in results.items() if k.endswith("_text")}
    config = run_dir / "config.yaml"
    sections = [
        f"<h1>itkm run: {escape(run_dir.name)}</h1>",
        f"<p class='muted'>{escape(str(run_dir.resolve()))}, report written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>",
        "<h2>Results</h2>", results_table(results),
    ]
    if extra:
        sections += ["<h3>Text statistics</h3>", f"<pre>{escape(json.dumps(extra, indent=2))}</pre>"]
    sections += ["<h2>Timings</h2>", timings_table(timings), "<h2>Figures</h2>", figures_html(run_dir, embed_images)]
    if config.is_file():
        sections += ["<h2>Config</h2>", f"<details><summary>config.yaml</summary><pre>{escape(config.read_text())}"
                                        "</pre></details>"]
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>itkm report: {escape(run_dir.name)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itkm report",
                                     description="Write RUN_DIR/report.html: results, timings and figures of a run.")
    parser.add_argument("run_dir")
    parser.add_argument("--embed_images", action="store_true",
                        help="inline the figures (one self-contained file) instead of linking figures/*.png")
    parser.add_argument("--figures", action="store_true",
                        help="(re)draw the figures that need no model first: pseudo-label curves, text prototypes")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if args.figures:
        from itkm_lightning.tools.run_figures import write_run_figures

        write_run_figures(args.run_dir, None, None)
    print(f"wrote {build_report(args.run_dir, embed_images=args.embed_images)}")
