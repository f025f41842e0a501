"""Test-time options: spread of multi-trial protocols, the single-gallery-shot protocol, re-ranking in
benchmark scoring and in the config, and how results.json and the printed table show them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from itkm_lightning.config import EvaluationConfig, RerankConfig
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.evaluation import (
    cosine_distance,
    evaluate_rank,
    evaluate_single_gallery_shot,
    re_ranking,
    summarize,
)
from itkm_lightning.results import ResultsFile
from itkm_lightning.evaluation.benchmark import evaluate_benchmark


def sample(pid, cam, name="x"):
    return Sample(path=name, pid=pid, camid=cam, scenario="cr", group=0, source="t")


# ----------------------------------------------------------------------------- single gallery shot
def drawn_r1_by_hand(draw: int) -> float:
    """The query (pid 1, camera 2) and the gallery below, drawn by the documented rule: one key per gallery
    entry from default_rng(draw), each identity's entry with the largest key."""
    keys = np.random.default_rng(draw).random((1, 5))[0]
    pid1 = 1 if keys[1] > keys[3] else 3  # g1 at 0.2 or g3 at 0.4
    pid2 = 0 if keys[0] > keys[2] else 2  # g0 at 0.1 or g2 at 0.3
    distance = [0.1, 0.2, 0.3, 0.4, 0.5]
    return float(distance[pid1] < distance[pid2])  # pid 3's only entry (0.5) is always last


SGS_CASE = dict(
    distmat=np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]),
    q_pids=np.array([1]), g_pids=np.array([2, 1, 2, 1, 3]),
    q_camids=np.array([2]), g_camids=np.array([1, 1, 1, 1, 1]),
)


def test_single_gallery_shot_draws_one_image_per_identity_with_seeded_generators():
    result = evaluate_single_gallery_shot(**SGS_CASE, draws=10, max_rank=3)
    expected = [drawn_r1_by_hand(d) for d in range(10)]
    assert 0 < sum(expected) < 10  # the draws differ, so the test can tell seeds apart
    np.testing.assert_allclose(result["cmc_draws"][:, 0], expected)
    # a miss has exactly one identity (pid 2) before the match: rank 2 always hits
    np.testing.assert_allclose(result["cmc_draws"][:, 1:], 1.0)
    np.testing.assert_allclose(result["cmc"], result["cmc_draws"].mean(axis=0))
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)  # the full gallery: hits at positions 1 and 3


def test_single_gallery_shot_never_draws_a_removed_same_camera_match():
    case = dict(SGS_CASE, g_camids=np.array([1, 2, 1, 1, 1]))  # g1 (pid 1) shares the query's camera
    result = evaluate_single_gallery_shot(**case, draws=10, max_rank=3)
    # the match drawn is always g3 at 0.4, behind pid 2's entry (0.1 or 0.3): never rank 1
    np.testing.assert_allclose(result["cmc_draws"][:, 0], 0.0)
    np.testing.assert_allclose(result["cmc_draws"][:, 1], 1.0)


def test_single_gallery_shot_equals_the_standard_cmc_on_a_single_shot_gallery():
    rng = np.random.default_rng(0)
    distmat = rng.random((30, 12))
    q_pids, g_pids = rng.integers(0, 12, 30), np.arange(12)
    q_cams, g_cams = np.full(30, 2), np.ones(12, dtype=int)
    sgs = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_cams, g_cams, draws=3, max_rank=10)
    standard = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    for curve in sgs["cmc_draws"]:
        np.testing.assert_allclose(curve, standard["cmc"])


# ----------------------------------------------------------------------------- spread over trials
def two_trial_benchmark():
    query = [sample(1, 3), sample(2, 3)]
    gallery = [sample(1, 1), sample(2, 1), sample(1, 2), sample(2, 2)]
    feats = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]), dim=1)
    bench = BenchmarkSplit("t", "cr", "market", query=query, gallery=gallery, trials=[(None, [0, 1]), (None, [2, 3])])
    return bench, feats


def test_multi_trial_benchmarks_write_the_standard_deviation_beside_the_mean():
    bench, feats = two_trial_benchmark()
    scores = evaluate_benchmark(bench, feats)
    # trial 1 retrieves perfectly (R1 1, mAP 1); trial 2 ranks the wrong identity first (R1 0, mAP 1/2)
    assert scores["R1"] == 0.5 and scores["R1_std"] == pytest.approx(0.5)
    assert scores["mAP"] == pytest.approx(0.75) and scores["mAP_std"] == pytest.approx(0.25)
    assert scores["trials"] == 2
    single = BenchmarkSplit("t", "cr", "market", query=bench.query, gallery=bench.gallery)
    assert "R1_std" not in evaluate_benchmark(single, feats)


def test_results_json_keeps_spread_and_labels_and_the_table_shows_mean_plus_minus_std(tmp_path):
    results = ResultsFile(tmp_path / "results.json")
    results.record("stage1", {
        "sysu_all": {"mAP": 0.5, "R1": 0.6, "R5": 0.7, "R10": 0.8, "mINP": 0.3, "mAP_std": 0.012, "R1_std": 0.02,
                     "trials": 10},
        "mlr_cuhk03_sgs": {"mAP": 0.4, "R1": 0.5, "R5": 0.6, "R10": 0.7, "mINP": 0.2, "R1_std": 0.03, "trials": 10,
                           "protocol": "single_gallery_shot", "rerank": {"k1": 20, "k2": 6, "lambda": 0.3}},
    })
    saved = json.loads((tmp_path / "results.json").read_text())["stage1"]
    assert saved["sysu_all"]["mAP_std"] == 0.012 and saved["sysu_all"]["trials"] == 10
    assert saved["mlr_cuhk03_sgs"]["protocol"] == "single_gallery_shot"
    assert saved["mlr_cuhk03_sgs"]["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    console = Console(record=True, width=200)
    console.print(results.table())
    text = console.export_text()
    assert "50.0 ± 1.2 / 60.0 ± 2.0" in text
    assert "40.0 / 50.0 ± 3.0" in text
    caption = " ".join(text.split())  # the caption wraps at the table's width
    assert "re-ranked (k1 20, k2 6, lambda 0.3); ± = standard deviation over trials" in caption


# ----------------------------------------------------------------------------- re-ranking in scoring
def test_benchmarks_score_re_ranked_distances_when_asked():
    rng = np.random.default_rng(1)
    query = [sample(int(p), 2) for p in rng.integers(0, 8, 12)]
    gallery = [sample(int(p), 1) for p in np.repeat(np.arange(8), 4)]
    feats = torch.nn.functional.normalize(torch.randn(12 + 32, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    bench = BenchmarkSplit("t", "cr", "market", query=query, gallery=gallery)
    rerank = RerankConfig(k1=5, k2=2, **{"lambda": 0.4})
    got = evaluate_benchmark(bench, feats, rerank=rerank)
    qf, gf = feats[:12], feats[12:]
    distmat = re_ranking(cosine_distance(qf, gf), cosine_distance(qf, qf), cosine_distance(gf, gf), 5, 2, 0.4)
    expected = summarize(evaluate_rank(distmat, [s.pid for s in query], [s.pid for s in gallery],
                                       [2] * 12, [1] * 32))
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert got["rerank"] == {"k1": 5, "k2": 2, "lambda": 0.4}
    assert got["mAP"] != pytest.approx(evaluate_benchmark(bench, feats)["mAP"])  # re-ranking changed the scores


def test_evaluation_config_is_off_by_default_and_takes_lambda_by_its_config_name():
    assert EvaluationConfig().rerank is None
    assert EvaluationConfig(rerank={"k1": 10, "lambda": 0.5}).rerank.as_dict() == {"k1": 10, "k2": 6, "lambda": 0.5}
    with pytest.raises(ValueError):
        RerankConfig(**{"lambda": 1.5})
    with pytest.raises(ValueError):
        EvaluationConfig(rerank={"k3": 1})


@pytest.mark.slow
def test_fit_scores_every_results_row_with_the_configured_re_ranking(tmp_path, synthetic_root):
    from pathlib import Path

    from itkm_lightning.command import main

    run_dir = tmp_path / "run"
    main(["fit", "--config", str(Path(__file__).resolve().parents[1] / "conf/smoke.yaml"),
          "--data.root", str(synthetic_root), "--run_dir", str(run_dir), "--stage", "stage1",
          "--trainer.max_epochs", "1", "--evaluation.rerank.k1", "5", "--evaluation.rerank.k2", "2"])
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1"]
    for stage in results.values():
        for entry in stage.values():
            assert entry["rerank"] == {"k1": 5, "k2": 2, "lambda": 0.3}


def test_html_report_shows_the_spread_too():
    from itkm_lightning.tools.report import results_table

    html = results_table({"stage1": {"sysu_all": {"mAP": 0.5, "R1": 0.6, "mAP_std": 0.012, "R1_std": 0.02},
                                     "market1501": {"mAP": 0.25, "R1": 0.5}}})
    assert "<td>50.0 ± 1.2</td><td>60.0 ± 2.0</td>" in html
    assert "<td>25.0</td><td>50.0</td>" in html
