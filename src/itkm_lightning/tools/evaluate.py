"""``itkm evaluate``: score a trained model on the benchmarks of a data config, without training.

The model is a run directory, a ``.ckpt`` of any stage or a ``handoff.pt`` (tools/model_source.py, weights only).
The config is any training config (``itkm fit``'s files and dotted overrides); its ``data.test_sources`` (or,
unset, ``data.sources``) are scored with each benchmark's own protocol, exactly as ``fit`` scores them
(``evaluation.benchmark.evaluate_benchmark``): the model may come from training on other datasets (torchreid's ``-s/-t``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from itkm_lightning.errors import ConfigError, DataUnavailableError, ITKMError
from itkm_lightning.tools.embed import add_model_arguments, split_overrides

STAGE = "evaluated"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itkm evaluate", allow_abbrev=False,
        description="Score a trained model on every benchmark of a data config with its protocol: prints the "
                    "table, writes OUT/results.json (stage `evaluated`, the schema of a run's results.json), "
                    "OUT/evaluation.json (what was scored with what) and OUT/figures/ranked_<benchmark>.png.",
        epilog="The overrides of `itkm fit` apply (e.g. --data.root /datasets, --data.test_sources '[ltcc]'). "
               "Example: itkm evaluate --model runs/sysu --config conf/sysu.yaml --rerank --out runs/sysu/eval",
    )
    parser.add_argument("--config", action="append", default=[], required=True,
                        help="training/data config (repeatable); data.test_sources, else data.sources, are scored")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking: the config's evaluation.rerank {k1, k2, lambda}, else "
                             "k1=20, k2=6, lambda=0.3 (without --rerank the config's evaluation.rerank still applies)")
    parser.add_argument("--benchmark", action="append", default=[], help="only this benchmark (repeatable)")
    parser.add_argument("--queries_shown", type=int, default=6, help="queries per ranked-list figure (0: none)")
    add_model_arguments(parser)
    # Unset: the config's model.retrieval_feature / model.flip_test / data.test_batch_size.
    parser.set_defaults(feature=None, flip=None, batch_size=None)
    return parser


def main(argv: list[str]) -> None:
    parser = build_parser()
    argv, overrides = split_overrides(argv)
    args = parser.parse_args(argv)
    for name in args.config:
        if not Path(name).expanduser().is_file():
            raise DataUnavailableError(f"config {name} does not exist")
    out = Path(args.out).expanduser()
    if (out / "run.json").is_file():  # a run directory holds one run: its results.json is the run's own
        raise ConfigError(f"--out {out} is a training run directory; write the evaluation elsewhere "
                         f"(e.g. --out {out / 'evaluate'})")
    from itkm_lightning.fit_config import parse_fit_config
    from itkm_lightning.config import RerankConfig
    from itkm_lightning.data.names import source_of

    cfg = parse_fit_config([str(Path(c).expanduser()) for c in args.config], overrides)
    data = cfg.get("data")
    entries = (data.get("test_sources") or data.get("sources")) if data is not None else None
    if not entries:
        raise ConfigError(f"{', '.join(args.config)}: no data.sources or data.test_sources to evaluate on")
    configured = (cfg.get("evaluation") or {}).get("rerank")
    rerank = None
    if configured is not None or args.rerank:
        values = configured.as_dict() if hasattr(configured, "as_dict") else dict(configured or {})
        rerank = RerankConfig.model_validate(values)
    model_cfg = cfg.get("model") or {}
    feature = args.feature or model_cfg.get("retrieval_feature") or "f"
    flip = bool(model_cfg.get("flip_test")) if args.flip is None else args.flip

    root = Path(data.get("root") or "data")
    benchmarks, problems = [], []
    for entry in entries:
        source = source_of(entry)
        try:
            source.prepare(root)
            benchmarks.extend(source.load(root))
        except ITKMError as err:  # a dataset's own report; anything else is a bug and keeps its traceback
            problems.append(str(err).strip())
    if problems:  # all at once, as `itkm fit` reports them
        raise DataUnavailableError.listing(problems)
    if args.benchmark:
        names = [b.name for b in benchmarks]
        missing = [n for n in args.benchmark if n not in names]
        if missing:
            raise ConfigError(f"--benchmark {', '.join(missing)}: the config has {names}")
        benchmarks = [b for b in benchmarks if b.name in args.benchmark]
    benchmarks = [b for b in benchmarks if b.query and b.gallery]
    if not benchmarks:
        raise ConfigError(f"{', '.join(args.config)}: no benchmark with query and gallery images (a source without "
                         "a labels file has nothing to score)")

    from itkm_lightning.data.clothes import ClothesMasker
    from itkm_lightning.extractor import FeatureExtractor
    from itkm_lightning.fileio import atomic_write_json
    from itkm_lightning.results import ResultsFile
    from itkm_lightning.evaluation.benchmark import evaluate_benchmark

    extractor = FeatureExtractor(args.model, device=args.device, feature=feature, flip=flip,
                                 batch_size=args.batch_size or int(data.get("test_batch_size") or 64),
                                 num_workers=args.num_workers)
    view = clothing_agnostic_view(ClothesMasker(mode=data.get("clothes_masker") or "auto",
                                                mask_format=data.get("clothes_mask_format") or "binary"))
    results, figures = {}, []
    start = time.perf_counter()
    for bench in benchmarks:
        features = extractor.embed_samples(bench.query + bench.gallery, view_transform=view)
        results[bench.name] = evaluate_benchmark(bench, features, rerank=rerank)
        if args.queries_shown > 0:
            figures.append(ranked_figure(out / "figures" / f"ranked_{bench.name}.png", bench, features,
                                         args.queries_shown))
    seconds = time.perf_counter() - start
    table = ResultsFile(out / "results.json")
    table.record(STAGE, results)
    atomic_write_json(out / "evaluation.json", {
        "model": str(Path(args.model).expanduser().resolve()), "config": [str(c) for c in args.config],
        "overrides": overrides, "benchmarks": [b.name for b in benchmarks], "feature": feature, "flip": flip,
        "rerank": None if rerank is None else rerank.as_dict(), "device": str(extractor.device),
        "seconds": round(seconds, 2),
    })
    table.print()
    print(f"scored {len(benchmarks)} benchmark(s) in {seconds:.1f}s on {extractor.device}; "
          f"{len(figures)} ranked-list figure(s) in {out / 'figures'}")


def clothing_agnostic_view(masker):
    """The ``cc`` group-1 view evaluation scores (data.datamodule.ReIDDataModule._clothing_agnostic_view)."""
    from PIL import Image

    def view(sample, image):
        if sample.scenario != "cc" or sample.group != 1:
            return image
        mask = None
        if sample.mask_path and Path(sample.mask_path).is_file():
            mask = masker.load_mask(sample.mask_path).resize(image.size, Image.NEAREST)
        return masker(image, mask)

    return view


def ranked_figure(path: Path, bench, features, num_queries: int, top_k: int = 10) -> Path:
    """The first ``num_queries`` queries (evenly spaced) and their top-k by cosine similarity; gallery images of the
    query's identity and camera are skipped (the usual junk rule)."""
    import numpy as np

    from itkm_lightning.tools.figures import ranked_list_grid, ranked_rows, ranked_title

    nq = len(bench.query)
    picked = np.linspace(0, nq - 1, num=min(num_queries, nq)).round().astype(int)
    rows = ranked_rows(bench, features[:nq].numpy(), features[nq:].numpy(), picked, top_k)
    return ranked_list_grid(rows, path, title=ranked_title(bench, top_k))
