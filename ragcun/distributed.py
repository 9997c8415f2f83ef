"""Small ``torch.distributed`` helpers shared by the losses, the statistics, training and evaluation.

Every helper is a no-op on one process (no process group, or a group of size 1), so callers never branch.

Gradient convention (the one ``DistributedDataParallel`` assumes): each rank computes a loss ``L_r`` and
DDP *averages* parameter gradients over ranks, so the optimised objective is ``mean_r L_r``. The losses in
:mod:`ragcun.losses` are written so that ``mean_r L_r`` equals the loss of one process on the concatenated
batch. Because the autograd-aware collectives below *sum* gradients in their backward pass, the gradient a
rank sees on its own embeddings is ``world_size`` times the single-process gradient of its slice; DDP's
average divides that factor out again. (A gather *without* gradient loses the other ranks' contributions:
the classic ``1/world_size`` gradient error.)
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """The device this process runs on: ``requested`` (``cuda`` alone means ``cuda:LOCAL_RANK``), else one GPU
    per local rank when CUDA is there, else the CPU. Used by training and evaluation alike."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def _quiet(fn, *args, **kwargs):
    # torch.distributed.nn.functional warns (FutureWarning) on every call; it is still the documented
    # autograd-aware collective, and a warning per training step would drown the logs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)
        return fn(*args, **kwargs)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks **with gradient** (out of place; returns ``t`` itself on one process).

    The backward pass all-reduces the incoming gradients, so with a replicated loss (the same value on every
    rank) each rank's input gradient is ``world_size`` times the single-process one (see module docstring).
    """
    if not is_distributed():
        return t
    from torch.distributed.nn import functional as dist_fn

    return _quiet(dist_fn.all_reduce, t, op=dist.ReduceOp.SUM)


def all_reduce_sum_no_grad(value: torch.Tensor | float | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Sum a value over ranks without gradient (counts, logging). Returns a tensor."""
    t = torch.as_tensor(value, device=device).detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_sizes(n: int, device: torch.device | str | None = None) -> list[int]:
    """Every rank's value of ``n`` (e.g. its batch size), by rank. ``[n]`` on one process."""
    if not is_distributed():
        return [int(n)]
    _, world_size = world()
    local = torch.tensor([int(n)], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size)]
    dist.all_gather(out, local)
    return [int(x.item()) for x in out]


def gather_with_grad(t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``t`` (``(n_r, ...)``) from all ranks in rank order, **keeping the gradient**.

    Ranks may hold different ``n_r`` (the last batch of an epoch): rows are padded to the largest size for
    the collective and the padding is sliced off again, so it never reaches the result or the gradient.
    ``sizes`` (from :func:`all_gather_sizes`) saves one collective when the caller already knows them.
    Returns ``(sum_r n_r, ...)``; ``t`` itself on one process.
    """
    if not is_distributed():
        return t
    from torch.distributed.nn import functional as dist_fn

    rank, world_size = world()
    if sizes is None:
        sizes = all_gather_sizes(t.shape[0], device=t.device)
    if len(sizes) != world_size or sizes[rank] != t.shape[0]:
        raise ValueError(f"gather_with_grad: sizes {sizes} do not match world size {world_size} "
                         f"and this rank's {t.shape[0]} rows")
    largest = max(sizes)
    padded = t
    if t.shape[0] < largest:
        padded = torch.cat([t, t.new_zeros((largest - t.shape[0], *t.shape[1:]))], dim=0)
    parts = _quiet(dist_fn.all_gather, padded)  # tuple of world_size tensors (largest, ...)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)
