"""``itkm embed``: features of a folder of images (or of a config's dataset split) with a trained model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.errors import ConfigError

# The model-side imports (torch models, transformers) happen inside the functions that need them: `itkm search`
# builds its parser from this module and must start without them.


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the tools that run the image encoder."""
    parser.add_argument("--model", required=True,
                        help="run directory, Lightning checkpoint (.ckpt) or stage handoff (handoff.pt)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--feature", choices=("f", "f+v"), default="f",
                        help="retrieval feature: f (CLS token) or f+v (with the projection), as the run evaluated")
    parser.add_argument("--flip", action="store_true", help="average each image with its mirror")


def add_tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=SCENARIOS,
                        help="scenario of untagged images: vi (visible-infrared), cr (cross-resolution), cc (clothes)")
    parser.add_argument("--group", type=int, choices=(0, 1), default=0,
                        help="group of untagged images (vi: 0 visible / 1 infrared; cr: 0 high-res / 1 low-res; "
                             "cc: 0 original / 1 clothing-agnostic)")


def tagged_samples(images: list[str], scenario: str | None, group: int) -> list[Sample]:
    from itkm_lightning.tools.features import list_images, tag_images

    if scenario is None:
        raise ConfigError("untagged images need --scenario (vi, cr or cc; --group defaults to 0), "
                         "or use --config with --split to read the tags from a dataset")
    return tag_images(list_images(images), scenario, group)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(our arguments, fit-config overrides)``: ``--data.root X`` / ``--data.root=X`` go to the config parser."""
    ours, overrides = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            overrides.append(arg)
            if "=" not in arg:
                value = next(args, None)
                if value is not None:
                    overrides.append(value)
        else:
            ours.append(arg)
    return ours, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itkm embed", allow_abbrev=False,
        description="Write L2-normalised features of images to OUT/features.npy and their paths, scenario and group "
                    "to OUT/index.csv (row i of one is row i of the other).",
    )
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder")
    add_model_arguments(parser)
    add_tag_arguments(parser)
    parser.add_argument("--config", action="append", default=[],
                        help="instead of IMAGES: a training config (repeatable) whose data.sources give the images "
                             "and their tags")
    parser.add_argument("--split", default="test", choices=("query", "gallery", "test", "train"),
                        help="with --config: which images (test = query + gallery)")
    parser.add_argument("--benchmark", help="with --config: only this benchmark")
    parser.epilog = "With --config, the overrides of `itkm fit` apply too (e.g. --data.root /datasets)."
    return parser


def main(argv: list[str]) -> None:
    parser = build_parser()
    argv, overrides = split_overrides(argv)
    args = parser.parse_args(argv)
    if overrides and not args.config:
        parser.error(f"{' '.join(overrides)}: dotted overrides (as for `itkm fit`) need --config")
    if bool(args.images) == bool(args.config):
        raise ConfigError("give either image files/folders or --config (with --split), not both and not neither")
    from itkm_lightning.extractor import FeatureExtractor
    from itkm_lightning.tools.embedding_files import save_embeddings
    from itkm_lightning.tools.features import samples_from_config

    samples = (samples_from_config(args.config, args.split, args.benchmark, overrides) if args.config
               else tagged_samples(args.images, args.scenario, args.group))
    extractor = FeatureExtractor(args.model, device=args.device, feature=args.feature, flip=args.flip,
                                 batch_size=args.batch_size, num_workers=args.num_workers)
    start = time.perf_counter()
    features = extractor.embed_samples(samples)
    device = extractor.device
    out = save_embeddings(args.out, features.numpy(), samples)
    print(f"embedded {len(samples)} images ({features.shape[1]}-d, {time.perf_counter() - start:.1f}s on {device}) "
          f"-> {Path(out) / 'features.npy'}, {Path(out) / 'index.csv'}")
