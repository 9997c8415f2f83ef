"""torchrun environment detection, process-group setup/teardown and the DDP wrapper (nanoGPT-style).

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without
them this is one process and nothing here does anything. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ragcun.distributed import pick_device


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def elastic_restart_count() -> int:
    """How many times this node's torchrun agent has restarted its workers after a failure (``--max-restarts``):
    0 on the first attempt and outside torchrun. Per node: an agent that restarts its workers because another
    node's failed (a membership change) does not count it, so ranks may disagree."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def elastic_run_id() -> str | None:
    """torchrun's ``--rdzv-id`` (a fresh UUID with ``--standalone``; ``none`` when not given); None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def setup(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun described (or an existing one); a single process otherwise."""
    if dist.is_available() and dist.is_initialized():  # e.g. tests that created the group themselves
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistributedContext(rank, local_rank, world_size, pick_device(device, local_rank), False)
    if not launched_by_torchrun():
        return DistributedContext(0, 0, 1, pick_device(device, 0), False)
    # Under torchrun the group is created even for one process (as nanoGPT does), so a one-GPU run exercises
    # NCCL exactly as an eight-GPU run does; DDP and the losses' collectives only engage with world_size > 1.
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    dev = pick_device(device, local_rank)
    if rank == 0:
        _warn_if_restarts_share_the_agent_store()
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistributedContext(rank, local_rank, world_size, dev, True)


def _warn_if_restarts_share_the_agent_store() -> None:
    """torchrun >= 2.5 lets the workers' process group live in its agent's TCP store, which outlives a failed
    attempt: the restarted workers can read the dead ones' addresses from it and fail ("Connection refused") or
    hang while connecting (pytorch/pytorch#135712; seen with gloo here, 3 of 3 restarts with the static
    rendezvous). With the c10d rendezvous, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives every attempt a fresh store;
    the static rendezvous always shares it."""
    try:
        max_restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return
    if max_restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from ragcun.console import stderr

        stderr.print("[yellow]warning:[/yellow] torchrun --max-restarts with its shared rendezvous store: a restart "
                     "can fail or hang connecting to the failed workers' stale addresses (pytorch/pytorch#135712). "
                     "Launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and --standalone or --rdzv-backend c10d "
                     "(not the static rendezvous, which always shares it)", highlight=False, soft_wrap=True)


def teardown(ctx: DistributedContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistributedContext) -> torch.nn.Module:
    """DDP when there is more than one rank (and something to train); the model itself otherwise."""
    if not ctx.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Average a detached vector over ranks (logging and agreement flags)."""
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def broadcast_object(obj, ctx: DistributedContext, src: int = 0):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
