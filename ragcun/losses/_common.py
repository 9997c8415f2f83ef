"""Helpers shared by the loss modules (not a public API)."""

from __future__ import annotations

import torch

from ragcun.distributed import all_reduce_sum_no_grad, is_distributed, world
from ragcun.losses.base import LossInputs
from ragcun.stats.sigreg import full_precision, upcast

__all__ = ["APPLY_TO", "check_apply_to", "check_positive", "documents", "full_precision", "rank_share", "selected",
           "upcast"]

APPLY_TO = ("both", "queries", "documents")


def check_apply_to(apply_to: str, loss: str) -> str:
    if apply_to not in APPLY_TO:
        raise ValueError(f"loss.{loss}.apply_to must be one of {', '.join(repr(a) for a in APPLY_TO)}, "
                         f"got {apply_to!r}")
    return apply_to


def check_positive(name: str, value, loss: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"loss.{loss}.{name} must be a number, got {value!r}") from None
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"loss.{loss}.{name} must be a positive finite number, got {value!r}")
    return value


def documents(inputs: LossInputs, field: str = "mean") -> torch.Tensor:
    """The batch's documents: positives then hard negatives, ``(B + B*K, D)``."""
    parts = [inputs.positives, inputs.negatives] if inputs.negatives is not None else [inputs.positives]
    tensors = [getattr(p, field) for p in parts]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


def selected(inputs: LossInputs, apply_to: str, field: str = "mean") -> list[torch.Tensor]:
    """The embedding groups a regularizer applies to: ``[queries]``, ``[documents]`` or both (in that order)."""
    out = []
    if apply_to in ("both", "queries"):
        out.append(getattr(inputs.queries, field))
    if apply_to in ("both", "documents"):
        out.append(documents(inputs, field))
    return out


def rank_share(local_sum: torch.Tensor, local_count: int) -> torch.Tensor:
    """This rank's share of a global mean, scaled for DDP's gradient averaging.

    Returns ``world_size * local_sum / global_count``: averaging it over ranks (what DDP does to gradients,
    and what a logger should do to values) gives ``sum_all / global_count``, the single-process mean, even
    when ranks hold different numbers of items. On one process it is ``local_sum / local_count``.
    """
    if not is_distributed():
        return local_sum / max(local_count, 1)
    _, world_size = world()
    total = int(all_reduce_sum_no_grad(local_count, device=local_sum.device).item())
    return local_sum * (world_size / max(total, 1))
