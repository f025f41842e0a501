"""Collectives that work the same with one process or many (every rank calls them in the same order)."""

from __future__ import annotations

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


def broadcast_tensor(tensor: torch.Tensor | None, src: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Send rank ``src``'s tensor (shape unknown to the others) to every rank."""
    if not is_distributed():
        assert tensor is not None
        return tensor
    obj = [tensor.cpu() if tensor is not None else None]
    dist.broadcast_object_list(obj, src=src)
    return obj[0].to(device)


def is_rank_zero() -> bool:
    """True on the process that does rank-0-only work (the only one without DDP)."""
    return not is_distributed() or dist.get_rank() == 0
