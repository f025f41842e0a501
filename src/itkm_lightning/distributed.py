"""Collectives that work the same with one process or many (every rank calls them in the same order)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (any first-dim size) from every rank, in rank order."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    max_size = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def on_every_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on every rank (a collective: every rank calls it)."""
    if not is_distributed():
        return flag
    flags = all_gather_variable(torch.tensor([int(flag)], device=device))
    return bool(flags.min().item() == 1)


def broadcast_tensor(tensor: torch.Tensor | None, src: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Send rank ``src``'s tensor (shape unknown to the others) to every rank."""
    if not is_distributed():
        assert tensor is not None
        return tensor
    obj = [tensor.cpu() if tensor is not None else None]
    dist.broadcast_object_list(obj, src=src)
    return obj[0].to(device)


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def query_slice(num_queries: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``num_queries`` rows (sizes differ by at most one)."""
    bounds = [num_queries * r // world_size for r in range(world_size + 1)]
    return slice(bounds[rank], bounds[rank + 1])


def sharded_knn(
    features: torch.Tensor, k: int, *, backend: str = "auto", device: torch.device | str = "cpu",
    knn_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``knn(features, features, k)`` with the queries split over the ranks; every rank gets all rows.

    Every rank holds all ``features`` (gathered after extraction) and searches only its slice of the
    queries against all of them, on ``device`` (a GPU rank searches on its GPU); the (similarity, index)
    rows are then gathered in rank order, so the result equals the single-process search. With one
    process it is exactly ``knn``. All ranks must call it, in the same order. ``knn_options``: extra
    keywords of ``knn`` (an approximate index: every rank builds it over all features and searches its
    slice; the gathered rows are the same on every rank).
    """
    from itkm_lightning.clustering.knn_search import knn  # a layer below; clustering.blocks is the one above

    rank, world_size = rank_and_world_size()
    database = features.to(device)
    mine = query_slice(database.shape[0], rank, world_size)
    similarities, indices = knn(database[mine], database, k, backend=backend, **(knn_options or {}))
    if world_size == 1:
        return similarities, indices
    similarities = all_gather_variable(torch.from_numpy(similarities).to(device)).cpu().numpy()
    indices = all_gather_variable(torch.from_numpy(indices).to(device)).cpu().numpy()
    return similarities, indices


def gather_array(array: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Concatenate a 1-D numpy array over all ranks in rank order (every rank gets the result)."""
    if not is_distributed():
        return array
    return all_gather_variable(torch.from_numpy(np.ascontiguousarray(array)).to(device)).cpu().numpy()


def jaccard_row_share(num_rows: int, device: torch.device | str = "cpu"):
    """This rank's share of a Jaccard graph's rows (``clustering.RowShare``); None without a process group.

    Every rank computes the candidate pairs and exact overlaps of its contiguous slice of rows; the pairs
    are gathered, so every rank ends with the whole, identical matrix.
    """
    from itkm_lightning.clustering.overlaps import RowShare  # a layer below; clustering.blocks is the one above

    if not is_distributed():
        return None
    rank, world_size = rank_and_world_size()
    return RowShare(rows=query_slice(num_rows, rank, world_size), gather=lambda array: gather_array(array, device))
