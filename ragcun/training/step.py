"""One optimizer step of a :class:`ragcun.training.state.TrainState`: forward/backward, the ranks' agreement on its
outcome, the optimizer step.

:func:`start_step` puts the model in training mode and clears the gradients; :func:`accumulate` runs the
micro-batches of a step (gradient accumulation) through the plain path or GradCache, one function for both;
:func:`agree` averages the loss and its terms over the ranks (for the log) and turns "some rank saw a NaN" /
"some rank saw Ctrl-C" into flags every rank reads the same way; :func:`optimizer_step` clips, steps, checks the
weights and schedules.

Gradient bookkeeping under DDP: each rank computes its loss on its own slice of the global batch; the losses
gather candidates / all-reduce statistics *with gradient* (ragcun.distributed), and DDP averages parameter
gradients, so the step equals one process's step on the concatenated batch (tests/test_training_distributed.py).
The logged loss is the mean of the ranks' losses, which is the single-process loss of the global batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import torch

import ragcun.distributed as D
from ragcun.training import checkpoint as ckpt
from ragcun.training.faults import TrainingDiverged, last_good
from ragcun.training.setup import as_output

if TYPE_CHECKING:
    from ragcun.training.state import TrainState


@dataclass
class StepOutput:
    loss: torch.Tensor  # this rank's loss, averaged over the micro-batches (detached)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # each weighted term, likewise
    nonfinite: torch.Tensor | None = None  # how many micro-batch losses were NaN or infinite


def start_step(state: TrainState) -> None:
    """Training mode (a frozen encoder stays in evaluation mode: deterministic features, no dropout), no gradients."""
    state.model.train()
    if state.config.freeze_encoder:
        state.model.encoder.eval()
    state.optimizer.zero_grad(set_to_none=True)


def accumulate(state: TrainState) -> StepOutput:
    """Forward and backward over ``--grad-accum`` micro-batches of ``state``'s stream (plain or GradCache); DDP syncs
    gradients on the last one only."""
    from ragcun.training.grad_cache import forward_texts, loss_inputs, touch

    model, forward_module, loss_module, stream, step = (state.model, state.forward_module, state.loss_call,
                                                        state.stream, state.step)
    grad_accum, device, grad_cache = state.config.grad_accum, state.ctx.device, state.grad_cache
    autocast, scaler = state.precision.autocast, state.precision.scaler
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


def optimizer_step(state: TrainState) -> tuple[float | None, float]:
    """Average the loss's own gradients, clip, step, check the weights, schedule; returns (grad norm, lr)."""
    config, ctx, optimizer, scaler = state.config, state.ctx, state.optimizer, state.precision.scaler
    out_dir, step = state.folder.path, state.step
    if state.loss_params and ctx.enabled:  # DDP averages the model's gradients; the loss's are ours to average
        for param in state.loss_params:
            if param.grad is not None:
                param.grad = D.all_reduce_mean(param.grad, ctx)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if config.max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.trainable, config.max_grad_norm))
        if not math.isfinite(grad_norm) and scaler is None:
            raise TrainingDiverged(f"the gradient norm is {grad_norm} at step {step + 1}: training stopped; "
                                   + last_good(out_dir))
    lr = state.scheduler.get_last_lr()[0]
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # a checkpoint or final model is only ever written from finite weights: check every step (one device
    # sync), so the run stops at the step that broke them
    broken = ckpt.nonfinite_tensors(state.named_trainable)
    if broken:
        raise TrainingDiverged(
            f"the weights became non-finite at step {step + 1} ({len(broken)} of {len(state.named_trainable)} "
            f"trained tensors, e.g. {', '.join(broken[:3])}): the optimizer step overflowed (is --lr {config.lr:g} "
            "too high?); training stopped and nothing was saved from this step; " + last_good(out_dir))
    state.scheduler.step()
    return grad_norm, lr
