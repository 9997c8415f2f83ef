"""Optimisation as small pure functions: precision, seeding, the learning-rate schedule, the optimizer, and
what a resumed run does when its optimizer-side settings changed."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ragcun.precision import resolve_dtype
from ragcun.training.config import TrainConfig


@dataclass
class Precision:
    dtype: torch.dtype
    autocast: torch.autocast | None  # None in float32
    scaler: torch.amp.GradScaler | None  # float16 on CUDA only


def training_precision(name: str, device: torch.device) -> Precision:
    """The run's compute precision (``name``, a training ``--dtype``, resolved by
    :func:`ragcun.precision.resolve_dtype`): autocast for bfloat16-autocast (or its older name bfloat16) and
    float16, a gradient scaler for float16; the weights stay float32. It changes no global setting (see
    :func:`allow_tf32`)."""
    dtype = resolve_dtype(name, device)
    return Precision(dtype, torch.autocast(device.type, dtype=dtype) if dtype is not torch.float32 else None,
                     torch.amp.GradScaler("cuda") if dtype is torch.float16 else None)


def allow_tf32(device: torch.device) -> None:
    """Training's float32 matmuls and convolutions on an NVIDIA GPU run in TF32 (10-bit mantissa, several times
    the float32 rate on Ampere and later), as nanoGPT and the HF Trainer's ``tf32`` option do. The switch is
    process-wide, which is why it is a call of its own: exact search turns it off around its own matmuls
    (:func:`ragcun.evaluation.search.ieee_float32_matmul`), so evaluation inside a training run stays exact."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return int(config.warmup) if config.warmup >= 1 else round(config.warmup * total_steps)


def _shape(schedule: str, progress: float) -> float:
    """The decay after warmup, 1 at progress 0 down to 0 at progress 1 (constant: 1)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def lr_lambda(config: TrainConfig, total_steps: int, warmup: int | None = None) -> Callable[[int], float]:
    warmup = warmup_steps(config, total_steps) if warmup is None else warmup

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return _shape(config.schedule, (step - warmup) / max(1, total_steps - warmup))

    return factor


def replanned_lr_lambda(config: TrainConfig, total_steps: int, *, planned_steps: int,
                        resumed_at: int) -> Callable[[int], float]:
    """The schedule of a run resumed with another ``--steps`` (``planned_steps`` -> ``total_steps``).

    The learning rate never jumps: a warmup still under way finishes as first planned (its length in steps
    is kept), then the decay runs over the new length; after the warmup, the rate continues from the value it
    had at ``resumed_at`` and follows the schedule's shape from there to 0 at the new last step (constant: it
    stays). The first plan's rate at ``resumed_at`` is what the checkpoint's optimizer holds."""
    planned = lr_lambda(config, planned_steps)
    warmup = warmup_steps(config, planned_steps)
    if resumed_at < warmup:
        return lr_lambda(config, total_steps, warmup=warmup)
    start = planned(resumed_at)

    def factor(step: int) -> float:
        if step <= resumed_at:
            return planned(step)
        return start * _shape(config.schedule, (step - resumed_at) / max(1, total_steps - resumed_at))

    return factor


def make_optimizer(model, config: TrainConfig, device: torch.device, loss_module=None) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; the head may have its own learning rate; a loss's own
    parameters (e.g. a learnable temperature) train with the head's rate and no decay."""
    groups: dict[tuple[bool, bool], list] = {}
    loss_params = [p for p in (loss_module.parameters() if isinstance(loss_module, torch.nn.Module) else [])
                   if p.requires_grad]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2
        is_head = name.startswith("head.")
        groups.setdefault((decay, is_head), []).append(param)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    param_groups = [{"params": params, "weight_decay": config.weight_decay if decay else 0.0,
                     "lr": (config.head_lr or config.lr) if is_head else config.lr}
                    for (decay, is_head), params in sorted(groups.items())]
    if loss_params:
        param_groups.append({"params": loss_params, "weight_decay": 0.0, "lr": config.head_lr or config.lr})
    # the fused kernel updates every tensor in one pass; on a CPU it is ~8x faster than torch's default
    # per-tensor loop (MiniLM: 14 ms against 112 ms a step, one thread; benchmarks/bench_optimizer.py)
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=config.lr, fused=fused or None)


def apply_optimizer_settings(optimizer, scheduler, fresh_groups, factor) -> None:
    """A resumed run with a new --lr / --head-lr / --weight-decay / schedule: the restored optimizer and scheduler
    take the new base rates and decay, and the current rate is the new schedule's at this step."""
    if len(fresh_groups) != len(optimizer.param_groups):
        raise ValueError("--resume: the checkpoint's optimizer has other parameter groups than this run builds")
    for group, (base, decay) in zip(optimizer.param_groups, fresh_groups):
        group["initial_lr"] = base
        group["weight_decay"] = decay
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler.base_lrs = [base for base, _ in fresh_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
