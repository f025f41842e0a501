"""Tests for the k-reciprocal Jaccard distance and the DBSCAN / HDBSCAN pseudo-labels."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN, HDBSCAN
from sklearn.metrics import adjusted_rand_score

from itkm_lightning.clustering import hdbscan, knn_search
from itkm_lightning.clustering import pruned as pruning
from itkm_lightning.clustering import neighbourhoods as steps
from itkm_lightning.clustering import overlaps as overlap_steps
from itkm_lightning.clustering import cluster, jaccard_distance, knn

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Dense reference, written straight from the definition (N x N everywhere, small N only)
# --------------------------------------------------------------------------------------------------


def dense_reference_ranks(features: np.ndarray, k1: int) -> np.ndarray:
    squared_distances = 2.0 - 2.0 * features.astype(np.float64) @ features.astype(np.float64).T
    return np.argsort(squared_distances, axis=1, kind="stable")[:, :k1]


def dense_reference_jaccard(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    features = features.astype(np.float64)
    n = len(features)
    squared_distances = 2.0 - 2.0 * features @ features.T
    ranks = dense_reference_ranks(features, k1)

    def k_reciprocal(i: int, k: int) -> set[int]:
        width = min(k + 1, k1)  # the k1 searched columns, as in Cluster Contrast
        return {int(j) for j in ranks[i, :width] if i in ranks[j, :width]}

    full_sets = [k_reciprocal(i, k1) for i in range(n)]
    half_sets = [k_reciprocal(i, int(np.around(k1 / 2))) for i in range(n)]
    weights = np.zeros((n, n))
    for i in range(n):
        expansion = set(full_sets[i])
        for candidate in full_sets[i]:
            if len(half_sets[candidate] & full_sets[i]) > 2 / 3 * len(half_sets[candidate]):
                expansion |= half_sets[candidate]
        members = sorted(expansion)
        row = np.exp(-squared_distances[i, members])
        weights[i, members] = row / row.sum()
    if k2 != 1:
        weights = np.stack([weights[ranks[i, :k2]].mean(axis=0) for i in range(n)])
    overlap = np.stack([np.minimum(weights[i], weights).sum(axis=1) for i in range(n)])
    return np.clip(1.0 - overlap / (2.0 - overlap), 0.0, None)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def normalise(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def noisy_clusters(seed: int, n_centres: int = 8, per_centre: int = 15, n_noise: int = 30, dim: int = 24,
                   spread: float = 0.6) -> np.ndarray:
    """Loosely clustered random data: some clusters, some outliers, no structure the tests rely on."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    points = [centre + spread * rng.normal(size=(per_centre, dim)) for centre in centres]
    points.append(rng.normal(size=(n_noise, dim)) * 2)
    return normalise(np.concatenate(points))


def blobs_with_isolated_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """6 well-separated blobs of 40 points in 32-d plus 2 isolated triples (true label -1).

    The isolated points come as tight triples on opposite sides of the sphere, far from every blob and
    from each other: a lone point would borrow its nearest blob's weights through the k2 query
    expansion (for k2 > 1) and legitimately join that blob, whereas a triple smaller than
    min_samples whose k2 neighbours are its own members shares no weight with anything else.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 32)) * 3
    blobs = [centre + 0.3 * rng.normal(size=(40, 32)) for centre in centres]
    direction = rng.normal(size=32) * 3
    triples = [sign * direction + 0.05 * rng.normal(size=(3, 32)) for sign in (1, -1)]
    labels = np.concatenate([np.repeat(np.arange(6), 40), np.full(6, -1)])
    return normalise(np.concatenate(blobs + triples)), labels


def min_rank_gap(features: np.ndarray, widths: list[int]) -> float:
    """Smallest distance gap at the rank positions where neighbour lists are cut (tie guard)."""
    squared_distances = np.sort(2.0 - 2.0 * features.astype(np.float64) @ features.astype(np.float64).T, axis=1)
    return float(min((squared_distances[:, w] - squared_distances[:, w - 1]).min() for w in widths))


# --------------------------------------------------------------------------------------------------
# Jaccard distance against the dense reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n_centres", "k1", "k2"), [(0, 8, 20, 6), (1, 20, 30, 6), (2, 8, 9, 1), (3, 8, 11, 3), (4, 8, 25, 2)]
)
def test_sparse_jaccard_equals_dense_reference(seed: int, n_centres: int, k1: int, k2: int) -> None:
    features = noisy_clusters(seed, n_centres=n_centres)
    cut_widths = sorted({k1, min(int(np.around(k1 / 2)) + 1, k1), k2})
    assert min_rank_gap(features, cut_widths) > 1e-6, "tie guard: pick another seed"
    reference = dense_reference_jaccard(features, k1, k2)

    sparse = jaccard_distance(features, k1, k2, backend="torch")

    assert isinstance(sparse, sp.csr_matrix) and sparse.shape == reference.shape
    rows, columns = np.repeat(np.arange(sparse.shape[0]), np.diff(sparse.indptr)), sparse.indices
    np.testing.assert_allclose(sparse.data, reference[rows, columns], atol=1e-5)
    absent = np.ones(reference.shape, dtype=bool)
    absent[rows, columns] = False
    assert absent.any() and reference[absent].min() >= 1 - 1e-6
    # Stored pairs are exactly those sharing weight: the reference is < 1 there.
    assert reference[rows, columns].max() < 1 - 1e-6
    np.testing.assert_array_equal(sparse.diagonal(), 0)
    assert (sparse != sparse.T).nnz == 0


def test_jaccard_stores_explicit_zero_diagonal_and_duplicates() -> None:
    features = noisy_clusters(4)
    features = np.concatenate([features, features[:3]])  # exact duplicates: distance 0 up to rounding

    sparse = jaccard_distance(features, k1=10, k2=4)
    labels = cluster(features, k1=10, k2=4)

    n = sparse.shape[0]
    rows = np.repeat(np.arange(n), np.diff(sparse.indptr))
    diagonal_stored = sparse.indices == rows
    assert diagonal_stored.sum() == n and np.all(sparse.data[diagonal_stored] == 0)
    duplicate_entry = (rows == 0) & (sparse.indices == n - 3)
    assert duplicate_entry.sum() == 1 and sparse.data[duplicate_entry][0] < 1e-6
    np.testing.assert_array_equal(labels[:3], labels[n - 3 :])


def test_many_exact_duplicates_do_not_break_the_definition() -> None:
    """More copies than k1: a copy's own row may fall out of its top-k1, leaving it no reciprocal set."""
    rng = np.random.default_rng(15)
    features = np.concatenate([np.repeat(normalise(rng.normal(size=(1, 24))), 12, axis=0), noisy_clusters(15)])

    sparse = jaccard_distance(features, k1=8, k2=3)
    labels = cluster(features, k1=8, k2=3)

    np.testing.assert_array_equal(sparse.diagonal(), 0)
    rows = np.repeat(np.arange(sparse.shape[0]), np.diff(sparse.indptr))
    assert (sparse.indices == rows).sum() == sparse.shape[0]
    assert labels.shape == (len(features),) and labels.dtype == np.int64
    assert labels[0] >= 0 and np.all(labels[:12] == labels[0])


def test_jaccard_max_distance_keeps_only_close_pairs() -> None:
    features = noisy_clusters(16)

    full = jaccard_distance(features, k1=12, k2=4)
    pruned = jaccard_distance(features, k1=12, k2=4, max_distance=0.6)

    rows = np.repeat(np.arange(full.shape[0]), np.diff(full.indptr))
    expected = {(r, c) for r, c, d in zip(rows, full.indices, full.data) if d <= 0.6}
    pruned_rows = np.repeat(np.arange(pruned.shape[0]), np.diff(pruned.indptr))
    assert set(zip(pruned_rows, pruned.indices)) == expected
    assert pruned.nnz < full.nnz and pruned.data.max() <= 0.6
    with pytest.raises(ValueError, match="max_distance must be >= 0"):
        jaccard_distance(features, k1=12, k2=4, max_distance=-0.1)


def test_jaccard_memory_is_sparse() -> None:
    features = noisy_clusters(5, n_centres=40, per_centre=20, n_noise=100, dim=32)

    sparse = jaccard_distance(features, k1=20, k2=6)

    assert sparse.nnz < 0.25 * sparse.shape[0] ** 2


# --------------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dbscan_labels_equal_dense_dbscan(seed: int) -> None:
    features = noisy_clusters(seed)
    reference = dense_reference_jaccard(features, 20, 6)
    expected = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(reference)
    assert len(set(expected) - {-1}) >= 2 and (expected == -1).any(), "data must give clusters and noise"

    labels = cluster(features, "dbscan", eps=0.6, min_samples=4, k1=20, k2=6, backend="torch")

    assert adjusted_rand_score(expected, labels) == 1.0
    np.testing.assert_array_equal(labels == -1, expected == -1)


def far_filled(reference: np.ndarray) -> np.ndarray:
    """Dense matrix with the pairs that share no weight (distance 1) marked unrelated (far = 2)."""
    return np.where(reference >= 1 - 1e-9, hdbscan.HDBSCAN_FAR_DISTANCE, reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_hdbscan_matches_dense_hdbscan(seed: int) -> None:
    features = noisy_clusters(seed)
    reference = far_filled(dense_reference_jaccard(features, 20, 6))
    dense_model = HDBSCAN(min_cluster_size=4, metric="precomputed", copy=True).fit(reference)
    assert len(set(dense_model.labels_) - {-1}) >= 2

    sparse = jaccard_distance(features, 20, 6, backend="torch")
    sparse_model, kept = hdbscan._fit_hdbscan(sparse, 4)
    labels = cluster(features, "hdbscan", min_samples=4, k1=20, k2=6, backend="torch")

    assert len(kept) == len(features)
    # The single-linkage hierarchy is identical: cuts through it are tie-free and must agree exactly.
    for cut in (0.2, 0.35, 0.5, 0.7):
        expected_cut = dense_model.dbscan_clustering(cut, min_cluster_size=4)
        assert adjusted_rand_score(expected_cut, sparse_model.dbscan_clustering(cut, min_cluster_size=4)) == 1.0
    # The selected clusters can differ only by tie-breaking between equal mutual-reachability distances.
    assert adjusted_rand_score(dense_model.labels_, labels) >= 0.95


def test_dbscan_default_parameters_recover_blobs() -> None:
    features, truth = blobs_with_isolated_points()
    blob = truth >= 0

    labels = cluster(features[blob])

    assert adjusted_rand_score(truth[blob], labels) >= 0.95


def test_torch_tensor_input_matches_numpy() -> None:
    features, _ = blobs_with_isolated_points()

    from_tensor = cluster(torch.from_numpy(features).double(), k1=20, k2=6)
    from_numpy = cluster(features, k1=20, k2=6)

    assert from_tensor.dtype == np.int64
    np.testing.assert_array_equal(from_tensor, from_numpy)


def test_empty_input_gives_empty_labels() -> None:
    labels = cluster(np.zeros((0, 16), np.float32))

    assert labels.dtype == np.int64 and labels.shape == (0,)


# --------------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------------


def test_torch_and_faiss_knn_agree() -> None:
    pytest.importorskip("faiss")
    features = noisy_clusters(6)
    queries = features[50:90]

    faiss_similarities, faiss_indices = knn(queries, features, 13, backend="faiss")
    torch_similarities, torch_indices = knn(queries, features, 13, backend="torch")

    assert faiss_indices.dtype == torch_indices.dtype == np.int64
    assert faiss_similarities.dtype == torch_similarities.dtype == np.float32
    np.testing.assert_allclose(faiss_similarities, torch_similarities, atol=1e-5)
    exact = queries.astype(np.float64) @ features.astype(np.float64).T
    np.testing.assert_allclose(torch_similarities, np.take_along_axis(exact, torch_indices, 1), atol=1e-5)
    # Compare the first 12 ranks; a rank may differ only when it ties with a neighbouring rank.
    separated = np.abs(np.diff(torch_similarities, axis=1)) > 1e-5  # rank p vs p + 1
    untied = separated[:, 1:] & separated[:, :-1]
    untied = np.concatenate([separated[:, :1], untied], axis=1)  # rank 0 has no predecessor
    assert untied.mean() > 0.9
    np.testing.assert_array_equal(faiss_indices[:, :12][untied], torch_indices[:, :12][untied])


def test_knn_is_exact_and_sorted() -> None:
    features = noisy_clusters(7)

    similarities, indices = knn(features[:30], features, 5, backend="torch")

    exact = features[:30].astype(np.float64) @ features.astype(np.float64).T
    expected = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    assert np.all(np.diff(similarities, axis=1) <= 0)
    np.testing.assert_array_equal(indices[:, 0], np.arange(30))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_exclude_self_with_a_query_slice(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    features = noisy_clusters(8)
    start = 40

    _, with_self = knn(features[start : start + 20], features, 6, backend=backend)
    _, without_self = knn(features[start : start + 20], features, 5, backend=backend, exclude_self=True,
                          query_offset=start)

    assert without_self.shape == (20, 5)
    assert not np.any(without_self == (start + np.arange(20))[:, None])
    np.testing.assert_array_equal(without_self, with_self[:, 1:])


def test_faiss_backend_without_faiss_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def import_without_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_faiss)
    features = noisy_clusters(9)

    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn(features, features, 3, backend="faiss")
    _, indices = knn(features, features, 3, backend="auto")  # falls back to torch
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(features)))


# --------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": -0.1}, "eps must be > 0"),
        ({"eps": 1.0}, "eps must be < 1 .*distance 1"),
        ({"min_samples": 0}, "min_samples must be >= 1"),
        ({"k1": 0}, "k1 must be >= 1"),
        ({"k2": 0}, "k2 must be >= 1"),
        ({"k1": 5, "k2": 6}, "k2 must not exceed k1"),
        ({"method": "kmeans"}, "method must be 'dbscan' or 'hdbscan'"),
        ({"method": "hdbscan", "min_samples": 1}, "HDBSCAN needs min_samples"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, message: str) -> None:
    features = noisy_clusters(10)

    with pytest.raises(ValueError, match=message):
        cluster(features, **kwargs)


def test_too_few_features_for_k1() -> None:
    features = noisy_clusters(11)[:12]

    with pytest.raises(ValueError, match="k1=30 needs more than 30 features in a block; got 12; lower clustering k1"):
        cluster(features)


def test_nan_features_raise() -> None:
    features = noisy_clusters(12)
    features[3, 2] = np.nan

    with pytest.raises(ValueError, match="NaN"):
        cluster(features, k1=10)


@pytest.mark.parametrize("shape", [(40,), (4, 10, 8)])
def test_non_2d_features_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        cluster(np.ones(shape, np.float32), k1=3, k2=2)


def test_unnormalised_features_raise() -> None:
    features = noisy_clusters(13) * 3

    with pytest.raises(ValueError, match="L2-normalised"):
        cluster(features, k1=10)


def test_knn_rejects_k_larger_than_database_and_nan() -> None:
    features = noisy_clusters(14)[:8]
    with_nan = torch.from_numpy(features.copy())
    with_nan[2, 0] = float("nan")

    with pytest.raises(ValueError, match="NaN"):
        knn(with_nan, features, 2)

    with pytest.raises(ValueError, match="lower k"):
        knn(features, features, 9)
    with pytest.raises(ValueError, match="dimensions"):
        knn(features[:, :4], features, 2)


def test_module_exposes_install_hint() -> None:
    assert "itkm-lightning[faiss]" in knn_search.FAISS_INSTALL_HINT


# --------------------------------------------------------------------------------------------------
# Pruned (prefix-filtered) Jaccard path against the all-pairs path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "max_distance"), [(0, 0.6), (1, 0.3), (2, 0.85), (3, 0.6), (4, 0.05)])
def test_pruned_jaccard_equals_all_pairs(seed: int, max_distance: float) -> None:
    rng = np.random.default_rng(seed)
    features = noisy_clusters(seed, n_centres=int(rng.integers(5, 25)), spread=float(rng.uniform(0.3, 0.9)))
    features = np.concatenate([features, features[:4]])  # duplicates: overlap 1, distance 0 off the diagonal
    ranks = knn(features, features, 20, backend="torch")[1]
    neighbourhoods = steps._expanded_neighbourhoods(steps._reciprocal_neighbours(ranks, 20),
                                                    steps._reciprocal_neighbours(ranks, 10))
    weights = steps._local_query_expansion(steps._gaussian_weights(neighbourhoods, features), ranks, 6)

    pruned = pruning._pruned_jaccard(weights, max_distance)
    every = overlap_steps._all_pairs_jaccard(weights, max_distance)

    assert every.nnz > weights.shape[0]  # pairs beyond the diagonal, so the comparison means something
    for matrix in (pruned, every):
        matrix.sort_indices()
    np.testing.assert_array_equal(pruned.indptr, every.indptr)
    np.testing.assert_array_equal(pruned.indices, every.indices)
    np.testing.assert_allclose(pruned.data, every.data, atol=1e-6)
    np.testing.assert_array_equal(pruned.diagonal(), 0)


def test_candidate_pairs_hold_every_pair_over_the_threshold() -> None:
    """The prefix filter may keep extra pairs, never lose one: checked against all overlaps at once."""
    features = noisy_clusters(21, n_centres=15, spread=0.5)
    ranks = knn(features, features, 15, backend="torch")[1]
    neighbourhoods = steps._expanded_neighbourhoods(steps._reciprocal_neighbours(ranks, 15),
                                                    steps._reciprocal_neighbours(ranks, 8))
    weights = steps._local_query_expansion(steps._gaussian_weights(neighbourhoods, features), ranks, 4)
    dense = weights.toarray().astype(np.float64)
    overlaps = np.stack([np.minimum(dense[i], dense).sum(axis=1) for i in range(len(dense))])
    for threshold in (0.2, 0.5, 0.8):
        rows, columns = pruning._candidate_pairs(weights, threshold)
        needed = {(i, j) for i, j in zip(*np.nonzero(overlaps >= threshold)) if i < j}
        found = set(zip(rows.tolist(), columns.tolist()))
        assert needed and needed <= found
        assert len(found) < len(dense) ** 2 / 4  # and it does prune


def jaccard_weights(seed: int, k1: int = 20, k2: int = 6) -> sp.csr_matrix:
    """The weight rows V of the Jaccard distance on loosely clustered data, with exact duplicates (overlap 1)."""
    rng = np.random.default_rng(seed)
    features = noisy_clusters(seed, n_centres=int(rng.integers(5, 25)), spread=float(rng.uniform(0.3, 0.9)))
    features = np.concatenate([features, features[:4]])
    ranks = knn(features, features, k1, backend="torch")[1]
    neighbourhoods = steps._expanded_neighbourhoods(steps._reciprocal_neighbours(ranks, k1),
                                                    steps._reciprocal_neighbours(ranks, k1 // 2))
    return steps._local_query_expansion(steps._gaussian_weights(neighbourhoods, features), ranks, k2)


def sharing_pairs(weights: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j that shares a column (positive weights), row-major."""
    support = weights.astype(bool).astype(np.int32)
    shares = sp.triu(support @ support.T, k=1).tocsr()
    return np.repeat(np.arange(shares.shape[0]), np.diff(shares.indptr)), shares.indices.astype(np.int64)


@pytest.mark.parametrize(("seed", "top_entries", "scatter_entries", "threads"),
                         [(5, 32, 1 << 22, 1), (6, 3, 1 << 22, 1), (7, 8, 500, 3), (8, 1, 50, 2)])
def test_bounded_overlaps_are_bit_equal_to_exact_overlaps_and_keep_every_close_pair(
        monkeypatch: pytest.MonkeyPatch, seed: int, top_entries: int, scatter_entries: int, threads: int) -> None:
    """The second filter never drops a pair over the threshold, and its overlaps are scipy's, bit for bit.

    Few top entries exercise the bound's remainder term; tiny scatter blocks make many row blocks, which
    several threads share.
    """
    monkeypatch.setattr(pruning, "TOP_ENTRIES", top_entries)
    monkeypatch.setattr(pruning, "SCATTER_BLOCK_ENTRIES", scatter_entries)
    monkeypatch.setattr(pruning.torch, "get_num_threads", lambda: threads)
    weights = jaccard_weights(seed)
    rows, columns = sharing_pairs(weights)
    order = np.random.default_rng(seed).permutation(len(rows))  # pairs in any order
    rows, columns = rows[order], columns[order]
    exact = overlap_steps._exact_overlaps(weights, rows, columns)
    heaviest = pruning._heaviest_first(weights)

    kept, overlaps = pruning._bounded_overlaps(weights, rows, columns, -1.0, heaviest)
    assert kept.all()
    np.testing.assert_array_equal(overlaps, exact)
    for threshold in (0.2, 0.5, float(np.median(exact[exact > 0.3])), 0.9):
        kept, overlaps = pruning._bounded_overlaps(weights, rows, columns, threshold, heaviest)
        assert (exact >= threshold).any() and kept[exact >= threshold].all()
        if top_entries >= 8 and threshold >= 0.5:
            assert not kept.all()  # and it does prune
        np.testing.assert_array_equal(overlaps[kept], exact[kept])


def reference_pruned_pairs(weights: sp.csr_matrix, max_distance: float) -> dict[tuple[int, int], np.float32]:
    """Every sharing pair i < j, its exact overlap (scipy's minimum), kept when within max_distance."""
    rows, columns = sharing_pairs(weights)
    overlaps = overlap_steps._exact_overlaps(weights, rows, columns)
    distances = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    keep = distances <= max_distance
    return dict(zip(zip(rows[keep].tolist(), columns[keep].tolist()), distances[keep].astype(np.float32)))


@pytest.mark.parametrize(("seed", "threads"), [(9, 1), (10, 1), (11, 3)])
def test_pruned_jaccard_equals_every_pair_within_eps_ties_included(monkeypatch: pytest.MonkeyPatch, seed: int,
                                                                   threads: int) -> None:
    """Candidates, bound and exact overlaps together lose no pair: the pairs within max_distance of all sharing
    pairs, distances equal; max_distance set to distances that occur, so pairs lie exactly at eps."""
    monkeypatch.setattr(pruning, "CANDIDATE_BLOCK_ENTRIES", 2000)  # several candidate blocks, for the threads
    monkeypatch.setattr(pruning, "SCATTER_BLOCK_ENTRIES", 3000)
    monkeypatch.setattr(pruning.torch, "get_num_threads", lambda: threads)
    weights = jaccard_weights(seed)
    rows, columns = sharing_pairs(weights)
    overlaps = overlap_steps._exact_overlaps(weights, rows, columns)
    occurring = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    middle = np.sort(occurring[occurring < 0.9])
    for max_distance in (0.6, float(middle[len(middle) // 2]), float(middle[len(middle) // 5])):
        expected = reference_pruned_pairs(weights, max_distance)
        upper = sp.triu(pruning._pruned_jaccard(weights, max_distance), k=1).tocoo()
        found = dict(zip(zip(upper.row.tolist(), upper.col.tolist()), upper.data))
        assert expected and found.keys() == expected.keys()
        assert all(found[pair] == expected[pair] for pair in expected)
        if max_distance != 0.6:
            assert (occurring == max_distance).any()  # a pair exactly at eps


# --------------------------------------------------------------------------------------------------
# Approximate kNN (optional faiss indexes)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["ivf", "hnsw", "bf16"])
def test_approximate_knn_finds_the_clear_neighbours(index: str) -> None:
    if index != "bf16":
        pytest.importorskip("faiss")
    features, truth = blobs_with_isolated_points()
    features = np.concatenate([features] * 5) + np.float32(1e-3) * np.random.default_rng(0).normal(
        size=(5 * len(features), features.shape[1])).astype(np.float32)
    features = normalise(features)
    truth = np.tile(truth, 5)

    similarities, indices = knn(features, features, 20, index=index, nprobe=4, ef_search=64)
    _, exact = knn(features, features, 20, backend="torch")

    assert indices.shape == (len(features), 20) and indices.dtype == np.int64 and indices.min() >= 0
    assert np.all(np.diff(similarities, axis=1) <= 1e-6)
    blob = truth >= 0  # a blob point's 20 nearest are all in its blob (40 x 5 members): easy for any index
    np.testing.assert_array_equal(truth[indices[blob]], np.repeat(truth[blob][:, None], 20, axis=1))
    np.testing.assert_array_equal(truth[exact[blob]], truth[indices[blob]])


@pytest.mark.parametrize("exclude_self", [False, True])
def test_bf16_search_rescored_in_float32_equals_the_exact_search(monkeypatch: pytest.MonkeyPatch,
                                                                 exclude_self: bool) -> None:
    """bfloat16 picks k + margin candidates, float32 re-scoring orders them: the exact neighbours and similarities
    (noisy data, where many similarities are close; small blocks, so that the queries span several)."""
    monkeypatch.setattr(knn_search, "BF16_BLOCK_ELEMENTS", 20_000)
    features = np.concatenate([noisy_clusters(seed, n_centres=12, n_noise=60, dim=64) for seed in (30, 31)])
    queries = features[50:170]
    similarities, indices = knn(queries, features, 15, index="bf16", exclude_self=exclude_self, query_offset=50)
    exact_similarities, exact = knn(queries, features, 15, backend="torch", exclude_self=exclude_self,
                                    query_offset=50)
    assert indices.shape == (120, 15) and indices.dtype == np.int64
    np.testing.assert_allclose(similarities, exact_similarities, atol=1e-6)
    assert [set(row) for row in indices.tolist()] == [set(row) for row in exact.tolist()]
    if exclude_self:
        assert not (indices == np.arange(50, 170)[:, None]).any()


def test_approximate_index_is_chosen_by_config_and_exact_is_the_default() -> None:
    from itkm_lightning.config import ClusteringConfig

    assert ClusteringConfig().knn_options()["index"] == "exact"
    assert ClusteringConfig(knn_index="ivf", knn_nprobe=4).knn_options() == {"index": "ivf", "nprobe": 4,
                                                                              "ef_search": 128}
    with pytest.raises(ValueError, match="index must be"):
        knn(noisy_clusters(17), noisy_clusters(17), 3, index="annoy")
