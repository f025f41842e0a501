"""Pseudo-labels for unsupervised ReID: k-reciprocal Jaccard distance + DBSCAN / HDBSCAN.

The Jaccard distance follows the Cluster Contrast definition (``compute_jaccard_distance`` in
alibaba/cluster-contrast-reid, itself after Zhong et al., CVPR 2017, "Re-ranking with k-reciprocal
encoding"):

1. ``ranks``: the ``k1`` nearest neighbours of every feature, the feature itself included (it is
   normally its own first neighbour). As in Cluster Contrast, the forward neighbourhood for "k"
   is ``ranks[i, :k + 1]`` truncated to the ``k1`` columns that were searched, so the k1 set has
   ``k1`` members and the half set ``round(k1 / 2) + 1``.
2. k-reciprocal set ``R(i, k)``: the forward neighbours ``j`` of ``i`` that also have ``i`` among
   their own forward neighbours.
3. Expansion: for every candidate ``c`` in ``R(i, k1)``, its half set ``R(c, round(k1/2))`` is added
   when more than 2/3 of it already lies in ``R(i, k1)``.
4. Weights over the expanded set: ``exp(-d(i, j))`` with the original squared Euclidean distance of
   L2-normalised features ``d = 2 - 2 <f_i, f_j>``, normalised to sum to 1 per row.
5. Local query expansion: every weight row is replaced by the mean of the rows of its ``k2`` nearest
   neighbours (skipped when ``k2 == 1``).
6. ``J(i, j) = 1 - s / (2 - s)`` with ``s = sum_k min(V_ik, V_jk)`` (rows sum to 1, so the sum of
   maxima is ``2 - s``), clipped at 0.

Unlike the reference, nothing here is N x N: every step is sparse-matrix algebra whose size grows as
O(N * k), and the min-overlap step runs over an inverted index in bounded row blocks.

Representation of the result: a symmetric ``scipy.sparse.csr_matrix`` whose stored entries are the
pairs that share any neighbourhood weight (``s > 0``), the diagonal always stored as an explicit 0.
Every absent pair has Jaccard distance exactly 1 (``s = 0``), the largest possible value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Union

import numpy as np
import scipy.sparse as sp
import torch

FeatureArray = Union[np.ndarray, torch.Tensor]
KnnBackend = Literal["auto", "faiss", "torch"]
KnnIndex = Literal["exact", "ivf", "hnsw"]

FAISS_INSTALL_HINT = "pip install faiss-cpu (or the project's extra: pip install 'itkm-lightning[faiss]')"
# Bounds the (query block x database) similarity matrix of the torch kNN fallback (float32 entries).
TORCH_KNN_BLOCK_ELEMENTS = 1 << 25
# Approximate kNN (index="ivf" / "hnsw"): IVF lists per sqrt(N), and at least this many vectors per list
# (faiss warns below 39 training points per list); HNSW links per node.
IVF_LISTS_PER_SQRT_N = 4
IVF_MIN_LIST_SIZE = 39
HNSW_LINKS = 32
# faiss GPU flat search only supports k up to this value.
FAISS_GPU_MAX_K = 2048
# Bounds the (row, column, value) triples materialised at once in the min-overlap step.
OVERLAP_BLOCK_ENTRIES = 1 << 23
# Pruned Jaccard path (max_distance < 1): row blocks of the candidate products hold about this many
# entries (estimated as prefix entries x CANDIDATE_COLUMN_ESTIMATE), and the exact overlaps are computed
# this many pairs at a time.
CANDIDATE_BLOCK_ENTRIES = 1 << 23
CANDIDATE_COLUMN_ESTIMATE = 100
EXACT_PAIR_BLOCK = 1 << 17
# The candidate filter keeps pairs whose overlap bound reaches the threshold minus this (float rounding).
PREFIX_SLACK = 1e-3
# A feature counts as L2-normalised when its norm is within this distance of 1.
NORM_TOLERANCE = 1e-2
# HDBSCAN only: smallest off-diagonal distance, so that no spanning-tree edge has weight 0 (see below).
HDBSCAN_MIN_DISTANCE = 1e-6
# HDBSCAN only: distance standing for "unrelated" (absent) pairs that must be stored; above any Jaccard distance.
HDBSCAN_FAR_DISTANCE = 2.0


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _to_cpu_float32(array: FeatureArray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def _check_2d_finite(array: np.ndarray, name: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array; got shape {tuple(array.shape)}; reshape it to (N, D).")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values; fix the feature extraction before clustering.")


def _check_normalised(features: np.ndarray) -> None:
    norms = np.linalg.norm(features, axis=1)
    worst = float(np.abs(norms - 1.0).max()) if len(norms) else 0.0
    if worst > NORM_TOLERANCE:
        raise ValueError(
            f"features must be L2-normalised (a row norm is off by {worst:.3g}); "
            "apply torch.nn.functional.normalize(features, dim=1) first."
        )


def _check_neighbourhood_sizes(k1: int, k2: int) -> None:
    if k1 < 1:
        raise ValueError(f"k1 must be >= 1; got {k1}.")
    if k2 < 1:
        raise ValueError(f"k2 must be >= 1; got {k2}.")
    if k2 > k1:
        raise ValueError(f"k2 must not exceed k1; got k2={k2} > k1={k1}; lower clustering k2.")


def _check_enough_features(n: int, k1: int) -> None:
    if k1 >= n:
        raise ValueError(f"k1={k1} needs more than {k1} features in a block; got {n}; lower clustering k1.")


def _check_ranks(ranks: np.ndarray, n: int, k1: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.shape != (n, k1):
        raise ValueError(f"precomputed ranks must have shape (N, k1) = ({n}, {k1}); got {tuple(ranks.shape)}; "
                         "search them with knn(features, features, k1).")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n):
        raise ValueError(f"precomputed ranks must index the {n} features; got values outside [0, {n}).")
    return ranks.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------
# k nearest neighbours
# --------------------------------------------------------------------------------------------------


def _faiss_module():
    try:
        import faiss  # heavy optional dependency: imported where used
    except ImportError as error:
        raise ImportError(f"backend='faiss' needs faiss: {FAISS_INSTALL_HINT}.") from error
    return faiss


def _faiss_available() -> bool:
    try:
        _faiss_module()
    except ImportError:
        return False
    return True


def _faiss_has_gpu(faiss) -> bool:
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return hasattr(faiss, "StandardGpuResources") and get_num_gpus is not None and get_num_gpus() > 0


def _is_cuda_tensor(array: FeatureArray) -> bool:
    return isinstance(array, torch.Tensor) and array.is_cuda


def _use_faiss(backend: KnnBackend, queries: FeatureArray) -> bool:
    if backend != "auto":
        return backend == "faiss"
    if not _faiss_available():
        return False
    # CUDA features with a CPU-only faiss: torch on the GPU beats copying them to a CPU index.
    return not _is_cuda_tensor(queries) or _faiss_has_gpu(_faiss_module())


def _knn_faiss(queries: FeatureArray, database: FeatureArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss_module()
    query_array, database_array = _to_cpu_float32(queries), _to_cpu_float32(database)
    dim = database_array.shape[1]
    use_gpu = _is_cuda_tensor(queries) and _faiss_has_gpu(faiss) and k <= FAISS_GPU_MAX_K
    if use_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(resources, dim)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(database_array)
    similarities, indices = index.search(query_array, k)
    return similarities.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)


def _knn_faiss_approximate(queries: FeatureArray, database: FeatureArray, k: int, index: str, nprobe: int,
                           ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate inner-product search with a faiss CPU index (IVF-Flat or HNSW-Flat).

    Queries whose search returns fewer than k results (IVF lists too small; -1 in faiss) are searched
    again exactly, so every row has k valid neighbours.
    """
    faiss = _faiss_module()
    query_array, database_array = _to_cpu_float32(queries), _to_cpu_float32(database)
    n, dim = database_array.shape
    if index == "ivf":
        nlist = max(1, min(n // IVF_MIN_LIST_SIZE, int(IVF_LISTS_PER_SQRT_N * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        searcher = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        searcher.train(database_array)
        searcher.nprobe = min(nprobe, nlist)
    else:
        searcher = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        searcher.hnsw.efSearch = max(ef_search, k)
    searcher.add(database_array)
    similarities, indices = searcher.search(query_array, k)
    incomplete = np.flatnonzero((indices < 0).any(axis=1))
    if len(incomplete):
        exact = faiss.IndexFlatIP(dim)
        exact.add(database_array)
        similarities[incomplete], indices[incomplete] = exact.search(query_array[incomplete], k)
    return similarities.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)


def _knn_torch(queries: FeatureArray, database: FeatureArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # Blockwise exact search: memory is bounded by TORCH_KNN_BLOCK_ELEMENTS, never Nq x Nd at once.
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    query_tensor = torch.as_tensor(queries).detach().to(device=device, dtype=torch.float32)
    database_tensor = torch.as_tensor(database).detach().to(device=device, dtype=torch.float32)
    block_size = max(1, TORCH_KNN_BLOCK_ELEMENTS // max(1, database_tensor.shape[0]))
    similarity_blocks, index_blocks = [], []
    with torch.no_grad():
        for start in range(0, query_tensor.shape[0], block_size):
            block = query_tensor[start : start + block_size] @ database_tensor.T
            top = torch.topk(block, k, dim=1, largest=True, sorted=True)
            similarity_blocks.append(top.values.cpu())
            index_blocks.append(top.indices.cpu())
    if not similarity_blocks:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return torch.cat(similarity_blocks).numpy(), torch.cat(index_blocks).numpy().astype(np.int64)


def _drop_self_matches(
    similarities: np.ndarray, indices: np.ndarray, k: int, query_offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """From k + 1 results per query, drop the query's own database row (or, absent, the last result)."""
    self_index = query_offset + np.arange(indices.shape[0])[:, None]
    is_self = indices == self_index
    # Rows where self was not returned (ties with duplicates) lose their last, least similar result.
    is_self[~is_self.any(axis=1), -1] = True
    is_self &= np.cumsum(is_self, axis=1) == 1  # drop exactly one entry per row
    keep = ~is_self
    return similarities[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def knn(
    queries: FeatureArray,
    database: FeatureArray,
    k: int,
    *,
    backend: KnnBackend = "auto",
    exclude_self: bool = False,
    query_offset: int = 0,
    index: KnnIndex = "exact",
    nprobe: int = 16,
    ef_search: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product (cosine similarity for L2-normalised features).

    Exact by default; ``index="ivf"`` or ``"hnsw"`` searches an approximate faiss index instead (CPU),
    see :func:`_knn_faiss_approximate`.

    Args:
        queries: (Nq, D) features, numpy or torch (any device).
        database: (Nd, D) features searched for every query. Queries are separate from the database so
            that a caller can shard the queries (e.g. one slice per DDP rank) against all features.
        k: neighbours per query.
        backend: "faiss" (IndexFlatIP; the GPU index when faiss has GPUs and ``queries`` is a CUDA
            tensor), "torch" (blockwise matmul + topk on the queries' device), or "auto" (faiss when
            installed, except for CUDA queries with a CPU-only faiss; torch otherwise).
        exclude_self: drop each query's own database row from its results. Query row ``q`` is taken
            to be database row ``query_offset + q``.
        query_offset: database row of the first query, for ``exclude_self`` with a query slice.
        index: "exact" (``backend`` decides how), or an approximate faiss CPU index: "ivf"
            (``IndexIVFFlat``, about 4 sqrt(Nd) lists, ``nprobe`` of them searched per query) or "hnsw"
            (``IndexHNSWFlat``, 32 links per node, ``ef_search`` candidates per query).
        nprobe, ef_search: the approximate indexes' search effort (more: slower, nearer to exact).

    Returns:
        ``(similarities, indices)``: inner products (higher is nearer), (Nq, k) float32 sorted in
        descending order, and database row indices, (Nq, k) int64.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch'; got {backend!r}.")
    if len(queries.shape) != 2 or len(database.shape) != 2:
        raise ValueError(
            f"queries and database must be 2-D (N, D); got shapes {tuple(queries.shape)} and "
            f"{tuple(database.shape)}; reshape them to (N, D)."
        )
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions but the database has {database.shape[1]}; "
            "use features from the same encoder."
        )
    for array, name in ((queries, "queries"), (database, "database")):
        finite = torch.isfinite(array).all() if isinstance(array, torch.Tensor) else np.isfinite(array).all()
        if not bool(finite):
            raise ValueError(f"{name} contain NaN or infinite values; fix the feature extraction first.")
    searched = k + 1 if exclude_self else k
    if k < 1 or searched > database.shape[0]:
        raise ValueError(
            f"k={k} neighbours{' (plus self)' if exclude_self else ''} need at least {searched} database rows "
            f"and k >= 1; got {database.shape[0]} rows; lower k."
        )
    if index not in ("exact", "ivf", "hnsw"):
        raise ValueError(f"index must be 'exact', 'ivf' or 'hnsw'; got {index!r}.")
    if index != "exact":
        similarities, indices = _knn_faiss_approximate(queries, database, searched, index, nprobe, ef_search)
    else:
        search = _knn_faiss if _use_faiss(backend, queries) else _knn_torch
        similarities, indices = search(queries, database, searched)
    if exclude_self:
        similarities, indices = _drop_self_matches(similarities, indices, k, query_offset)
    return similarities, indices


# --------------------------------------------------------------------------------------------------
# k-reciprocal Jaccard distance
# --------------------------------------------------------------------------------------------------


def _forward_neighbours(ranks: np.ndarray, width: int) -> sp.csr_matrix:
    """Boolean (N, N) matrix with row i marking ranks[i, :width]."""
    n = ranks.shape[0]
    columns = ranks[:, :width].ravel()
    rows = np.repeat(np.arange(n), width)
    return sp.csr_matrix((np.ones(len(columns), dtype=bool), (rows, columns)), shape=(n, n))


def _reciprocal_neighbours(ranks: np.ndarray, k: int) -> sp.csr_matrix:
    """Boolean (N, N) matrix of k-reciprocal sets: j in forward(i) and i in forward(j)."""
    width = min(k + 1, ranks.shape[1])  # Cluster Contrast indexes [:k+1] into k1 searched columns
    forward = _forward_neighbours(ranks, width)
    return forward.multiply(forward.T).tocsr()


def _expanded_neighbourhoods(reciprocal: sp.csr_matrix, half_reciprocal: sp.csr_matrix) -> sp.csr_matrix:
    """Add R(c, k1/2) to R(i, k1) for each candidate c in R(i, k1) that overlaps it by more than 2/3."""
    reciprocal_int = reciprocal.astype(np.int32)
    half_int = half_reciprocal.astype(np.int32)
    overlap = (reciprocal_int @ half_int.T).multiply(reciprocal_int).tocsr()  # |R(i) & H(c)| for c in R(i)
    overlap.eliminate_zeros()
    half_sizes = np.diff(half_int.indptr)
    overlap_rows = np.repeat(np.arange(overlap.shape[0]), np.diff(overlap.indptr))
    accepted = overlap.data > (2.0 / 3.0) * half_sizes[overlap.indices]
    candidates = sp.csr_matrix(
        (np.ones(int(accepted.sum()), np.int32), (overlap_rows[accepted], overlap.indices[accepted])),
        shape=overlap.shape,
    )
    expanded = reciprocal_int + candidates @ half_int
    expanded.data[:] = 1
    expanded.sort_indices()
    return expanded


def _per_row(ufunc: np.ufunc, values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """ufunc reduction of every CSR row (rows without entries get 0)."""
    result = np.zeros(len(indptr) - 1, dtype=values.dtype)
    nonempty = np.flatnonzero(np.diff(indptr) > 0)
    if len(nonempty):
        result[nonempty] = ufunc.reduceat(values, indptr[nonempty])
    return result


def _sampled_dots(pattern: sp.csr_matrix, features: np.ndarray) -> np.ndarray:
    """<f_i, f_j> for every stored (i, j) of ``pattern``, in CSR order (float32).

    torch's sampled dense-dense product (SDDMM) computes only the stored entries, on all torch threads,
    without gathering two 512-d rows per pair (3x faster than a gathered einsum at 100k).
    """
    if pattern.nnz == 0:
        return np.zeros(0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        sampled = torch.sparse_csr_tensor(
            torch.from_numpy(pattern.indptr.astype(np.int64)), torch.from_numpy(pattern.indices.astype(np.int64)),
            torch.zeros(pattern.nnz, dtype=torch.float32), size=pattern.shape, check_invariants=False)
        matrix = torch.from_numpy(features)
        product = torch.sparse.sampled_addmm(sampled, matrix, matrix.T.contiguous(), beta=0.0)
    return product.values().numpy().astype(np.float32, copy=False)


def _gaussian_weights(neighbourhoods: sp.csr_matrix, features: np.ndarray) -> sp.csr_matrix:
    """exp(-(2 - 2 f_i.f_j)) over each row's stored pairs, normalised to sum 1 per row (softmax)."""
    rows = np.repeat(np.arange(neighbourhoods.shape[0]), np.diff(neighbourhoods.indptr))
    columns = neighbourhoods.indices
    dots = _sampled_dots(neighbourhoods, features)
    # Subtracting each row's smallest distance leaves the softmax unchanged and avoids underflow.
    distances = 2.0 - 2.0 * dots
    weights = np.exp(-(distances - _per_row(np.minimum, distances, neighbourhoods.indptr)[rows]))
    weights /= _per_row(np.add, weights, neighbourhoods.indptr)[rows]
    return sp.csr_matrix((weights.astype(np.float32), columns.copy(), neighbourhoods.indptr.copy()),
                         shape=neighbourhoods.shape)


def _local_query_expansion(weights: sp.csr_matrix, ranks: np.ndarray, k2: int) -> sp.csr_matrix:
    """Replace every row by the mean of the rows of its k2 nearest neighbours."""
    if k2 == 1:
        return weights  # Cluster Contrast skips the expansion for k2 == 1
    averaging = _forward_neighbours(ranks, k2).astype(np.float32) / np.float32(k2)
    expanded = (averaging @ weights).tocsr()
    expanded.sort_indices()
    return expanded


def _row_blocks(entries_per_row: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Split rows into consecutive blocks whose summed entries stay near the budget."""
    cumulative = np.concatenate(([0], np.cumsum(entries_per_row, dtype=np.int64)))
    blocks, start = [], 0
    while start < len(entries_per_row):
        stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)  # a single huge row still forms its own block
        blocks.append((start, stop))
        start = stop
    return blocks


def _column_positions(weights: sp.csr_matrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """The CSC copy of ``weights`` (rows sorted per column) and the CSC slot of every CSR entry."""
    entry_ids = sp.csr_matrix(
        (np.arange(weights.nnz, dtype=np.int64), weights.indices, weights.indptr), shape=weights.shape
    ).tocsc()
    entry_ids.sort_indices()
    positions = np.empty(weights.nnz, dtype=np.int64)
    positions[entry_ids.data] = np.arange(weights.nnz)
    by_column = sp.csc_matrix((weights.data[entry_ids.data], entry_ids.indices, entry_ids.indptr), shape=weights.shape)
    return by_column, positions


def _upper_overlap_block(
    weights: sp.csr_matrix, by_column: sp.csc_matrix, positions: np.ndarray, start: int, stop: int
) -> sp.csr_matrix:
    """s_ij = sum_k min(V_ik, V_jk) for rows start <= i < stop and every j >= i sharing a column with i.

    Inverted index: a stored V_ik meets every V_jk of column k. Column rows are sorted, so the pairs
    with j >= i are the column's slots from V_ik's own slot onwards: each pair is computed once, in
    one vectorised ragged gather, and the duplicates of (i, j) over k are summed by the CSR conversion.
    """
    entries = slice(weights.indptr[start], weights.indptr[stop])
    entry_rows = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(weights.indptr[start : stop + 1]))
    first_slot = positions[entries]
    slot_counts = by_column.indptr[weights.indices[entries] + 1] - first_slot
    owner = np.repeat(np.arange(len(first_slot), dtype=np.int32), slot_counts)
    # Slot of the p-th pair of entry e: first_slot[e] + p.
    slots = np.arange(len(owner), dtype=np.int64)
    slots += np.repeat(first_slot - (np.cumsum(slot_counts) - slot_counts), slot_counts)
    minima = np.minimum(weights.data[entries][owner], by_column.data[slots])
    # A zero on every diagonal keeps it stored even for a row without weights (pathological ties).
    block_rows = np.arange(stop - start, dtype=np.int32)
    return sp.coo_matrix(
        (
            np.concatenate((minima, np.zeros(len(block_rows), minima.dtype))),
            (np.concatenate((entry_rows[owner], block_rows)), np.concatenate((by_column.indices[slots], block_rows + start))),
        ),
        shape=(stop - start, weights.shape[1]),
    ).tocsr()


def _overlap_to_distance(block: sp.csr_matrix, start: int, max_distance: float) -> sp.csr_matrix:
    """Jaccard distance 1 - s / (2 - s) (rows sum to 1), clipped at 0, diagonal exactly 0, pruned."""
    overlaps = block.data.astype(np.float64)
    distances = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    distances[block.indices == rows + start] = 0.0
    keep = distances <= max_distance
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows[keep], minlength=block.shape[0]))))
    return sp.csr_matrix((distances[keep].astype(np.float32), block.indices[keep], indptr), shape=block.shape)


def _mirror_upper(upper: sp.csr_matrix) -> sp.csr_matrix:
    """Full symmetric matrix from its upper triangle, keeping explicit zeros.

    Built through COO conversions only: scipy's sparse addition would drop the explicit zeros.
    """
    coo = upper.tocoo()
    strict = coo.row != coo.col
    full = sp.coo_matrix(
        (
            np.concatenate((coo.data, coo.data[strict])),
            (np.concatenate((coo.row, coo.col[strict])), np.concatenate((coo.col, coo.row[strict]))),
        ),
        shape=upper.shape,
    ).tocsr()
    full.sort_indices()
    return full


def _overlap_threshold(max_distance: float) -> float:
    """Smallest overlap s with Jaccard distance 1 - s / (2 - s) <= max_distance."""
    return 2.0 * (1.0 - max_distance) / (2.0 - max_distance)


def _prefix_split(weights: sp.csr_matrix, threshold: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every row's heaviest entries up to the point where the rest weighs less than ``threshold``.

    Returns the prefix (a CSR matrix holding those entries' weights, in the row's column order) and each
    row's suffix mass (the summed weight of the entries left out, < threshold).
    """
    n = weights.shape[0]
    rows = np.repeat(np.arange(n), np.diff(weights.indptr))
    # Heaviest first within each row, rows kept apart: one float64 key (weights lie in [0, 1]).
    key = rows.astype(np.float64)
    key -= weights.data * 0.5
    order = np.argsort(key, kind="stable")
    sorted_weights = weights.data[order].astype(np.float64)
    cumulative = np.cumsum(sorted_weights)
    bounds = np.concatenate(([0.0], cumulative))
    row_end = bounds[weights.indptr[1:]]
    tail = row_end[rows] - cumulative + sorted_weights  # weight from this entry to the row's end
    in_prefix = np.empty(len(order), dtype=bool)
    in_prefix[order] = tail >= threshold  # back in CSR order
    suffix_mass = np.bincount(rows[~in_prefix], weights=weights.data[~in_prefix], minlength=n)
    counts = np.bincount(rows[in_prefix], minlength=n)
    prefix = sp.csr_matrix((weights.data[in_prefix], weights.indices[in_prefix],
                            np.concatenate(([0], np.cumsum(counts)))), shape=weights.shape)
    return prefix, suffix_mass


def _same_pattern(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def _candidate_pairs(weights: sp.csr_matrix, threshold: float,
                     share: RowShare | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j that may overlap by s_ij >= threshold: every such pair is among them (prefix filtering).

    With P_i the heaviest entries of row i whose remainder (suffix) weighs less than the threshold, a pair
    sharing no column of P_i overlaps by less than the threshold. For a pair that does, with
    X1 = sum of V_ic and X2 = sum of V_jc over the shared columns c of P_i,
    s_ij <= min(X1, X2) + min(suffix_i, |V_j| - X2), an upper bound that two sparse products give for all
    pairs at once. A pair is kept when the bound reaches the threshold from both sides (i's and j's).
    With a ``share``, this process bounds the rows of ``share.rows`` only and the directed candidates of
    every process are gathered before the two sides are matched.
    """
    n = weights.shape[0]
    first = 0 if share is None else share.rows.start
    prefix, suffix_mass = _prefix_split(weights if share is None else weights[share.rows], threshold)
    prefix_support = sp.csr_matrix((np.ones(prefix.nnz, np.float32), prefix.indices, prefix.indptr), shape=prefix.shape)
    support_t = sp.csr_matrix((np.ones(weights.nnz, np.float32), weights.indices, weights.indptr),
                              shape=weights.shape).T.tocsr()
    weights_t = weights.T.tocsr()
    row_mass = np.asarray(weights.sum(axis=1, dtype=np.float64)).ravel().astype(np.float32)
    suffix_mass = suffix_mass.astype(np.float32)
    kept_rows, kept_columns = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, stop in _row_blocks(np.diff(prefix.indptr) * CANDIDATE_COLUMN_ESTIMATE, CANDIDATE_BLOCK_ENTRIES):
        # X1 and X2 by scipy's C++ sparse products. Both have the same sparsity pattern, and scipy emits the
        # columns of a product row in an order fixed by the operands' patterns, so the entries line up
        # (checked; sorted only if scipy ever dropped an entry, which needs a zero sum of positive weights).
        own_mass = prefix[start:stop] @ support_t
        other_mass = prefix_support[start:stop] @ weights_t
        if not _same_pattern(own_mass, other_mass):
            own_mass.sort_indices()
            other_mass.sort_indices()
            if not _same_pattern(own_mass, other_mass):  # pragma: no cover - zero sums of positive weights
                other_mass = other_mass.multiply(own_mass.astype(bool)).tocsr()
                own_mass = own_mass.multiply(other_mass.astype(bool)).tocsr()
                own_mass.sort_indices()
                other_mass.sort_indices()
        local_rows = np.repeat(np.arange(start, stop), np.diff(own_mass.indptr))
        rows = local_rows + first
        bound = np.minimum(own_mass.data, other_mass.data)
        np.subtract(row_mass[own_mass.indices], other_mass.data, out=other_mass.data)
        bound += np.minimum(suffix_mass[local_rows], other_mass.data, out=other_mass.data)
        keep = bound >= threshold
        keep &= own_mass.indices != rows
        kept_rows.append(rows[keep])
        kept_columns.append(own_mass.indices[keep])
    rows, columns = np.concatenate(kept_rows).astype(np.int64), np.concatenate(kept_columns).astype(np.int64)
    if share is not None:
        rows, columns = share.gather(rows), share.gather(columns)
    directed = sp.csr_matrix((np.ones(len(rows), np.int8), (rows, columns)), shape=(n, n))
    both = sp.triu(directed.multiply(directed.T), k=1).tocsr()  # kept from both sides, i < j
    return np.repeat(np.arange(n), np.diff(both.indptr)), both.indices.astype(np.int64)


def _exact_overlaps(weights: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """s_ij = sum_k min(V_ik, V_jk) for the given pairs (scipy's sparse elementwise minimum, float64 sum)."""
    overlaps = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), EXACT_PAIR_BLOCK):
        block = slice(start, start + EXACT_PAIR_BLOCK)
        minima = weights[rows[block]].minimum(weights[columns[block]])
        overlaps[block] = np.asarray(minima.sum(axis=1, dtype=np.float64)).ravel()
    return overlaps


@dataclass(frozen=True)
class RowShare:
    """One process's share of the Jaccard graph's rows under DDP (see ``distributed.jaccard_row_share``).

    ``rows``: the rows i this process bounds and whose pairs (i, j > i) it computes; ``gather``: concatenates
    a 1-D array over all processes in rank order (every process calls it the same number of times).
    """

    rows: slice
    gather: Callable[[np.ndarray], np.ndarray]


def _pruned_jaccard(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    """Only the pairs within max_distance (< 1): candidates by prefix filtering, then their exact overlap.

    The same distances as the all-pairs path for every pair within ``max_distance`` (the overlaps are
    summed in float64 instead of float32, so a pair within a float32 rounding of ``max_distance`` may
    fall on the other side), without enumerating the O(N * (N k / N)^2) pairs that share some weight.
    With a ``share`` the rows are split over the processes and every process returns the whole matrix.
    """
    n = weights.shape[0]
    threshold = _overlap_threshold(max_distance)
    rows, columns = _candidate_pairs(weights, threshold - PREFIX_SLACK, share)
    if share is not None:
        mine = (rows >= share.rows.start) & (rows < share.rows.stop)
        rows, columns = rows[mine], columns[mine]
    overlaps = _exact_overlaps(weights, rows, columns)
    distances = np.clip(1.0 - overlaps / (2.0 - overlaps), 0.0, None)
    keep = distances <= max_distance
    rows, columns, distances = rows[keep], columns[keep], distances[keep]
    if share is not None:
        rows, columns, distances = share.gather(rows), share.gather(columns), share.gather(distances)
    diagonal = np.arange(n)
    upper = sp.csr_matrix(
        (np.concatenate((distances, np.zeros(n))).astype(np.float32),
         (np.concatenate((rows, diagonal)), np.concatenate((columns, diagonal)))),
        shape=(n, n),
    )
    return _mirror_upper(upper)


def _jaccard_from_weights(weights: sp.csr_matrix, max_distance: float, share: RowShare | None = None) -> sp.csr_matrix:
    if max_distance < 1.0 and _overlap_threshold(max_distance) > PREFIX_SLACK:
        return _pruned_jaccard(weights, max_distance, share)
    return _all_pairs_jaccard(weights, max_distance)  # every process computes all rows (HDBSCAN: max_distance 1)


def _all_pairs_jaccard(weights: sp.csr_matrix, max_distance: float) -> sp.csr_matrix:
    by_column, positions = _column_positions(weights)
    pairs_per_entry = by_column.indptr[weights.indices + 1] - positions
    cumulative = np.concatenate(([0], np.cumsum(pairs_per_entry)))
    pairs_per_row = cumulative[weights.indptr[1:]] - cumulative[weights.indptr[:-1]]
    blocks = [
        _overlap_to_distance(_upper_overlap_block(weights, by_column, positions, start, stop), start, max_distance)
        for start, stop in _row_blocks(pairs_per_row, OVERLAP_BLOCK_ENTRIES)
    ]
    return _mirror_upper(sp.vstack(blocks, format="csr"))


def jaccard_distance(
    features: FeatureArray,
    k1: int = 30,
    k2: int = 6,
    *,
    backend: KnnBackend = "auto",
    max_distance: float = 1.0,
    ranks: np.ndarray | None = None,
    knn_options: dict | None = None,
    share: RowShare | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance (Cluster Contrast definition; see the module docstring).

    Args:
        features: (N, D) L2-normalised features, numpy or torch (any device; the kNN search may run
            on the tensor's GPU, the rest runs on CPU in float32).
        k1: k-reciprocal neighbourhood size (needs N > k1).
        k2: local query expansion size (1 <= k2 <= k1).
        backend: kNN backend, see :func:`knn`.
        max_distance: keep only pairs at distance <= max_distance (default 1: every pair that shares
            weight). DBSCAN only needs pairs within eps, which makes the matrix far smaller.
        ranks: precomputed ``knn(features, features, k1)[1]`` (N, k1), the feature itself included;
            lets a caller run the search elsewhere (e.g. sharded over DDP ranks, see
            ``itkm_lightning.distributed.sharded_knn``). Searched here when None.
        knn_options: extra keywords of :func:`knn` for that search (``index``, ``nprobe``, ``ef_search``).
        share: under DDP, this process's share of the rows (:class:`RowShare`); every process must call
            with the same features and ranks and gets the same matrix.

    Returns:
        Symmetric (N, N) ``csr_matrix`` of float32 distances in [0, 1]. Stored entries are the pairs
        that share any neighbourhood weight (and are within ``max_distance``), including the explicit
        0 diagonal; every absent pair has distance exactly 1 (with ``max_distance < 1``: more than
        ``max_distance``). Memory is O(N * k); no dense N x N array is ever built.
    """
    _check_neighbourhood_sizes(k1, k2)
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0 (1 keeps every pair that shares weight); got {max_distance}.")
    cpu_features = _to_cpu_float32(features)
    _check_2d_finite(cpu_features, "features")
    n = cpu_features.shape[0]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    _check_enough_features(n, k1)
    _check_normalised(cpu_features)
    if ranks is None:
        _, ranks = knn(features, features, k1, backend=backend, **(knn_options or {}))
    else:
        ranks = _check_ranks(ranks, n, k1)
    reciprocal = _reciprocal_neighbours(ranks, k1)
    half_reciprocal = _reciprocal_neighbours(ranks, int(np.around(k1 / 2)))
    neighbourhoods = _expanded_neighbourhoods(reciprocal, half_reciprocal)
    del reciprocal, half_reciprocal
    weights = _gaussian_weights(neighbourhoods, cpu_features)
    weights = _local_query_expansion(weights, ranks, k2)
    return _jaccard_from_weights(weights, max_distance, share)


# --------------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------------


def _check_cluster_arguments(method: str, eps: float, min_samples: int) -> None:
    if method not in ("dbscan", "hdbscan"):
        raise ValueError(f"method must be 'dbscan' or 'hdbscan'; got {method!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}.")
    if method == "dbscan" and eps >= 1:
        raise ValueError(
            f"eps must be < 1 for DBSCAN on the sparse Jaccard distance; got {eps}. Every pair absent from "
            "the sparse matrix has distance 1, so eps >= 1 would make all those pairs neighbours; lower eps."
        )
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1; got {min_samples}.")
    if method == "hdbscan" and min_samples < 2:
        raise ValueError(f"HDBSCAN needs min_samples (its min_cluster_size) >= 2; got {min_samples}.")


def _dbscan(distances: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    from itkm_lightning.sparse_dbscan import dbscan

    # Exact: stored entries hold every distance <= eps (explicit zeros included); absent ones exceed it.
    # Connected components of the core points: scikit-learn's labels (border rule included), whole-array.
    return dbscan(distances, eps, min_samples)


def _with_far_pairs(distances: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> sp.csr_matrix:
    """Store HDBSCAN_FAR_DISTANCE for the given absent pairs, in both directions."""
    coo = distances.tocoo()
    far = np.full(2 * len(rows), HDBSCAN_FAR_DISTANCE)
    return sp.coo_matrix(
        (
            np.concatenate((coo.data, far)),
            (np.concatenate((coo.row, rows, columns)), np.concatenate((coo.col, columns, rows))),
        ),
        shape=distances.shape,
    ).tocsr()


def _pad_short_rows(distances: sp.csr_matrix, min_samples: int) -> sp.csr_matrix:
    """Give every row >= min_samples stored entries (sklearn's sparse HDBSCAN requires it) with far pairs."""
    n = distances.shape[0]
    pad_rows, pad_columns = [], []
    for row in np.flatnonzero(np.diff(distances.indptr) < min_samples):  # rare: a few isolated features
        stored = set(distances.indices[distances.indptr[row] : distances.indptr[row + 1]].tolist())
        for column in range(n):
            if len(stored) >= min_samples:
                break
            if column not in stored:
                pad_rows.append(row)
                pad_columns.append(column)
                stored.add(column)
    if not pad_rows:
        return distances
    return _with_far_pairs(distances, np.asarray(pad_rows), np.asarray(pad_columns))


def _join_components(distances: sp.csr_matrix, component: np.ndarray) -> sp.csr_matrix:
    """Join every component to the first with one far pair, so the graph is connected."""
    representatives = np.unique(component, return_index=True)[1]
    if len(representatives) < 2:
        return distances
    return _with_far_pairs(distances, np.full(len(representatives) - 1, representatives[0]), representatives[1:])


def _fit_hdbscan(distances: sp.csr_matrix, min_samples: int):
    """Fit sklearn's HDBSCAN on the sparse Jaccard distance; returns (model, rows it was fitted on).

    Absent pairs share no neighbourhood weight, so they are treated as unrelated ("missing = far", the
    usual sparse-graph HDBSCAN reading) rather than as a dense matrix full of exact 1s: with many pairs
    tied at 1, dense HDBSCAN's binary single-linkage tree would attach small unrelated groups to
    whichever cluster the tie-break happens to pick. Concretely:
    - connected components of the stored pairs smaller than min_samples are noise and left out of
      the fit (they have no stored pair with the rest, so no other row changes);
    - the remaining components are joined at HDBSCAN_FAR_DISTANCE (above any Jaccard distance), so each
      one is a child of the tree's root, and rows with fewer than min_samples stored entries are
      padded with far pairs (sklearn's sparse path needs min_samples entries per row);
    - off-diagonal zeros (duplicate features) are raised to HDBSCAN_MIN_DISTANCE, because sklearn reads
      the spanning tree back with ``.nonzero()``, which would drop zero-weight edges.
    Inside a component the result is sklearn's HDBSCAN on the same distances, up to how it breaks
    ties between equal mutual-reachability distances (dense HDBSCAN is itself tie-order dependent).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import HDBSCAN

    _, component = connected_components(distances, directed=False)
    component_sizes = np.bincount(component)
    kept = np.flatnonzero(component_sizes[component] >= min_samples)
    if len(kept) == 0:
        return None, kept
    graph = distances if len(kept) == distances.shape[0] else distances[kept][:, kept]
    graph = graph.astype(np.float64).tocsr()  # a copy: the padding below must not touch the caller's matrix
    graph = _join_components(graph, component[kept])
    graph = _pad_short_rows(graph, min_samples)
    graph_rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    graph.data[(graph.indices != graph_rows) & (graph.data < HDBSCAN_MIN_DISTANCE)] = HDBSCAN_MIN_DISTANCE
    # copy=False: ``graph`` is already this function's own float64 copy, sklearn may overwrite it.
    model = HDBSCAN(min_cluster_size=min_samples, metric="precomputed", copy=False)
    return model.fit(graph), kept


def _hdbscan(distances: sp.csr_matrix, min_samples: int) -> np.ndarray:
    labels = np.full(distances.shape[0], -1, dtype=np.int64)
    model, kept = _fit_hdbscan(distances, min_samples)
    if model is not None:
        labels[kept] = model.labels_
    # Fewer than min_samples related features: mutual reachability is "far" to everything, so the
    # point only joins at the root level and is never part of a real cluster.
    labels[np.diff(distances.indptr) < min_samples] = -1
    return _relabel_consecutive(labels)


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    clustered = labels >= 0
    relabelled = np.full_like(labels, -1)
    relabelled[clustered] = np.unique(labels[clustered], return_inverse=True)[1]
    return relabelled


def cluster(
    features: FeatureArray,
    method: Literal["dbscan", "hdbscan"] = "dbscan",
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    *,
    backend: KnnBackend = "auto",
    ranks: np.ndarray | None = None,
    knn_options: dict | None = None,
    share: RowShare | None = None,
) -> np.ndarray:
    """Pseudo-labels: DBSCAN (or HDBSCAN) on the k-reciprocal Jaccard distance.

    Args:
        features: (N, D) L2-normalised features, numpy or torch (any device).
        method: "dbscan" (exact on the sparse distance; needs 0 < eps < 1) or "hdbscan"
            (``sklearn.cluster.HDBSCAN`` with ``min_cluster_size=min_samples``, pairs absent from the
            sparse distance read as unrelated; see ``_fit_hdbscan``; ``eps`` unused).
        eps: DBSCAN neighbourhood radius on the Jaccard distance.
        min_samples: DBSCAN core-point size (the point included) / HDBSCAN minimum cluster size.
        k1, k2: Jaccard distance neighbourhood sizes, see :func:`jaccard_distance`.
        backend: kNN backend, see :func:`knn`.
        ranks: precomputed (N, k1) neighbour indices, see :func:`jaccard_distance`.
        knn_options: approximate search settings, see :func:`jaccard_distance`.
        share: DDP share of the Jaccard rows, see :func:`jaccard_distance` (all processes get the labels).

    Returns:
        (N,) int64 labels, 0..C-1 for clusters and -1 for outliers. Empty input gives an empty array.
    """
    _check_cluster_arguments(method, eps, min_samples)
    # DBSCAN only looks at pairs within eps: dropping the others early is exact and saves memory.
    max_distance = eps if method == "dbscan" else 1.0
    distances = jaccard_distance(features, k1, k2, backend=backend, max_distance=max_distance, ranks=ranks,
                                 knn_options=knn_options, share=share)
    if distances.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "dbscan":
        labels = _dbscan(distances, eps, min_samples)
    else:
        labels = _hdbscan(distances, min_samples)
    return np.asarray(labels, dtype=np.int64)
