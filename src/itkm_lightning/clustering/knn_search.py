"""The project's one exact top-k inner-product search (faiss ``IndexFlatIP`` or blockwise torch matmul + topk),
plus approximate searches (faiss IVF/HNSW; bfloat16 candidates re-scored in float32): used by clustering,
``distributed.sharded_knn`` and ``itkm search``."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

from itkm_lightning.clustering.inputs import FeatureArray, _to_cpu_float32
from itkm_lightning.errors import MissingPackageError

KnnBackend = Literal["auto", "faiss", "torch"]
KnnIndex = Literal["exact", "ivf", "hnsw", "bf16"]

FAISS_INSTALL_HINT = "pip install faiss-cpu (or the project's extra: pip install 'itkm-lightning[faiss]')"
# Bounds the (query block x database) similarity matrix of the torch kNN fallback (float32 entries).
TORCH_KNN_BLOCK_ELEMENTS = 1 << 25
# Approximate kNN (index="ivf" / "hnsw"): IVF lists per sqrt(N), and at least this many vectors per list
# (faiss warns below 39 training points per list); HNSW links per node.
IVF_LISTS_PER_SQRT_N = 4
IVF_MIN_LIST_SIZE = 39
HNSW_LINKS = 32
# index="bf16": candidates kept beyond k from the bfloat16 product for float32 re-scoring, and the query block's
# (bfloat16) score matrix size.
BF16_MARGIN = 32
BF16_BLOCK_ELEMENTS = 1 << 28
# faiss GPU flat search only supports k up to this value.
FAISS_GPU_MAX_K = 2048


def _faiss_module():
    try:
        import faiss  # heavy optional dependency: imported where used
    except ImportError as error:
        raise MissingPackageError(f"backend='faiss' needs faiss: {FAISS_INSTALL_HINT}.") from error
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
    return _search_faiss_index(index, query_array, k)


def flat_index(database: FeatureArray):
    """The exact faiss index (``IndexFlatIP``, CPU) holding ``database``, for a caller that keeps it: ``itkm search``
    saves it beside its gallery and searches it through :func:`knn` (``faiss_index``)."""
    faiss = _faiss_module()
    database_array = _to_cpu_float32(database)
    index = faiss.IndexFlatIP(database_array.shape[1])
    index.add(database_array)
    return index


def _search_faiss_index(index, queries: FeatureArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarities, indices = index.search(_to_cpu_float32(queries), k)
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


def _knn_bfloat16(queries: FeatureArray, database: FeatureArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from a bfloat16 product, then the k best of k + BF16_MARGIN by their float32 inner product.

    CPUs with AMX or AVX512-BF16 (and GPUs) multiply bfloat16 several times faster than float32 (4x here, one
    thread). bfloat16 rounds a cosine by about 1e-3, so a true neighbour is lost only when more than
    BF16_MARGIN others score within that of it; the similarities returned are float32 inner products.
    """
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    query_tensor = torch.as_tensor(queries).detach().to(device=device, dtype=torch.float32)
    database_tensor = torch.as_tensor(database).detach().to(device=device, dtype=torch.float32)
    wide = min(k + BF16_MARGIN, database_tensor.shape[0])
    database_t = database_tensor.T.contiguous()
    database_half = database_t.to(torch.bfloat16)
    block_size = max(1, BF16_BLOCK_ELEMENTS // max(1, database_tensor.shape[0]) // 2)
    similarity_blocks, index_blocks = [], []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        for start in range(0, query_tensor.shape[0], block_size):
            block = query_tensor[start : start + block_size]
            candidates = torch.topk(block.to(torch.bfloat16) @ database_half, wide, dim=1, sorted=False).indices
            # float32 inner products of the candidates only (sampled product: no gathered 512-d rows).
            pattern = torch.sparse_csr_tensor(
                torch.arange(0, len(block) * wide + 1, wide, device=device), candidates.reshape(-1),
                torch.zeros(len(block) * wide, device=device), size=(len(block), database_t.shape[1]))
            exact = torch.sparse.sampled_addmm(pattern, block, database_t, beta=0.0).values().reshape(len(block), wide)
            top = torch.topk(exact, k, dim=1, largest=True, sorted=True)
            similarity_blocks.append(top.values.cpu())
            index_blocks.append(candidates.gather(1, top.indices).cpu())
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
    faiss_index=None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product (cosine similarity for L2-normalised features).

    Exact by default; ``index="ivf"`` or ``"hnsw"`` searches an approximate faiss index instead (CPU),
    see :func:`_knn_faiss_approximate`; ``index="bf16"`` re-scores bfloat16 candidates in float32.

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
            (``IndexHNSWFlat``, 32 links per node, ``ef_search`` candidates per query), or "bf16"
            (torch: candidates from a bfloat16 product, re-scored in float32; see :func:`_knn_bfloat16`).
        nprobe, ef_search: the approximate indexes' search effort (more: slower, nearer to exact).
        faiss_index: an exact faiss index of ``database`` built before (:func:`flat_index`, or read from disk),
            searched instead of a new one (with ``index="exact"``; ``backend`` is then not consulted).

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
    if index not in ("exact", "ivf", "hnsw", "bf16"):
        raise ValueError(f"index must be 'exact', 'ivf', 'hnsw' or 'bf16'; got {index!r}.")
    if faiss_index is not None and (index != "exact" or faiss_index.ntotal != database.shape[0]):
        raise ValueError(f"faiss_index must be an exact index of the {database.shape[0]} database rows; got "
                         f"{faiss_index.ntotal} rows with index={index!r}.")
    if index == "bf16":
        similarities, indices = _knn_bfloat16(queries, database, searched)
    elif index != "exact":
        similarities, indices = _knn_faiss_approximate(queries, database, searched, index, nprobe, ef_search)
    elif faiss_index is not None:
        similarities, indices = _search_faiss_index(faiss_index, queries, searched)
    else:
        search = _knn_faiss if _use_faiss(backend, queries) else _knn_torch
        similarities, indices = search(queries, database, searched)
    if exclude_self:
        similarities, indices = _drop_self_matches(similarities, indices, k, query_offset)
    return similarities, indices
