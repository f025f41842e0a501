"""The timm image tower in contiguous against channels-last layout, interleaved in one process, so both see the
same machine load (benchmarks/README.md, "The timm tower's memory layout").

    python scripts/bench_tower_layout.py [--repeats 5] [--threads 2]

Prints the median seconds of an extraction batch (256 crops, inference) and of a training step (64 crops,
forward + backward) for each layout, their ratio, and the largest feature difference between the two.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.timm_tower import TimmImageEncoder

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def tower(layout: torch.memory_format, source: TimmImageEncoder) -> TimmImageEncoder:
    model = copy.deepcopy(source)
    for part in (model.stems, model.body):
        part.to(memory_format=layout)
    model._renormalise = lambda x, m=model: (x * m.input_scale + m.input_shift).contiguous(memory_format=layout)
    return model


def batch(size: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels = torch.randn(size, 3, height, width, generator=torch.Generator().manual_seed(0))
    return pixels, torch.zeros(size, dtype=torch.long), torch.arange(size) % 2


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench_tower_layout.py", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timm_name", default="mobilenetv2_100")
    parser.add_argument("--size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BackboneConfig(kind="timm", timm_name=args.timm_name, timm_weights=None, pretrained=False,
                         image_size=args.size, projection_dim=128)
    source = TimmImageEncoder(cfg, load_weights=False)
    models = {name: tower(layout, source) for name, layout in LAYOUTS.items()}
    with torch.inference_mode():
        probe = batch(8, *args.size)
        diff = (models["contiguous"].eval()(*probe).f - models["channels_last"].eval()(*probe).f).abs().max()
    times: dict[str, dict[str, list[float]]] = {name: {"extract": [], "train": []} for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():  # interleaved: both layouts see the same load
            model.eval()
            start = time.perf_counter()
            with torch.inference_mode():
                model(*batch(256, *args.size))
            times[name]["extract"].append(time.perf_counter() - start)
            model.train()
            start = time.perf_counter()
            model(*batch(64, *args.size)).f.pow(2).mean().backward()
            times[name]["train"].append(time.perf_counter() - start)
    median = {name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in times.items()}
    print(f"{args.timm_name} at {args.size[0]}x{args.size[1]}, {args.threads} threads, median of {args.repeats}; "
          f"largest |f| difference {float(diff):.1e}")
    for part in ("extract", "train"):
        base, fast = median["contiguous"][part], median["channels_last"][part]
        print(f"  {part:8s} contiguous {base:.2f} s, channels_last {fast:.2f} s: {base / fast:.2f}x")


if __name__ == "__main__":
    main()
