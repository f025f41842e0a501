"""Time and memory of ``re_ranking`` at Market-1501 test scale (3,368 queries x 15,913 gallery items).

Usage: PYTHONPATH=src python scripts/bench_rerank.py [--features clustered|iid] [--dim 768] [--threads 1]

The features are random: ``clustered`` draws 750 identity centres and scatters every image around its
identity's centre (so k-reciprocal neighbourhoods are as populated as on real features), ``iid`` draws
every feature independently. Distances are ``1 - cos`` in float32 (the project's metric): the three input
matrices alone take about 1.3 GB. Reported: wall time of ``re_ranking`` (k1 20, k2 6, lambda 0.3) and the
most memory ``re_ranking`` held at once beyond its inputs (numpy reports its allocations to ``tracemalloc``),
and the process's peak resident memory (inputs and their construction included), from ``getrusage``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--features", choices=("clustered", "iid"), default="clustered")
parser.add_argument("--dim", type=int, default=768)
parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
parser.add_argument("--queries", type=int, default=3368)
parser.add_argument("--gallery", type=int, default=15913)
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import numpy as np  # noqa: E402

from itkm_lightning.evaluation import cosine_distance  # noqa: E402
from itkm_lightning.evaluation.rerank import re_ranking  # noqa: E402

NUM_IDS = 750


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def features(num: int, rng: np.random.Generator) -> np.ndarray:
    if args.features == "iid":
        return rng.normal(size=(num, args.dim)).astype(np.float32)
    centres = np.random.default_rng(1).normal(size=(NUM_IDS, args.dim)).astype(np.float32)
    ids = rng.integers(0, NUM_IDS, num)
    return centres[ids] + 1.2 * rng.normal(size=(num, args.dim)).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    query, gallery = features(args.queries, rng), features(args.gallery, rng)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    q_g, q_q = cosine_distance(query, gallery), cosine_distance(query, query)
    g_g = gallery @ gallery.T  # 1 - cos in place: cosine_distance would hold two gallery x gallery arrays
    np.subtract(1.0, g_g, out=g_g)
    del query, gallery
    inputs_gib = sum(m.nbytes for m in (q_g, q_q, g_g)) / 2**30
    before = peak_rss_gib()
    tracemalloc.start()
    start = time.perf_counter()
    result = re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    seconds = time.perf_counter() - start
    _, held = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"re_ranking {args.queries} x {args.gallery} ({args.features} features, dim {args.dim}, "
          f"{args.threads} thread(s)): {seconds:.1f} s")
    print(f"inputs {inputs_gib:.2f} GiB; re_ranking held at most {held / 2**30:.2f} GiB more (its result "
          f"{result.nbytes / 2**30:.2f} GiB included); peak RSS of the process {before:.2f} GiB before re-ranking, "
          f"{peak_rss_gib():.2f} GiB after")


if __name__ == "__main__":
    main()
