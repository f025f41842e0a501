"""Tests for itkm_lightning.evaluation: hand-computed cases, a per-query loop reference, sklearn AP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from itkm_lightning.evaluation import ranking
from itkm_lightning.evaluation import PROTOCOLS, cosine_distance, evaluate_rank, summarize

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Reference: a plain per-query loop written from the definitions of docs/protocols.md section 5.1
# --------------------------------------------------------------------------------------------------


def _reference_kept_list(row, q_pid, q_cam, q_cloth, g_pids, g_camids, g_clothes, protocol):
    """Gallery indices of one query's kept list, in stable ascending order of distance."""
    order = np.argsort(row, kind="stable")
    kept = []
    for index in order:
        same_pid = g_pids[index] == q_pid
        same_cam = g_camids[index] == q_cam
        if protocol in ("market", "llcm") and same_pid and same_cam:
            continue
        if protocol == "sysu" and q_cam == 3 and g_camids[index] == 2:
            continue
        if protocol in ("cloth_changing", "same_clothes") and same_pid:
            same_clothes = str(g_clothes[index]) == str(q_cloth)
            if same_cam:
                continue
            if protocol == "cloth_changing" and same_clothes:
                continue
            if protocol == "same_clothes" and not same_clothes:
                continue
        kept.append(index)
    return np.array(kept, dtype=int)


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
                       protocol="market", max_rank=50):
    """Slow, obviously-correct evaluation: one query at a time."""
    cmc_rows, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        q_cloth = None if q_clothes is None else q_clothes[i]
        kept = _reference_kept_list(distmat[i], q_pids[i], q_camids[i], q_cloth, g_pids, g_camids,
                                    g_clothes, protocol)
        matches = g_pids[kept] == q_pids[i]
        positions = np.flatnonzero(matches)
        if positions.size == 0:
            continue
        aps.append(np.mean([(j + 1) / (p + 1) for j, p in enumerate(positions)]))
        inps.append(positions.size / (positions[-1] + 1))
        if protocol in ("sysu", "llcm"):
            distinct, seen = [], set()
            for pid in g_pids[kept]:
                if pid not in seen:
                    seen.add(pid)
                    distinct.append(pid)
            first = distinct.index(q_pids[i])
        else:
            first = positions[0]
        cmc_rows.append([1.0 if first < k else 0.0 for k in range(1, max_rank + 1)])
    if not aps:
        raise ValueError("no valid query")
    return {"cmc": np.mean(cmc_rows, axis=0), "mAP": float(np.mean(aps)),
            "mINP": float(np.mean(inps)), "num_valid": len(aps)}


def _random_case(seed, num_query=23, num_gallery=61, num_ids=7, num_cams=4, tied=False):
    rng = np.random.default_rng(seed)
    if tied:  # few distinct values: many exact ties, exercises the gallery-order tie rule
        distmat = rng.integers(0, 6, size=(num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery))
    return {
        "distmat": distmat,
        "q_pids": rng.integers(0, num_ids, num_query),
        "g_pids": rng.integers(0, num_ids, num_gallery),
        "q_camids": rng.integers(1, num_cams + 1, num_query),
        "g_camids": rng.integers(1, num_cams + 1, num_gallery),
        "q_clothes": rng.choice(["a", "b", "c"], num_query),
        "g_clothes": rng.choice(["a", "b", "c"], num_gallery),
    }


def _assert_same_result(result, expected):
    assert result["num_valid"] == expected["num_valid"]
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-6)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------------


def test_market_same_camera_removal_by_hand():
    # Gallery:      g0     g1     g2     g3     g4     g5
    # pid            1      1      2      2      3      1
    # cam            1      2      1      2      1      2
    g_pids = np.array([1, 1, 2, 2, 3, 1])
    g_cams = np.array([1, 2, 1, 2, 1, 2])
    q_pids = np.array([1, 2, 3])
    q_cams = np.array([1, 1, 1])
    distmat = np.array([
        [0.1, 0.5, 0.2, 0.6, 0.3, 0.4],  # sorted: g0 g2 g4 g5 g1 g3
        [0.5, 0.1, 0.2, 0.9, 0.3, 0.4],  # sorted: g1 g2 g4 g5 g0 g3
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # sorted: g0 g1 g2 g3 g4 g5
    ])
    # q0 (pid 1, cam 1): drop g0 (same pid+cam). Kept: g2 g4 g5 g1 g3 -> matches at 2, 3.
    #    AP = (1/3 + 2/4) / 2 = 5/12, INP = 2/4, first hit 2.
    # q1 (pid 2, cam 1): drop g2. Kept: g1 g4 g5 g0 g3 -> match g3 at 4. AP = 1/5, INP = 1/5.
    # q2 (pid 3, cam 1): only g4 has pid 3 and it has cam 1 -> removed, no match -> skipped.
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, protocol="market", max_rank=6)
    assert result["num_valid"] == 2
    # first hits at 2 and 4: CMC@1,2 = 0; @3,4 = 1/2; @5,6 = 1.
    np.testing.assert_allclose(result["cmc"], [0, 0, 0.5, 0.5, 1, 1])
    assert result["mAP"] == pytest.approx((5 / 12 + 1 / 5) / 2)
    assert result["mINP"] == pytest.approx((2 / 4 + 1 / 5) / 2)


def test_regdb_removes_nothing():
    # Same data as above with regdb: nothing dropped.
    # q0: sorted g0 g2 g4 g5 g1 g3 -> matches at 0, 3, 4: AP = (1/1 + 2/4 + 3/5)/3 = 0.7, INP = 3/5.
    # q1: sorted g1 g2 g4 g5 g0 g3 -> matches at 1, 5: AP = (1/2 + 2/6)/2 = 5/12, INP = 2/6.
    # q2: sorted g0..g5 -> match g4 at 4: AP = 1/5, INP = 1/5.
    g_pids = np.array([1, 1, 2, 2, 3, 1])
    g_cams = np.array([1, 2, 1, 2, 1, 2])
    distmat = np.array([
        [0.1, 0.5, 0.2, 0.6, 0.3, 0.4],
        [0.5, 0.1, 0.2, 0.9, 0.3, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ])
    result = evaluate_rank(distmat, [1, 2, 3], g_pids, [1, 1, 1], g_cams, protocol="regdb", max_rank=5)
    assert result["num_valid"] == 3
    # first hits at 0, 1, 4: CMC@1 = 1/3, @2..4 = 2/3, @5 = 1.
    np.testing.assert_allclose(result["cmc"], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    assert result["mAP"] == pytest.approx((0.7 + 5 / 12 + 1 / 5) / 3)
    assert result["mINP"] == pytest.approx((3 / 5 + 2 / 6 + 1 / 5) / 3)


def test_sysu_camera_rule_and_distinct_identity_cmc_by_hand():
    # Gallery (sorted by distance for both queries): g0..g6
    # pid    5  5  6  6  7  8  4
    # cam    2  1  1  4  1  4  1
    g_pids = np.array([5, 5, 6, 6, 7, 8, 4])
    g_cams = np.array([2, 1, 1, 4, 1, 4, 1])
    distmat = np.tile(np.arange(7, dtype=float) / 10, (2, 1))
    q_pids = np.array([4, 4])
    q_cams = np.array([3, 6])
    # q0 (cam 3): g0 (cam 2) dropped. Kept pids: 5 6 6 7 8 4 -> match at 5: AP = INP = 1/6.
    #   distinct pids: 5 6 7 8 4 -> distinct rank 4 (standard rank 5).
    # q1 (cam 6): nothing dropped. Kept pids: 5 5 6 6 7 8 4 -> match at 6: AP = INP = 1/7.
    #   distinct: 5 6 7 8 4 -> distinct rank 4.
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, protocol="sysu", max_rank=7)
    assert result["num_valid"] == 2
    np.testing.assert_allclose(result["cmc"], [0, 0, 0, 0, 1, 1, 1])  # both hit at distinct rank 4
    assert result["mAP"] == pytest.approx((1 / 6 + 1 / 7) / 2)
    assert result["mINP"] == pytest.approx((1 / 6 + 1 / 7) / 2)
    # The standard CMC (regdb: no removal) differs from R5 on: first hits at 6 and 6.
    standard = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, protocol="regdb", max_rank=7)
    np.testing.assert_allclose(standard["cmc"], [0, 0, 0, 0, 0, 0, 1])


def test_sysu_distinct_cmc_equals_standard_at_rank1_but_not_rank2():
    # pids along the ranked list: 9 9 3 -> standard first hit 2, distinct first hit 1.
    distmat = np.array([[0.1, 0.2, 0.3]])
    result = evaluate_rank(distmat, [3], [9, 9, 3], [1], [1, 1, 1], protocol="sysu", max_rank=3)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1])
    regdb = evaluate_rank(distmat, [3], [9, 9, 3], [1], [1, 1, 1], protocol="regdb", max_rank=3)
    np.testing.assert_allclose(regdb["cmc"], [0, 0, 1])
    assert result["mAP"] == pytest.approx(1 / 3)  # mAP ignores the de-duplication


def test_llcm_drops_same_pid_same_camera_and_dedups_identities():
    # Ranked gallery: g0 g1 g2 g3 g4 ; pid 1 2 2 3 1 ; cam 1 2 3 1 2. Query pid 1 cam 1.
    # Kept: drop g0 -> pids 2 2 3 1 (match at 3): AP = INP = 1/4. Distinct: 2 3 1 -> rank 2.
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    result = evaluate_rank(distmat, [1], [1, 2, 2, 3, 1], [1], [1, 2, 3, 1, 2], protocol="llcm",
                           max_rank=4)
    np.testing.assert_allclose(result["cmc"], [0, 0, 1, 1])
    assert result["mAP"] == pytest.approx(1 / 4)
    assert result["mINP"] == pytest.approx(1 / 4)


def test_cloth_changing_versus_same_clothes_by_hand():
    # Ranked gallery: g0 g1 g2 g3 g4
    # pid      1    1    2    1    1
    # cam      1    2    2    3    2
    # clothes  a    a    x    b    b
    # Query: pid 1, cam 1, clothes "a".
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    args = ([1], [1, 1, 2, 1, 1], [1], [1, 2, 2, 3, 2])
    clothes = {"q_clothes": ["a"], "g_clothes": ["a", "a", "x", "b", "b"]}
    # market: drop g0 -> kept g1 g2 g3 g4, matches 0, 2, 3: AP = (1 + 2/3 + 3/4)/3, INP = 3/4.
    market = evaluate_rank(distmat, *args, protocol="market", max_rank=4)
    assert market["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert market["mINP"] == pytest.approx(3 / 4)
    # cloth_changing: drop g0 (same cam) and g1 (same clothes) -> kept g2 g3 g4, matches 1, 2:
    #   AP = (1/2 + 2/3)/2 = 7/12, INP = 2/3, first hit 1.
    changing = evaluate_rank(distmat, *args, protocol="cloth_changing", max_rank=4, **clothes)
    np.testing.assert_allclose(changing["cmc"], [0, 1, 1, 1])
    assert changing["mAP"] == pytest.approx(7 / 12)
    assert changing["mINP"] == pytest.approx(2 / 3)
    # same_clothes: drop g0 (same cam), g3 and g4 (other clothes) -> kept g1 g2, match 0: AP = INP = 1.
    same = evaluate_rank(distmat, *args, protocol="same_clothes", max_rank=4, **clothes)
    np.testing.assert_allclose(same["cmc"], [1, 1, 1, 1])
    assert same["mAP"] == pytest.approx(1.0)
    assert same["mINP"] == pytest.approx(1.0)


def test_clothes_are_compared_as_strings():
    # Integer 7 and string "7" are the same clothes key -> same_clothes keeps g1 (AP = 1/2).
    distmat = np.array([[0.0, 0.1]])
    result = evaluate_rank(distmat, [1], [2, 1], [1], [2, 2], q_clothes=np.array([7], dtype=object),
                           g_clothes=["x", "7"], protocol="same_clothes", max_rank=2)
    assert result["mAP"] == pytest.approx(1 / 2)


def test_ties_keep_gallery_order():
    # All distances equal: stable order is g0 g1 g2 g3. pids 2 1 2 1, query pid 1 (cam differs).
    # Matches at 1 and 3: AP = (1/2 + 2/4)/2 = 1/2, INP = 2/4, first hit 1.
    distmat = np.full((1, 4), 0.5)
    result = evaluate_rank(distmat, [1], [2, 1, 2, 1], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1])
    assert result["mAP"] == pytest.approx(0.5)
    assert result["mINP"] == pytest.approx(0.5)


def test_ties_in_distinct_identity_cmc():
    # All equal: order g0..g4, pids 7 7 8 8 1 -> distinct 7 8 1 -> distinct rank 2 for query pid 1.
    distmat = np.zeros((1, 5))
    result = evaluate_rank(distmat, [1], [7, 7, 8, 8, 1], [3], [1] * 5, protocol="sysu", max_rank=3)
    np.testing.assert_allclose(result["cmc"], [0, 0, 1])


def test_cmc_is_padded_when_gallery_is_shorter_than_max_rank():
    # Two gallery items, match at position 1: CMC = [0, 1] then padded with 1 up to rank 5.
    result = evaluate_rank(np.array([[0.1, 0.2]]), [1], [2, 1], [0], [1, 1], max_rank=5)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1, 1])


def test_torch_inputs_are_accepted():
    distmat = torch.tensor([[0.2, 0.1]])
    result = evaluate_rank(distmat, torch.tensor([1]), torch.tensor([1, 2]), torch.tensor([0]),
                           torch.tensor([1, 1]), max_rank=2)
    assert result["mAP"] == pytest.approx(1 / 2)


# --------------------------------------------------------------------------------------------------
# Against the reference loop and sklearn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_loop(protocol, tied, seed):
    case = _random_case(seed, tied=tied)
    if protocol == "sysu":  # make sure camera-3 queries and camera-2 gallery items exist
        case["q_camids"][:8] = 3
        case["g_camids"][:10] = 2
    result = evaluate_rank(**case, protocol=protocol, max_rank=20)
    _assert_same_result(result, reference_evaluate(**case, protocol=protocol, max_rank=20))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_matches_reference_loop_across_blocks(protocol, monkeypatch):
    # Tiny blocks force many query blocks and many tie chunks; results must not change.
    monkeypatch.setattr(ranking, "_BLOCK_ELEMENTS", 100)
    case = _random_case(7, num_query=40, num_gallery=50, tied=True)
    case["q_camids"][:10] = 3
    case["g_camids"][:10] = 2
    result = evaluate_rank(**case, protocol=protocol, max_rank=10)
    _assert_same_result(result, reference_evaluate(**case, protocol=protocol, max_rank=10))


@pytest.mark.parametrize("protocol", ["market", "cloth_changing", "same_clothes"])
def test_average_precision_matches_sklearn(protocol):
    case = _random_case(3, num_query=30, num_gallery=80)  # continuous distances: no ties
    aps = []
    for i in range(30):
        kept = _reference_kept_list(case["distmat"][i], case["q_pids"][i], case["q_camids"][i],
                                    case["q_clothes"][i], case["g_pids"], case["g_camids"],
                                    case["g_clothes"], protocol)
        truth = case["g_pids"][kept] == case["q_pids"][i]
        if truth.any():
            aps.append(average_precision_score(truth, -case["distmat"][i, kept]))
    result = evaluate_rank(**case, protocol=protocol)
    assert result["num_valid"] == len(aps)
    assert result["mAP"] == pytest.approx(np.mean(aps), abs=1e-9)


# --------------------------------------------------------------------------------------------------
# Helpers and input validation
# --------------------------------------------------------------------------------------------------


def test_cosine_distance_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    query, gallery = rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    expected = 1 - (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_distance(query, gallery), expected, atol=1e-12)
    from_torch = cosine_distance(torch.from_numpy(query).float(), torch.from_numpy(gallery).float())
    assert from_torch.dtype == np.float32
    np.testing.assert_allclose(from_torch, expected, atol=1e-5)
    np.testing.assert_allclose(cosine_distance(2 * query, gallery), expected, atol=1e-12)


def test_cosine_distance_zero_vector_and_bad_shapes():
    assert np.allclose(cosine_distance(np.zeros((1, 3)), np.ones((2, 3))), 1.0)
    with pytest.raises(ValueError, match="dimensions"):
        cosine_distance(np.ones((1, 3)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        cosine_distance(np.full((1, 3), np.nan), np.ones((1, 3)))


def test_summarize_reports_fractions():
    result = {"cmc": np.array([0.25, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 1.0]),
              "mAP": 0.4, "mINP": 0.2, "num_valid": 4}
    assert summarize(result) == {"mAP": 0.4, "R1": 0.25, "R5": 0.75, "R10": 1.0, "mINP": 0.2}
    with pytest.raises(ValueError, match="max_rank"):
        summarize(result, ranks=(20,))


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="No query has a true match"):
        evaluate_rank(np.zeros((1, 2)), [1], [2, 3], [0], [1, 1])
    with pytest.raises(ValueError, match="No query has a true match"):  # only match is same-camera
        evaluate_rank(np.zeros((1, 2)), [1], [1, 3], [1], [1, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distmat": np.zeros(3)}, "2-D"),
        ({"distmat": np.array([[np.nan, 0.0]])}, "NaN"),
        ({"q_pids": [1, 2]}, "q_pids has 2 entries"),
        ({"g_camids": [1]}, "g_camids has 1 entries"),
        ({"protocol": "market1501"}, "Unknown protocol"),
        ({"max_rank": 0}, "max_rank"),
        ({"protocol": "cloth_changing"}, "needs q_clothes and g_clothes"),
        ({"protocol": "same_clothes", "q_clothes": [None], "g_clothes": ["a", "b"]}, "None"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    arguments = {"distmat": np.zeros((1, 2)), "q_pids": [1], "g_pids": [1, 2], "q_camids": [0],
                 "g_camids": [1, 1]}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**arguments)
