"""Everything ``torch.distributed`` in ragcun, in one place: the process group torchrun describes, the device a
process runs on, the DDP wrapper, and the collectives the losses, the statistics, training and evaluation use.

* **Launch and setup** (nanoGPT-style): ``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``,
  ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` joins that process group (NCCL on CUDA, gloo on the CPU, as
  ``--device`` says, see :func:`pick_device`) and returns a :class:`DistributedContext`; :func:`teardown` ends
  the group if :func:`setup` started it. Without torchrun it is one process and nothing here does anything.
  :func:`launched_by_torchrun`, :func:`elastic_restart_count`, :func:`elastic_run_id` read torchrun's
  environment; :func:`free_port` finds a port for a local rendezvous (tests, preflight).
* **Context-level helpers** for the training loop: :func:`wrap` (DDP), :func:`barrier`, :func:`all_reduce_mean`,
  :func:`all_reduce_max`, :func:`broadcast_object`.
* **A stopped or dead rank**: the process group waits at most ``RAGCUN_DIST_TIMEOUT`` seconds (default 1800)
  for a collective; every helper here, and :func:`waiting` around other code that communicates (DDP's
  backward), turns that timeout into :class:`CollectiveTimeout`, whose message names the collective, where it
  was called from and the rank that waited.
* **Collectives** for the losses and statistics: :func:`world`, :func:`is_distributed`, :func:`all_reduce_sum`
  (with gradient), :func:`all_reduce_sum_no_grad`, :func:`all_gather_sizes`, :func:`gather_with_grad`, and
  :func:`all_gather_rows` (without gradient: encoded corpora, search results).

Every helper is a no-op on one process (no process group, or a group of size 1), so callers never branch.
This module imports nothing else from ragcun at import time (only :mod:`ragcun.console`, lazily, for a warning),
so data, training and evaluation may all use it.

Gradient convention (the one ``DistributedDataParallel`` assumes): each rank computes a loss ``L_r`` and
DDP *averages* parameter gradients over ranks, so the optimised objective is ``mean_r L_r``. The losses in
:mod:`ragcun.losses` are written so that ``mean_r L_r`` equals the loss of one process on the concatenated
batch. Because the autograd-aware collectives below *sum* gradients in their backward pass, the gradient a
rank sees on its own embeddings is ``world_size`` times the single-process gradient of its slice; DDP's
average divides that factor out again. (A gather *without* gradient loses the other ranks' contributions:
the classic ``1/world_size`` gradient error.)
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


# --- this process: rank, world size, device -------------------------------------------------------------------------


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


# --- torchrun's environment, the process group, DDP -----------------------------------------------------------------


@dataclass
class DistributedContext:
    """Where this process stands: what :func:`setup` found (rank 0 of 1 on the CPU outside torchrun)."""

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


def torchrun_ranks() -> tuple[int, int, int]:
    """``(RANK, LOCAL_RANK, WORLD_SIZE)`` as torchrun set them for this process, ``(0, 0, 1)`` outside torchrun:
    the one reader of those variables (a process group need not exist, e.g. after training tore it down)."""
    env = os.environ
    rank = int(env.get("RANK", "0") or 0)
    return rank, int(env.get("LOCAL_RANK", str(rank)) or 0), int(env.get("WORLD_SIZE", "1") or 1)


def launched_by_torchrun() -> bool:
    """True when torchrun started this process (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set)."""
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
        local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else rank
        return DistributedContext(rank, local_rank, world_size, pick_device(device, local_rank), False)
    if not launched_by_torchrun():
        return DistributedContext(0, 0, 1, pick_device(device, 0), False)
    # Under torchrun the group is created even for one process (as nanoGPT does), so a one-GPU run exercises
    # NCCL exactly as an eight-GPU run does; DDP and the losses' collectives only engage with world_size > 1.
    rank, local_rank, world_size = torchrun_ranks()
    dev = pick_device(device, local_rank)
    if rank == 0:
        _warn_if_restarts_share_the_agent_store()
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timedelta(seconds=dist_timeout_s())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None, timeout=timeout)
    return DistributedContext(rank, local_rank, world_size, dev, True)


# --- a stopped, hung or dead rank ---------------------------------------------------------------------------------

DIST_TIMEOUT_ENV = "RAGCUN_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT_S = 1800.0  # 30 minutes: longer than any step or checkpoint, far shorter than torch's NCCL default


def dist_timeout_s() -> float:
    """How long a collective waits for the other ranks: ``$RAGCUN_DIST_TIMEOUT`` seconds, default 1800."""
    value = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_DIST_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}={value!r}: give the seconds a collective may wait for the other ranks, "
                         f"e.g. {DEFAULT_DIST_TIMEOUT_S:.0f}")
    return seconds


class CollectiveTimeout(RuntimeError):
    """A collective gave up: another rank did not come (stopped, hung, dead). The message names the collective,
    where it was called from, and this rank."""


def _failure_kind(exc: BaseException) -> str | None:
    text = str(exc).lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if any(s in text for s in ("connection closed by peer", "connection reset", "broken pipe", "socket closed")):
        return "gone"
    return None


def _call_site() -> str:
    """``file:line in function`` of the first frame outside this module (and contextlib)."""
    here = os.path.abspath(__file__)
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        name = name if name.startswith("<") else os.path.abspath(name)
        if name != here and not name.endswith(os.path.join("", "contextlib.py")):
            parts = name.split(os.sep)
            short = os.sep.join(parts[parts.index("ragcun"):]) if "ragcun" in parts else name
            return f"{short}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


@contextmanager
def waiting(what: str):
    """Say which collective waited when one inside fails because another rank did not come: a timeout (a rank
    stopped or hung: ``RAGCUN_DIST_TIMEOUT``) or a lost connection (a rank died) becomes
    :class:`CollectiveTimeout` naming ``what``, the call site and this rank."""
    try:
        yield
    except CollectiveTimeout:
        raise
    except RuntimeError as exc:
        kind = _failure_kind(exc) if dist.is_available() and dist.is_initialized() else None
        if kind is None:
            raise
        rank, world_size = world()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = f"{what} (called from {_call_site()})"
        if kind == "timeout":
            message = (f"rank {rank} of {world_size}: {where} waited more than {dist_timeout_s():g} s for the other "
                       f"ranks: one of them is stopped, hung or far behind (set {DIST_TIMEOUT_ENV} to wait longer); "
                       f"torch said: {first}")
        else:
            message = (f"rank {rank} of {world_size}: {where} lost its connection to another rank, which has "
                       f"probably exited (see its output); torch said: {first}")
        raise CollectiveTimeout(message) from exc


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
    """End the process group if :func:`setup` started it (``ctx.initialized_here``); nothing otherwise."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a local rendezvous: tests, preflight)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrap(model: torch.nn.Module, ctx: DistributedContext) -> torch.nn.Module:
    """DDP when there is more than one rank (and something to train); the model itself otherwise."""
    if not ctx.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        with waiting("barrier"):
            dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Average a detached vector over ranks (logging and agreement flags)."""
    if ctx.enabled:
        values = values.clone()
        with waiting("all_reduce (mean)"):
            dist.all_reduce(values)
        values /= ctx.world_size
    return values


def all_reduce_max(value: float, ctx: DistributedContext) -> float:
    """The largest of the ranks' ``value``; ``value`` itself on one process."""
    if not ctx.enabled:
        return value
    t = torch.tensor([float(value)], device=ctx.device)
    with waiting("all_reduce (max)"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def broadcast_object(obj, ctx: DistributedContext, src: int = 0):
    """Rank ``src``'s (picklable) ``obj`` on every rank; ``obj`` itself on one process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    with waiting("broadcast_object_list"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


# --- collectives (the losses and statistics) ------------------------------------------------------------------------


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

    with waiting("all_reduce (sum, with gradient)"):
        return _quiet(dist_fn.all_reduce, t, op=dist.ReduceOp.SUM)


def all_reduce_sum_no_grad(value: torch.Tensor | float | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Sum a value over ranks without gradient (counts, logging). Returns a tensor."""
    t = torch.as_tensor(value, device=device).detach().clone()
    if is_distributed():
        with waiting("all_reduce (sum)"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_sizes(n: int, device: torch.device | str | None = None) -> list[int]:
    """Every rank's value of ``n`` (e.g. its batch size), by rank. ``[n]`` on one process."""
    if not is_distributed():
        return [int(n)]
    _, world_size = world()
    local = torch.tensor([int(n)], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size)]
    with waiting("all_gather (sizes)"):
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
    with waiting("all_gather (with gradient)"):
        parts = _quiet(dist_fn.all_gather, padded)  # tuple of world_size tensors (largest, ...)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def collective_device() -> torch.device:
    """Where the process group's tensors must live: this rank's GPU under NCCL, the CPU otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(local: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Every rank's ``local`` (``(n_r, ...)``, no gradient), by rank, on the collective's device: rows of
    different counts (``counts``: each rank's ``n_r``) are padded to the largest for the collective and trimmed
    again. ``[local]`` on one process."""
    if not is_distributed():
        return [local]
    device = collective_device()
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local.to(device)
    out = [torch.empty_like(padded) for _ in counts]
    with waiting("all_gather (rows)"):
        dist.all_gather(out, padded)
    return [t[:n] for t, n in zip(out, counts)]
