"""glibc's defaults against ``host_memory.keep_freed_memory()`` for the demo's tower on CPU (benchmarks/README.md,
"Host memory"). The setting is process-wide, so each measurement is a child process; the two kinds alternate,
so both see the same machine load.

    python scripts/bench_host_memory.py [--repeats 3] [--steps 6] [--threads 2]

Prints, per part (a training step of 64 crops with Adam; an extraction batch of 256 crops), the median wall
seconds, user and system CPU seconds and minor page faults per call, and the ratio of the wall times; then each
kind's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("glibc_default", "keep_freed")


def child(mode: str, steps: int, threads: int) -> dict[str, dict[str, float]]:
    import torch

    from itkm_lightning.host_memory import keep_freed_memory
    from itkm_lightning.models.backbone_config import BackboneConfig
    from itkm_lightning.models.timm_tower import TimmImageEncoder

    if mode == "keep_freed" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() had no effect here (not glibc?)")
    torch.set_num_threads(threads)
    cfg = BackboneConfig(kind="timm", timm_name="mobilenetv2_100", timm_weights=None, pretrained=False,
                         image_size=(128, 64), projection_dim=128)
    model = TimmImageEncoder(cfg, load_weights=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    generator = torch.Generator().manual_seed(0)

    def crops(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.randn(n, 3, 128, 64, generator=generator), torch.zeros(n, dtype=torch.long), torch.arange(n) % 2

    def train() -> None:
        model.train()
        loss = model(*crops(64)).f.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def extract() -> None:
        model.eval()
        with torch.inference_mode():
            model(*crops(256))

    out = {}
    for name, call in (("train", train), ("extract", extract)):
        call()  # warm-up: first-touch of the heap, oneDNN kernels
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            call()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {"wall": wall / steps, "user": (after.ru_utime - before.ru_utime) / steps,
                     "system": (after.ru_stime - before.ru_stime) / steps,
                     "faults": (after.ru_minflt - before.ru_minflt) / steps}
    out["peak"] = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench_host_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    for repeat in range(args.repeats):
        for mode in MODES:
            command = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                       "--threads", str(args.threads)]
            done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats}: {mode} done", file=sys.stderr, flush=True)
    print(f"MobileNetV2 tower at 128x64, {args.threads} threads, median of {args.repeats} processes x "
          f"{args.steps} calls")
    for part in ("train", "extract"):
        median = {mode: {key: statistics.median(r[part][key] for r in runs[mode]) for key in runs[mode][0][part]}
                  for mode in MODES}
        for mode in MODES:
            m = median[mode]
            print(f"  {part:8s} {mode:14s} wall {m['wall']:.2f} s  user {m['user']:.2f} s  "
                  f"system {m['system']:.2f} s  minor faults {m['faults']:,.0f}")
        print(f"  {part:8s} glibc_default / keep_freed wall: "
              f"{median['glibc_default']['wall'] / median['keep_freed']['wall']:.2f}x")
    for mode in MODES:
        print(f"  peak resident memory, {mode}: {statistics.median(r['peak']['rss_mb'] for r in runs[mode]):,.0f} MB")


if __name__ == "__main__":
    main()
