"""Hand-computed cases pinning the conventions of the reference evaluation codes (issue 4, item 4).

``evaluate_rank`` was checked on random tie-free inputs against torchreid's ``eval_market1501``, the AGW
baseline's ``eval_sysu`` / ``eval_regdb`` (and its single-modality ``eval_func`` for mINP), DEEN's
``eval_llcm`` and CAL's ``evaluate`` / ``evaluate_with_clothes`` (largest difference 3e-8, the float32
CMC of the references). These small cases keep the behaviours that check relied on, each worked out
by hand; no reference code is used here.

Each gallery below is listed in ranked order (distance = list position), so every ranking is tie-free
like the inputs of that comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

from itkm_lightning.evaluation import evaluate_rank


def ranked_case(queries, gallery, distances=None):
    """queries: [(pid, cam, clothes)]; gallery: [(pid, cam, clothes)] in ranked order for every query
    unless ``distances`` (one row per query) says otherwise."""
    if distances is None:
        distances = np.tile(np.arange(len(gallery), dtype=np.float64), (len(queries), 1))
    q_pid, q_cam, q_clothes = (np.array(column) for column in zip(*queries))
    g_pid, g_cam, g_clothes = (np.array(column) for column in zip(*gallery))
    return dict(distmat=np.asarray(distances, dtype=np.float64), q_pids=q_pid, g_pids=g_pid, q_camids=q_cam,
                g_camids=g_cam, q_clothes=q_clothes, g_clothes=g_clothes)


def score(case, protocol, max_rank=5):
    kwargs = dict(case)
    if protocol not in ("cloth_changing", "same_clothes"):
        kwargs.pop("q_clothes"), kwargs.pop("g_clothes")
    return evaluate_rank(**kwargs, protocol=protocol, max_rank=max_rank)


# ----------------------------------------------------------------------------- torchreid eval_market1501
def test_market_like_torchreid_removes_same_pid_same_camera_and_averages_over_valid_queries():
    gallery = [(1, 1, "-"), (2, 2, "-"), (1, 2, "-"), (3, 1, "-"), (1, 3, "-"), (2, 1, "-")]
    queries = [(1, 1, "-"), (4, 2, "-"), (2, 2, "-")]
    case = ranked_case(queries, gallery)
    result = score(case, "market")
    # q0 (1@c1): drop g0 (same pid and camera); keep g3 (same camera, other pid).
    #   kept pids 2,1,3,1,2 -> hits at 1, 3: AP = (1/2 + 2/4)/2 = 1/2, INP = 2/4, first hit rank 2.
    # q1 (pid 4) has no gallery image: skipped, not counted as a miss.
    # q2 (2@c2): drop g1 -> kept pids 1,1,3,1,2: hit at 4: AP = INP = 1/5, first hit rank 5.
    assert result["num_valid"] == 2
    assert result["mAP"] == pytest.approx((0.5 + 0.2) / 2)
    assert result["mINP"] == pytest.approx((0.5 + 0.2) / 2)
    np.testing.assert_allclose(result["cmc"], [0.0, 0.5, 0.5, 0.5, 1.0])


def test_market_like_cal_evaluate_cmc_is_a_prefix_of_the_full_length_curve():
    """CAL returns a CMC as long as the gallery; ours stops at max_rank and pads with the last value."""
    case = ranked_case([(1, 1, "-")], [(2, 2, "-"), (1, 2, "-"), (3, 1, "-")])
    np.testing.assert_allclose(score(case, "market", max_rank=6)["cmc"], [0, 1, 1, 1, 1, 1])


# ----------------------------------------------------------------------------- AGW eval_sysu / eval_regdb
SYSU_GALLERY = [  # ranked order for both queries
    (5, 2, "-"),  # camera 2: dropped for camera-3 queries, whatever the identity
    (2, 1, "-"), (2, 4, "-"), (3, 1, "-"), (3, 5, "-"), (4, 1, "-"),
    (1, 2, "-"),  # a true match, but on camera 2
    (1, 1, "-"),
]


def test_sysu_like_agw_camera3_drops_camera2_and_cmc_counts_distinct_identities():
    case = ranked_case([(1, 3, "-"), (1, 6, "-")], SYSU_GALLERY)
    result = score(case, "sysu")
    # q0 (cam 3): kept pids 2,2,3,3,4,1: standard first hit at rank 6, distinct identities 2,3,4,1 -> rank 4.
    #   AP = INP = 1/6 (the mAP/mINP list is not de-duplicated).
    # q1 (cam 6): nothing dropped: pids 5,2,2,3,3,4,1,1: distinct 5,2,3,4,1 -> rank 5; hits at 6, 7.
    #   AP = (1/7 + 2/8)/2, INP = 2/8.
    np.testing.assert_allclose(result["cmc"], [0.0, 0.0, 0.0, 0.5, 1.0])
    assert result["mAP"] == pytest.approx((1 / 6 + (1 / 7 + 2 / 8) / 2) / 2)
    assert result["mINP"] == pytest.approx((1 / 6 + 2 / 8) / 2)


def test_sysu_distinct_identity_cmc_exceeds_the_standard_cmc_at_rank5():
    case = ranked_case([(1, 3, "-"), (1, 6, "-")], SYSU_GALLERY)
    assert score(case, "sysu")["cmc"][4] == pytest.approx(1.0)
    # The same rankings with the standard CMC and no removal (regdb): both first hits lie at rank 7.
    assert score(case, "regdb", max_rank=7)["cmc"][4] == pytest.approx(0.0)
    assert score(case, "regdb", max_rank=7)["cmc"][6] == pytest.approx(1.0)


def test_sysu_like_agw_a_query_without_match_counts_nowhere():
    """AGW sums the distinct-identity rows of all queries but divides by the valid ones; an invalid
    query's row is all zeros, so this equals averaging over the valid queries."""
    case = ranked_case([(1, 3, "-"), (9, 3, "-")], SYSU_GALLERY)
    result = score(case, "sysu")
    assert result["num_valid"] == 1
    np.testing.assert_allclose(result["cmc"], [0.0, 0.0, 0.0, 1.0, 1.0])


def test_regdb_like_agw_removes_nothing():
    """AGW's eval_regdb gives queries camera 1 and the gallery camera 2: no entry is ever dropped."""
    case = ranked_case([(1, 1, "-")], [(1, 1, "-"), (2, 2, "-"), (1, 2, "-")])
    result = score(case, "regdb")
    assert result["cmc"][0] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- DEEN eval_llcm
def test_llcm_like_deen_drops_same_pid_same_camera_and_counts_distinct_identities():
    gallery = [(1, 4, "-"), (2, 4, "-"), (2, 1, "-"), (3, 2, "-"), (1, 2, "-")]
    case = ranked_case([(1, 4, "-")], gallery)
    result = score(case, "llcm")
    # g0 dropped (same pid, same dual-mode camera); g1 kept (same camera, other pid).
    # kept pids 2,2,3,1: standard first hit rank 4, distinct 2,3,1 -> rank 3. AP = INP = 1/4.
    np.testing.assert_allclose(result["cmc"], [0.0, 0.0, 1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(0.25) and result["mINP"] == pytest.approx(0.25)
    # The same ranking under other protocols: sysu keeps g0 (camera 4 is not camera 3) -> rank 1;
    # market removes g0 too but counts every entry -> first hit at rank 4.
    assert score(case, "sysu")["cmc"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(score(case, "market")["cmc"], [0.0, 0.0, 0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- CAL evaluate_with_clothes
CLOTHES_GALLERY = [
    (1, 2, "1_a"),  # same clothes, other camera
    (2, 2, "2_a"),
    (1, 1, "1_b"),  # same camera: dropped in every setting
    (1, 3, "1_b"),  # other clothes, other camera
    (3, 1, "3_a"),
]


def test_cloth_changing_like_cal_cc_mode():
    case = ranked_case([(1, 1, "1_a"), (2, 1, "2_a")], CLOTHES_GALLERY)
    result = score(case, "cloth_changing")
    # q0: drop g0 (same clothes) and g2 (same camera): kept pids 2,1,3 -> AP = 1/2, first hit rank 2.
    # q1: its only image (g1) has the same clothes: no positive left, skipped.
    assert result["num_valid"] == 1
    assert result["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0, 1.0, 1.0])


def test_same_clothes_like_cal_sc_mode():
    case = ranked_case([(1, 1, "1_a")], CLOTHES_GALLERY)
    result = score(case, "same_clothes")
    # drop g2 (same camera) and g3 (other clothes): kept pids 1,2,3 -> AP = 1.
    assert result["mAP"] == pytest.approx(1.0) and result["cmc"][0] == pytest.approx(1.0)


def test_general_setting_like_cal_evaluate():
    case = ranked_case([(1, 1, "1_a")], CLOTHES_GALLERY)
    result = score(case, "market")
    # only g2 dropped: kept pids 1,2,1,3 -> hits at 1 and 3: AP = (1 + 2/3)/2, INP = 2/3.
    assert result["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)


def test_clothes_keys_compare_across_query_and_gallery_as_strings():
    """CAL compares integer clothes ids; the same ids given as ints or as strings score the same."""
    case = ranked_case([(1, 1, 10)], [(1, 2, 10), (2, 2, 20), (1, 3, 11)])
    as_strings = dict(case, q_clothes=case["q_clothes"].astype(str), g_clothes=case["g_clothes"].astype(str))
    assert score(case, "cloth_changing")["mAP"] == pytest.approx(score(as_strings, "cloth_changing")["mAP"])
    assert score(case, "cloth_changing")["mAP"] == pytest.approx(0.5)
