"""k-reciprocal re-ranking (``itkm_lightning.evaluation.re_ranking``): pinned values and properties.

The reference is the ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` that torchreid ships
(KaiyangZhou/deep-person-reid, ``torchreid/utils/rerank.py`` at commit 08bb2cc, after Zhong et al., CVPR 2017).
Our implementation was compared with it on random inputs (features with Euclidean and 1 - cos distances,
non-symmetric random matrices, k1 3..20, k2 1..6, lambda 0..1, 28 to 460 items): largest absolute
difference 2.4e-7. No reference code is used here: the two pinned cases below hold the values the
reference returned for these inputs (float32, printed to 8 digits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import itkm_lightning.evaluation.rerank as rerank_module
from itkm_lightning.evaluation import cosine_distance, re_ranking


def line_case():
    """Two queries and five gallery items on a line, absolute differences as distances."""
    q = np.array([0.0, 5.0])
    g = np.array([0.2, 0.5, 4.6, 5.5, 9.0])

    def dist(a, b):
        return np.abs(a[:, None] - b[None]).astype(np.float32)

    return dist(q, g), dist(q, q), dist(g, g)


def deterministic_features(n: int, dim: int, mult: int) -> np.ndarray:
    """Features without a random generator, so the inputs are the same under every numpy release."""
    return ((np.arange(n * dim) * mult) % 97).reshape(n, dim).astype(np.float64) / 97.0 - 0.5


def feature_case():
    query = deterministic_features(6, 5, 31)
    gallery = deterministic_features(20, 5, 53)
    gallery[:6] = query + 0.05 * deterministic_features(6, 5, 17)  # gallery item i is query i's match
    return cosine_distance(query, gallery), cosine_distance(query, query), cosine_distance(gallery, gallery)


# Returned by the reference for line_case() with k1=2, k2=2, lambda_value=0.3.
LINE_EXPECTED = np.array([
    [1.48148174e-04, 1.73289538e-03, 7.78370380e-01, 8.12037051e-01, 1.00000000e+00],
    [9.76480007e-01, 9.43000019e-01, 1.92000018e-03, 1.10169146e-02, 6.58666611e-01],
])
# Returned by the reference for feature_case() with k1=5, k2=3, lambda_value=0.3: rows 0 and 3, and row sums.
FEATURE_ROW0 = np.array([
    5.14152703e-08, 9.73631859e-01, 8.09149265e-01, 7.74654627e-01, 9.37293112e-01, 7.90362120e-01,
    9.89122450e-01, 2.32354045e-01, 8.23140144e-01, 9.17462468e-01, 3.95403832e-01, 2.34295085e-01,
    9.36825216e-01, 8.96010101e-01, 3.84811252e-01, 9.15214479e-01, 9.37065542e-01, 1.00000000e+00,
    2.87012249e-01, 8.98870230e-01,
])
FEATURE_ROW3 = np.array([
    7.55730867e-01, 9.27852511e-01, 9.10604537e-01, -3.49406406e-08, 9.08077776e-01, 7.75588602e-02,
    9.89173651e-01, 7.96639204e-01, 3.19509923e-01, 8.07329595e-01, 8.27244818e-01, 7.86634326e-01,
    8.33121598e-01, 7.95359969e-01, 8.17370176e-01, 2.16618299e-01, 8.26289058e-01, 1.00000000e+00,
    8.05194497e-01, 2.15407401e-01,
])
FEATURE_ROW_SUMS = np.array([14.13267803, 14.59289169, 13.98011208, 13.61571789, 14.07278919, 13.77395439])


def test_line_case_equals_the_reference():
    got = re_ranking(*line_case(), k1=2, k2=2, lambda_value=0.3)
    assert got.dtype == np.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got, LINE_EXPECTED, rtol=0, atol=1e-6)


def test_feature_case_equals_the_reference():
    got = re_ranking(*feature_case(), k1=5, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got[0], FEATURE_ROW0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[3], FEATURE_ROW3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), FEATURE_ROW_SUMS, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.argmin(axis=1), np.arange(6))


def test_defaults_are_the_papers():
    q_g, q_q, g_g = feature_case()
    np.testing.assert_array_equal(re_ranking(q_g, q_q, g_g), re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3))


def test_lambda_one_keeps_only_the_scaled_squared_original_distance():
    q_g, q_q, g_g = feature_case()
    got = re_ranking(q_g, q_q, g_g, k1=5, k2=3, lambda_value=1.0)
    # Row i of the reference's original distance: column i of [[q_q, q_g], [q_g^T, g_g]] squared, over its maximum.
    column_max = np.maximum((q_q.astype(np.float32) ** 2).max(axis=0), (q_g.astype(np.float32) ** 2).max(axis=1))
    np.testing.assert_allclose(got, q_g ** 2 / column_max[:, None], rtol=1e-6, atol=1e-7)


def test_lambda_zero_gives_distance_one_to_items_sharing_no_neighbourhood():
    """Two far-apart groups: the Jaccard part is 1 across groups, so the re-ranked distance is exactly 1."""
    points = np.array([0.0, 0.1, 0.2, 0.3, 100.0, 100.1, 100.2, 100.3])
    dist = np.abs(points[:, None] - points[None]).astype(np.float32)
    q, g = [0, 4], [1, 2, 3, 5, 6, 7]
    got = re_ranking(dist[np.ix_(q, g)], dist[np.ix_(q, q)], dist[np.ix_(g, g)], k1=3, k2=1, lambda_value=0.0)
    np.testing.assert_array_equal(got[0, 3:], 1.0)
    np.testing.assert_array_equal(got[1, :3], 1.0)
    assert (got[0, :3] < 1).all() and (got[1, 3:] < 1).all()


def test_scaling_every_distance_changes_nothing():
    q_g, q_q, g_g = feature_case()
    np.testing.assert_allclose(re_ranking(3 * q_g, 3 * q_q, 3 * g_g, k1=5, k2=3),
                               re_ranking(q_g, q_q, g_g, k1=5, k2=3), atol=1e-6)


def test_small_blocks_give_the_same_result(monkeypatch):
    """Memory stays bounded by blocking; the blocks must not change the numbers."""
    q_g, q_q, g_g = feature_case()
    expected = re_ranking(q_g, q_q, g_g, k1=5, k2=3)
    monkeypatch.setattr(rerank_module, "RANK_BLOCK_ELEMENTS", 30)  # one column of M per block
    monkeypatch.setattr(rerank_module, "OVERLAP_BLOCK_PAIRS", 7)  # one query per block
    np.testing.assert_array_equal(re_ranking(q_g, q_q, g_g, k1=5, k2=3), expected)


def test_neighbourhoods_larger_than_the_data_are_truncated_as_in_the_reference():
    """k1 + 1 above the number of items: every item is a forward neighbour (the reference slices [:k1 + 1])."""
    q_g, q_q, g_g = line_case()
    got = re_ranking(q_g, q_q, g_g, k1=20, k2=2)
    assert got.shape == (2, 5) and np.isfinite(got).all()


def test_torch_tensors_and_float64_are_accepted():
    q_g, q_q, g_g = line_case()
    got = re_ranking(torch.from_numpy(q_g).double(), torch.from_numpy(q_q), g_g, k1=2, k2=2)
    np.testing.assert_allclose(got, LINE_EXPECTED, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(k1=0), "k1 must be a positive integer"),
    (dict(k2=0), "k2 must be a positive integer"),
    (dict(k2=99), "k2 \\(99\\) exceeds"),
    (dict(lambda_value=1.5), "lambda_value must lie in"),
])
def test_bad_parameters_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        re_ranking(*line_case(), **kwargs)


def test_inconsistent_shapes_and_nan_are_refused():
    q_g, q_q, g_g = line_case()
    with pytest.raises(ValueError, match="g_g_dist 5 x 5"):
        re_ranking(q_g, q_q, g_g[:4, :4])
    bad = q_g.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="q_g_dist contains NaN"):
        re_ranking(bad, q_q, g_g)


def test_scoring_without_re_ranking_does_not_import_it():
    """``itkm_lightning.evaluation`` stays numpy-only; ``re_ranking`` (scipy, torch) loads on first use."""
    import subprocess
    import sys

    code = ("import sys, itkm_lightning.evaluation as e; assert 'itkm_lightning.evaluation.rerank' not in sys.modules; "
            "assert 'torch' not in sys.modules; e.re_ranking; assert 'itkm_lightning.evaluation.rerank' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_query_without_k_reciprocal_neighbours_keeps_jaccard_distance_one():
    """Query 0 is far from everything, itself included: it is nobody's neighbour, its weight row is empty,
    so its Jaccard distance is 1 everywhere and only the scaled original distance varies (as in the reference)."""
    rng = np.random.default_rng(0)
    q_g, q_q, g_g = rng.random((6, 15)), rng.random((6, 6)) + 0.5, rng.random((15, 15))
    np.fill_diagonal(q_q, 5.0)
    q_q[0, :] = 5.0
    q_g[0, :] = 5.0
    got = re_ranking(q_g, q_q, g_g, k1=3, k2=1, lambda_value=0.3)
    np.testing.assert_allclose(got[0], 0.7 + 0.3 * 1.0, atol=1e-6)  # q_g[0] is its column's maximum: R = 1
    assert np.isfinite(got).all() and (got[1:] < 1.0).any()
