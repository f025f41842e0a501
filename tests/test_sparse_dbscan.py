"""The connected-components DBSCAN gives scikit-learn's labels exactly, border points and numbering included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from itkm_lightning.clustering import cluster, jaccard_distance
from itkm_lightning.clustering.dbscan import core_points, dbscan


def random_symmetric(seed: int, n: int, density: float, eps: float, tie_share: float) -> sp.csr_matrix:
    """Random symmetric sparse distances in [0, 1) with an explicit 0 diagonal; a share of them exactly eps."""
    rng = np.random.default_rng(seed)
    upper = sp.random(n, n, density=density, random_state=rng, format="coo")
    keep = upper.row < upper.col
    rows, columns = upper.row[keep], upper.col[keep]
    values = rng.uniform(0.0, 1.0, len(rows)) * (2 * eps) % 0.999
    values[rng.random(len(rows)) < tie_share] = eps  # ties at eps count as neighbours
    values[rng.random(len(rows)) < 0.05] = 0.0  # duplicates: stored zeros off the diagonal
    matrix = sp.coo_matrix((np.concatenate((values, values, np.zeros(n))),
                            (np.concatenate((rows, columns, np.arange(n))), np.concatenate((columns, rows, np.arange(n))))),
                           shape=(n, n)).tocsr()
    return matrix


def sklearn_labels(distances: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances.copy())


@pytest.mark.parametrize("seed", range(12))
def test_labels_equal_sklearn_on_random_graphs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(50, 400))
    eps = float(rng.choice([0.3, 0.5, 0.6]))
    min_samples = int(rng.integers(1, 7))
    distances = random_symmetric(seed, n, density=float(rng.uniform(0.005, 0.04)), eps=eps, tie_share=0.1)
    expected = sklearn_labels(distances, eps, min_samples)

    labels = dbscan(distances, eps, min_samples)

    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


def test_random_graphs_cover_borders_noise_and_several_clusters() -> None:
    """Guards the test above: its inputs really hold the cases it claims to pin."""
    seen = {"border": 0, "noise": 0, "clusters": 0, "contested_border": 0}
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        n = int(rng.integers(50, 400))
        eps = float(rng.choice([0.3, 0.5, 0.6]))
        min_samples = int(rng.integers(1, 7))
        distances = random_symmetric(seed, n, density=float(rng.uniform(0.005, 0.04)), eps=eps, tie_share=0.1)
        labels = sklearn_labels(distances, eps, min_samples)
        model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(distances.copy())
        core = np.zeros(n, bool)
        core[model.core_sample_indices_] = True
        border = (labels >= 0) & ~core
        seen["border"] += int(border.sum())
        seen["noise"] += int((labels < 0).sum())
        seen["clusters"] += int(labels.max() + 1 >= 2)
        rows = np.repeat(np.arange(n), np.diff(distances.indptr))
        near = (distances.data <= eps) & core[rows]  # a core point's row reaches its columns
        for b in np.flatnonzero(border):
            seen["contested_border"] += int(len(set(labels[rows[near & (distances.indices == b)]])) >= 2)
    assert seen["border"] > 50 and seen["noise"] > 50 and seen["clusters"] >= 4, seen
    assert seen["contested_border"] >= 3, "border points between two clusters: the order-dependent case"


def test_border_point_goes_to_the_cluster_with_the_smallest_core_index() -> None:
    """Two cliques of 4 core points; point 4 is within eps of one core of each but is not core itself.

    scikit-learn grows clusters in the order of their first core point: the cluster holding point 0 is
    grown first and takes the border point, although the other cluster is nearer to it.
    """
    pairs = {(i, j): 0.1 for clique in ((0, 1, 2, 3), (5, 6, 7, 8)) for i in clique for j in clique if i < j}
    pairs.update({(3, 4): 0.5, (4, 5): 0.2})
    rows, columns = map(list, zip(*pairs))
    values = list(pairs.values())
    distances = sp.coo_matrix((values * 2 + [0.0] * 9, (rows + columns + list(range(9)), columns + rows + list(range(9)))),
                              shape=(9, 9)).tocsr()

    labels = dbscan(distances, eps=0.5, min_samples=4)

    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(labels, sklearn_labels(distances, 0.5, 4))
    # Renumbered so that the other clique holds the smallest core index: the border point follows it.
    order = np.array([5, 6, 7, 8, 4, 0, 1, 2, 3])
    permuted = distances[order][:, order]
    np.testing.assert_array_equal(dbscan(permuted, 0.5, 4), [0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(dbscan(permuted, 0.5, 4), sklearn_labels(permuted, 0.5, 4))


def test_absent_diagonal_counts_as_zero_and_a_large_one_does_not_count() -> None:
    distances = sp.csr_matrix((np.array([0.2, 0.2, 0.2, 0.2, 0.9]), np.array([1, 2, 0, 0, 2]),
                               np.array([0, 2, 3, 5])), shape=(3, 3))  # rows 0, 1 without a stored diagonal

    for min_samples in (1, 2, 3):
        np.testing.assert_array_equal(dbscan(distances, 0.5, min_samples), sklearn_labels(distances, 0.5, min_samples))
    # Point 2 counts 0 and not itself (0.9 > eps): 1 neighbour; points 0 and 1 count themselves.
    np.testing.assert_array_equal(core_points(distances, 0.5, 2)[0], [True, True, False])


def test_all_noise_and_empty_inputs() -> None:
    distances = sp.csr_matrix((np.zeros(5), np.arange(5), np.arange(6)), shape=(5, 5))

    np.testing.assert_array_equal(dbscan(distances, 0.5, 2), np.full(5, -1))
    np.testing.assert_array_equal(dbscan(distances, 0.5, 1), np.arange(5))
    assert dbscan(sp.csr_matrix((0, 0)), 0.5, 2).shape == (0,)
    with pytest.raises(ValueError, match="square"):
        dbscan(sp.csr_matrix((3, 4)), 0.5, 2)


@pytest.mark.parametrize("seed", range(4))
def test_jaccard_pseudo_labels_equal_sklearn_dbscan(seed: int) -> None:
    """On the Jaccard graph itself (clusters, outliers, borders): the fast path equals the sklearn path."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 24))
    points = np.concatenate([c + 0.7 * rng.normal(size=(int(rng.integers(3, 20)), 24)) for c in centres]
                            + [2 * rng.normal(size=(40, 24))])
    features = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    distances = jaccard_distance(features, 20, 6, backend="torch", max_distance=0.6)
    expected = sklearn_labels(distances, 0.6, 4)
    assert expected.max() >= 1 and (expected < 0).any()

    np.testing.assert_array_equal(dbscan(distances, 0.6, 4), expected)
    np.testing.assert_array_equal(cluster(features, eps=0.6, min_samples=4, k1=20, k2=6, backend="torch"), expected)
