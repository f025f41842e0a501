"""The ``raw_pixels`` floor equals a hand computation on 3 query and 4 gallery images (docs/design.md:
16x8 box-down-sampled RGB, centred on the benchmark's mean, L2-normalised, cosine distance)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from itkm_lightning.baselines import raw_pixel_features, raw_pixel_results
from itkm_lightning.data.schema import BenchmarkSplit, Sample

# 16x8 codes, stored as 32x16 pictures of 2x2 blocks, so that the box down-sampling returns each code exactly.
# Identity 1: q0, g0 and g3 (g3 looks like identity 2); identity 2: q1 and g1; identity 3: q2 and g2.
PIDS = {"q0": 1, "q1": 2, "q2": 3, "g0": 1, "g1": 2, "g2": 3, "g3": 1}


def codes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    person = {pid: rng.integers(40, 216, size=(16, 8, 3)) for pid in (1, 2, 3)}
    out = {}
    for name, pid in PIDS.items():
        noise = rng.integers(-25, 26, size=(16, 8, 3))
        out[name] = person[pid] + noise
    out["g3"] = person[2]  # identity 1 in a picture that looks exactly like identity 2
    return {name: np.clip(code, 0, 255).astype(np.uint8) for name, code in out.items()}


@pytest.fixture()
def benchmark(tmp_path) -> tuple[BenchmarkSplit, dict[str, np.ndarray]]:
    samples = {}
    for name, code in codes().items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(code.repeat(2, axis=0).repeat(2, axis=1)).save(path)
        samples[name] = Sample(path=str(path), pid=PIDS[name], camid=0 if name[0] == "q" else 1, scenario="cr",
                               group=0, source="tiny")
    bench = BenchmarkSplit(name="tiny", scenario="cr", protocol="market",
                           query=[samples[n] for n in ("q0", "q1", "q2")],
                           gallery=[samples[n] for n in ("g0", "g1", "g2", "g3")])
    return bench, codes()


def hand_features(codes: dict[str, np.ndarray], order: list[str]) -> np.ndarray:
    x = np.stack([codes[name].reshape(-1) / 255.0 for name in order])
    x = x - x.mean(axis=0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hand_average_precision(distances: np.ndarray, matches: np.ndarray) -> float:
    order = np.argsort(distances, kind="stable")
    hits = matches[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def test_raw_pixel_features_are_the_centred_normalised_16x8_pixels(benchmark):
    bench, images = benchmark
    names = ["q0", "q1", "q2", "g0", "g1", "g2", "g3"]
    got = raw_pixel_features([s.path for s in bench.query + bench.gallery]).numpy()
    assert got.shape == (7, 16 * 8 * 3)
    np.testing.assert_allclose(got, hand_features(images, names), rtol=0, atol=1e-6)


def test_raw_pixel_scores_equal_the_hand_computed_ranking(benchmark):
    bench, images = benchmark
    feats = hand_features(images, ["q0", "q1", "q2", "g0", "g1", "g2", "g3"])
    distances = 1.0 - feats[:3] @ feats[3:].T
    q_pids, g_pids = np.array([1, 2, 3]), np.array([1, 2, 3, 1])
    # the designed ranking: q0 finds g0 first and g3 last; q1 finds g1 behind g3 (identity 2's look); q2 finds g2
    assert np.argsort(distances[0])[[0, -1]].tolist() == [0, 3]
    assert np.argsort(distances[1])[:2].tolist() == [3, 1]
    assert np.argsort(distances[2])[0] == 2
    ap = [hand_average_precision(distances[q], g_pids == q_pids[q]) for q in range(3)]
    assert ap == pytest.approx([(1 + 2 / 4) / 2, 1 / 2, 1])  # hits at ranks (1, 4), (2,), (1,)
    scores = raw_pixel_results([bench])["tiny"]
    assert scores["mAP"] == pytest.approx(np.mean(ap), abs=1e-6) and np.mean(ap) == pytest.approx(0.75)
    assert scores["R1"] == pytest.approx(2 / 3)  # q0 and q2 are right at rank 1, q1 is not
    assert scores["R5"] == pytest.approx(1.0)
