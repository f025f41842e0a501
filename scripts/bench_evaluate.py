"""Time evaluate_rank at Market-1501 test scale next to a straightforward per-query loop.

Usage: PYTHONPATH=src python scripts/bench_evaluate.py [--loop-queries 300] [--repeats 3]

The data are random: float32 distances for 3,368 queries × 15,913 gallery items, 750 identities,
6 cameras, scored with the market protocol. The loop baseline (one stable argsort and a few masks per
query, the usual way to write it) is timed on the first ``--loop-queries`` queries only and
extrapolated linearly to all queries; its metrics on that subset are checked against evaluate_rank.
Everything runs on one thread.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from itkm_lightning.evaluation import evaluate_rank, summarize  # noqa: E402

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 15913, 750, 6


def make_market_scale(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "distmat": rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32),
        "q_pids": rng.integers(0, NUM_IDS, NUM_QUERY),
        "g_pids": rng.integers(0, NUM_IDS, NUM_GALLERY),
        "q_camids": rng.integers(1, NUM_CAMS + 1, NUM_QUERY),
        "g_camids": rng.integers(1, NUM_CAMS + 1, NUM_GALLERY),
    }


def loop_market(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50) -> dict:
    """The per-query baseline: stable-sort each row, drop same pid & camera, read positions."""
    cmc_sum, ap_sum, inp_sum, num_valid = np.zeros(max_rank), 0.0, 0.0, 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        kept = ~(same_pid & (g_camids[order] == q_camids[i]))
        positions = np.flatnonzero(same_pid[kept])
        if positions.size == 0:
            continue
        num_valid += 1
        cmc_sum += positions[0] < np.arange(1, max_rank + 1)
        ap_sum += np.mean(np.arange(1, positions.size + 1) / (positions + 1))
        inp_sum += positions.size / (positions[-1] + 1)
    return {"cmc": cmc_sum / num_valid, "mAP": ap_sum / num_valid, "mINP": inp_sum / num_valid,
            "num_valid": num_valid}


def best_time(function, repeats: int) -> tuple[float, dict]:
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-queries", type=int, default=300, help="queries timed with the loop")
    parser.add_argument("--repeats", type=int, default=3, help="runs of evaluate_rank; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    data = make_market_scale(args.seed)
    vector_time, result = best_time(lambda: evaluate_rank(**data, protocol="market"), args.repeats)

    subset = {key: (value[: args.loop_queries] if key in ("distmat", "q_pids", "q_camids") else value)
              for key, value in data.items()}
    loop_subset_time, loop_result = best_time(lambda: loop_market(**subset), 1)
    loop_time = loop_subset_time * NUM_QUERY / args.loop_queries
    check = evaluate_rank(**subset, protocol="market")
    agree = (np.allclose(check["cmc"], loop_result["cmc"], atol=1e-9)
             and abs(check["mAP"] - loop_result["mAP"]) < 1e-9
             and abs(check["mINP"] - loop_result["mINP"]) < 1e-9)

    print(f"scale: {NUM_QUERY} queries x {NUM_GALLERY} gallery, float32, market protocol, 1 thread")
    print(f"evaluate_rank (best of {args.repeats}): {vector_time:.3f} s   "
          f"{ {k: round(v, 5) for k, v in summarize(result).items()} }")
    print(f"per-query loop: {loop_subset_time:.3f} s on {args.loop_queries} queries -> "
          f"{loop_time:.3f} s extrapolated to {NUM_QUERY}")
    print(f"speed-up: {loop_time / vector_time:.1f}x; subset metrics agree with the loop: {agree}")


if __name__ == "__main__":
    main()
