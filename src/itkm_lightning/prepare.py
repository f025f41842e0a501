"""``itkm prepare mlr``: build MLR-Market1501 / MLR-CUHK03 / MLR-VIPeR with the fixed recipe mlr-v1.

    itkm prepare mlr --source cuhk03 --root /data/cuhk03 --out /data [--boxes labeled] [--split 0]
    itkm prepare mlr --source market1501 --root /data/Market-1501-v15.09.15 --out /data
    itkm prepare mlr --source viper --root /data/VIPeR --out /data [--split 0]
    itkm prepare mlr --source cuhk03 --root ../shared/realdata/cuhk03_manideep2510_dev --out /data \
        --train-ids 80-599 --test-ids 600-742         (CUHK03 crops listed in a labels.csv)

The recipe is docs/protocols.md section 6: designated LR cameras, one rate per LR image from
``numpy.random.default_rng(0).integers(2, 5, size=len(L))`` over the LR images sorted by source path,
bicubic down-sampling to ``(max(1, W // r), max(1, H // r))``, PNG output named
``<pid:04d>_c<cam>_<idx:04d>.png``, ``manifest.csv`` (one row per file) and ``meta.json``. This module is
only the command: the format (plan, writing, verifying, reading back) is ``data/datasets/mlr_format.py``
and what each original dataset contributes is ``data/datasets/mlr_originals.py``.

Re-running is safe and cheap. ``meta.json`` is written last, so a folder without it is an unfinished
build: the next run keeps the images already written (each image is written to a temporary name and
renamed, so a present file is complete; it is still checked to decode at the planned size) and writes
the rest. A finished folder is verified against ``checksums.sha1`` (every file hashed); files that are
missing or differ are rebuilt and nothing else is written. A folder built from other settings or
another copy of the source is refused rather than overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from itkm_lightning.data.datasets.cuhk03 import CUHK03Release
from itkm_lightning.data.datasets.mlr_format import (
    MLR_OUTPUT_DIRS,
    BuildReport,
    stray_files,
    write_mlr_folder,
)
from itkm_lightning.data.datasets.mlr_originals import (
    CROPS_LABELS,
    is_crops_folder,
    parse_id_range,
    plan_cuhk03,
    plan_cuhk03_crops,
    plan_market1501,
    plan_viper,
)
from itkm_lightning.errors import ConfigError, DataUnavailableError


def build_mlr(
    source: str, root: str | Path, out: str | Path, *, boxes: str | None = None, split: int | None = None,
    progress: bool = True, train_ids: str | None = None, test_ids: str | None = None,
) -> BuildReport:
    """Build (or resume, verify, repair) ``<out>/MLR-<source>`` from the original dataset at ``root``."""
    root, out = Path(root), Path(out)
    if source not in MLR_OUTPUT_DIRS:
        raise ConfigError(f"unknown MLR source {source!r}; choose one of {', '.join(MLR_OUTPUT_DIRS)}")
    if boxes is not None and source != "cuhk03":
        raise ConfigError("--boxes applies to --source cuhk03 only")
    if split is not None and source == "market1501":
        raise ConfigError("--split does not apply to market1501 (it has one official split)")
    if split is not None and split < 0:
        raise ConfigError(f"--split must be >= 0; got {split}")
    if not root.exists():
        raise DataUnavailableError(f"--root {root} does not exist; point it at the original {source} dataset")
    dest = out / MLR_OUTPUT_DIRS[source]
    crops = source == "cuhk03" and is_crops_folder(root)
    if (train_ids is not None or test_ids is not None) and not crops:
        raise ConfigError(f"--train-ids/--test-ids apply to CUHK03 crops with a {CROPS_LABELS} only")
    if crops:
        if boxes is not None or split is not None:
            raise ConfigError(f"{root} holds crops listed in {CROPS_LABELS}: name the test ids with --test-ids, "
                              "not --split/--boxes")
        to_range = parse_id_range
        plan = plan_cuhk03_crops(root, train_ids and to_range(train_ids), test_ids and to_range(test_ids))
        return write_mlr_folder(plan, dest, progress)
    if source == "cuhk03":
        with CUHK03Release(root, boxes or "labeled") as release:
            return write_mlr_folder(plan_cuhk03(release, split or 0), dest, progress)
    plan = plan_market1501(root) if source == "market1501" else plan_viper(root, split or 0)
    return write_mlr_folder(plan, dest, progress)


# ============================================================================= command line
def _summary(report: BuildReport) -> str:
    meta = report.meta
    lines = [f"{report.dest}: {report.status} ({report.written} images written), recipe {meta['recipe']}"]
    for folder, counts in meta["counts"].items():
        lines.append(f"  {folder:<19} {counts['ids']:>5} ids {counts['images']:>6} images "
                     f"({counts['high_res_images']} HR, {counts['low_res_images']} LR)")
    lines.append(f"  queries without an HR match: {meta['queries_without_hr_match']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itkm prepare", description="Build derived datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    mlr = commands.add_parser("mlr", help="build an MLR set with the recipe mlr-v1 (docs/protocols.md section 6)")
    mlr.add_argument("--source", required=True, choices=sorted(MLR_OUTPUT_DIRS), help="original dataset")
    mlr.add_argument("--root", required=True, help="folder of the original dataset (or CUHK03's cuhk-03.mat)")
    mlr.add_argument("--out", required=True, help="where MLR-<source>/ is written (usually data.root)")
    mlr.add_argument("--boxes", choices=("labeled", "detected"), default=None,
                     help="CUHK03 boxes (default labeled)")
    mlr.add_argument("--split", type=int, default=None,
                     help="CUHK03 classic split 0-19 or VIPeR permutation seed (default 0)")
    mlr.add_argument("--train-ids", default=None,
                     help="CUHK03 crops (labels.csv): training ids FIRST-LAST (default: every id not tested)")
    mlr.add_argument("--test-ids", default=None,
                     help="CUHK03 crops (labels.csv): held-out test ids FIRST-LAST (default: the last 100)")
    mlr.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``itkm prepare``."""
    args = build_parser().parse_args(argv)
    report = build_mlr(args.source, args.root, args.out, boxes=args.boxes, split=args.split,
                       progress=args.progress, train_ids=args.train_ids, test_ids=args.test_ids)
    print(_summary(report))
    strays = stray_files(report.dest)
    if strays:  # only reported, never deleted: they may be the user's

        print(f"  note: {len(strays)} images in {report.dest} are not in manifest.csv and are ignored "
              f"(first: {strays[0]})")
