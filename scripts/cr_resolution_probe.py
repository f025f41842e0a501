"""Why the ImageNet network alone scores below raw 16x8 pixels on the demo's cr benchmark (issue 13, target 3).

Scores raw 16x8 pixels (the ``raw_pixels`` row) and the demo's ImageNet MobileNetV2 alone (no scenario
embedding, one stem, the demo's test transform) on:

  (a) the benchmark as it is: low-resolution queries against the high-resolution gallery;
  (b) the same queries split by how much they were shrunk (2-4x, as MLR-CUHK03's);
  (c) the gallery shrunk by 2, 3 or 4x too (bicubic, as the queries are stored), so that both sides are
      equally blurred and only the identity is left to find.

If the network knows identities better than raw pixels but is thrown off by the difference in blur, it beats
raw pixels in (c) and on the least-shrunk queries of (b), and falls behind on the most-shrunk ones. Reads the
demo benchmark under ``data/`` (rendered on first use); about a minute on two cores.

    python scripts/cr_resolution_probe.py [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from itkm_lightning.baselines import raw_pixel_features_of_images
from itkm_lightning.config_files import read_mapping
from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.data.transforms import test_transform
from itkm_lightning.evaluation.benchmark import evaluate_benchmark
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.timm_tower import TimmImageEncoder
from itkm_lightning.synthetic.modalities import to_low_resolution

DEMO = Path(__file__).resolve().parents[1] / "conf" / "demo.yaml"
FACTOR_BINS = ((2.0, 2.67), (2.67, 3.34), (3.34, 4.1))


def shrink(image: Image.Image, factor: float) -> Image.Image:
    """The generator's own low-resolution rendering, at one factor instead of a random one."""
    return to_low_resolution(image, np.random.default_rng(0), factor_range=(factor, factor))


@torch.no_grad()
def network_features(net: TimmImageEncoder, images: list[Image.Image], batch: int = 128) -> torch.Tensor:
    transform = test_transform(net.cfg.image_size)
    out = []
    for start in range(0, len(images), batch):
        x = torch.stack([transform(im) for im in images[start:start + batch]])
        zeros = torch.zeros(len(x), dtype=torch.long)  # scenario and group 0: no embedding, one stem
        out.append(torch.nn.functional.normalize(net(x, zeros, zeros).f, dim=1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the benchmark's seed (the demo's is 0)")
    parser.add_argument("--root", default="data")
    args = parser.parse_args()
    torch.set_num_threads(2)

    # the demo's tower as conf/demo.yaml builds it, less the scenario embedding and the second stem
    backbone = BackboneConfig(**{**read_mapping(DEMO)["model"]["backbone"], "scenario_embedding": "none",
                                 "dual_branch": False})
    height = backbone.image_size[0]
    datamodule = ReIDDataModule(sources=[SyntheticBenchmark(preset="demo", seed=args.seed)], root=args.root,
                                image_size=tuple(backbone.image_size), num_workers=0)
    datamodule.setup("fit")
    bench = next(b for b in datamodule.benchmarks if b.scenario == "cr")
    net = TimmImageEncoder(backbone).eval()

    def score(split, queries, gallery) -> str:
        both = queries + gallery
        raw = evaluate_benchmark(split, raw_pixel_features_of_images(both))["mAP"]
        network = evaluate_benchmark(split, network_features(net, both))["mAP"]
        return f"raw pixels {100 * raw:5.1f}   network {100 * network:5.1f}"

    queries = [load_rgb(s.path) for s in bench.query]
    gallery = [load_rgb(s.path) for s in bench.gallery]
    print(f"cr: {len(queries)} low-res queries, {len(gallery)} high-res gallery pictures; mAP in %")
    print(f"(a) the benchmark as it is                    {score(bench, queries, gallery)}")
    factor = [height / im.size[1] for im in queries]
    for low, high in FACTOR_BINS:
        keep = [i for i, f in enumerate(factor) if low <= f < high]
        split = dataclasses.replace(bench, query=[bench.query[i] for i in keep])
        print(f"(b) queries shrunk {low:.2f}-{high:.2f}x ({len(keep):3d} queries) "
              f"{score(split, [queries[i] for i in keep], gallery)}")
    for f in (2, 3, 4):
        print(f"(c) gallery shrunk {f}x too                     "
              f"{score(bench, queries, [shrink(im, f) for im in gallery])}")


if __name__ == "__main__":
    main()
