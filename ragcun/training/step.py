"""One optimizer step's forward/backward and the ranks' agreement on its outcome.

:func:`accumulate` runs the micro-batches of a step (gradient accumulation) through the plain path or
GradCache, one function for both; :func:`agree` averages the loss and its terms over the ranks (for the log)
and turns "some rank saw a NaN" / "some rank saw Ctrl-C" into flags every rank reads the same way.

Gradient bookkeeping under DDP: each rank computes its loss on its own slice of the global batch; the losses
gather candidates / all-reduce statistics *with gradient* (ragcun.distributed), and DDP averages parameter
gradients, so the step equals one process's step on the concatenated batch (tests/test_training_distributed.py).
The logged loss is the mean of the ranks' losses, which is the single-process loss of the global batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

import ragcun.distributed as D
from ragcun.training.setup import as_output


@dataclass
class StepOutput:
    loss: torch.Tensor  # this rank's loss, averaged over the micro-batches (detached)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # each weighted term, likewise
    nonfinite: torch.Tensor | None = None  # how many micro-batch losses were NaN or infinite


def accumulate(*, model, forward_module, loss_module, stream, step: int, grad_accum: int, device, autocast,
               scaler, grad_cache=None) -> StepOutput:
    """Forward and backward over ``grad_accum`` micro-batches; DDP syncs gradients on the last one only."""
    from ragcun.training.grad_cache import forward_texts, loss_inputs, touch

    out_sum = StepOutput(torch.zeros((), device=device), {}, torch.zeros((), device=device))
    for micro in range(grad_accum):
        batch = stream.next_batch()
        sync = micro == grad_accum - 1
        if grad_cache is not None:
            out = grad_cache.step(batch, lambda inputs: as_output(loss_module(inputs)), step,
                                  scale=1.0 / grad_accum, sync=sync, scaler=scaler)
        else:
            no_sync = getattr(forward_module, "no_sync", None)
            with no_sync() if (no_sync is not None and not sync) else nullcontext():
                q = forward_texts(forward_module, model.tokenize, batch.queries, device, autocast)
                p = forward_texts(forward_module, model.tokenize, batch.positives, device, autocast)
                n = (forward_texts(forward_module, model.tokenize, batch.negatives, device, autocast)
                     if batch.negatives else None)
                out = as_output(loss_module(loss_inputs(batch, {"queries": q, "positives": p, "negatives": n},
                                                        step)))
                # touch(): every embedding takes part in the graph, so DDP sees a gradient for every parameter
                total = out.total / grad_accum + touch(q) + touch(p) + (touch(n) if n is not None else 0.0)
                (scaler.scale(total) if scaler is not None else total).backward()
        value = out.total.detach().float()
        out_sum.nonfinite = out_sum.nonfinite + (~torch.isfinite(value)).float()
        out_sum.loss = out_sum.loss + value / grad_accum
        for key, term in out.terms.items():
            out_sum.terms[key] = out_sum.terms.get(key, 0.0) + term.detach().float() / grad_accum
    return out_sum


@dataclass
class Agreement:
    """What every rank knows after a step: the global mean loss and terms, and whether any rank saw a NaN or a
    Ctrl-C."""

    loss: float
    terms: dict[str, float]
    diverged: bool
    interrupted: bool


def agree(out: StepOutput, term_names: list[str], interrupted: bool, ctx: D.DistributedContext) -> Agreement:
    """One all-reduce of ``[loss, *terms, nonfinite, interrupted]``: the mean over ranks, NaN kept as NaN."""
    device = out.loss.device
    flags = torch.stack([out.loss, *[out.terms[k] for k in term_names], out.nonfinite,
                         torch.tensor(float(interrupted), device=device)])
    flags = torch.where(torch.isfinite(flags), flags, torch.full_like(flags, float("nan")))
    values = D.all_reduce_mean(flags, ctx).tolist()
    loss, terms = values[0], dict(zip(term_names, values[1:1 + len(term_names)]))
    nonfinite, any_interrupt = values[1 + len(term_names)], values[2 + len(term_names)]
    return Agreement(loss, terms, diverged=nonfinite > 0 or not math.isfinite(loss), interrupted=any_interrupt > 0)
