"""Compute precision by name: the one place a ``--dtype`` string becomes a torch dtype, checked against the device.

Training (:mod:`ragcun.training.optim`) and evaluation (:mod:`ragcun.evaluation.pipeline`, whose modes,
:data:`PRECISIONS`, are named here: ``bfloat16-weights`` and ``bfloat16-autocast`` tell the whole-model cast from
autocast, in ``eval beir --dtype`` and in ablation plans alike) both resolve their dtype here, so the names and
the errors agree:

Training's ``--dtype`` (:data:`DTYPES`) is autocast and never casts the weights, so its bfloat16 is
``bfloat16-autocast``, evaluation's name for the same mode; the bare ``bfloat16`` it has always accepted still means
that (:func:`training_dtype`), and ``bfloat16-weights`` is refused with the reason.

* ``auto``: bfloat16 on a CUDA device that supports it, float32 everywhere else;
* ``float16`` needs a CUDA device;
* ``bfloat16`` on a CUDA device needs one that supports it. On a CPU it always works, but only a CPU with native
  bfloat16 arithmetic (AVX512-BF16 or AMX, which oneDNN uses) makes it fast: on an AVX2-only CPU torch emulates
  it and an encoder runs about 7x slower than in float32 (all-mpnet-base-v2 on an AMD EPYC with AVX2, measured
  in benchmarks/RESULTS.md), training about 16x (all-MiniLM-L6-v2, benchmarks/bench_train.py, on the same kind of
  CPU). :func:`precision_warning` says so before a run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: the names and their check serve light modules (the CLI's config)
    import torch

# training's --dtype names (and what resolve_dtype takes); bfloat16 is the older spelling of bfloat16-autocast
DTYPES = ("auto", "float32", "bfloat16-autocast", "float16", "bfloat16")
# the one name each of training's precisions has: the bare bfloat16 is read as autocast, what it always meant there
TRAINING_SPELLINGS = {"bfloat16": "bfloat16-autocast"}


# evaluation's precision modes (ragcun eval beir --dtype, ablation plans): one name each, the same everywhere
PRECISIONS = ("float32", "bfloat16-weights", "bfloat16-autocast", "float16")
# an older spelling, read with the meaning it had where it was written
OLD_SPELLINGS = {
    "eval": {"bfloat16": "bfloat16-weights"},  # ragcun eval beir --dtype, evaluate_beir(dtype=), the beir evaluator
    "plan": {"bfloat16": "bfloat16-autocast"},  # an ablation plan's dtype
}


def precision_names(place: str) -> tuple[str, ...]:
    """Every name ``place`` (``"eval"`` or ``"plan"``) accepts: :data:`PRECISIONS`, then its older spellings."""
    return (*PRECISIONS, *OLD_SPELLINGS[place])


def precision(name: str, place: str, *, flag: str = "--dtype") -> str:
    """The evaluation mode (one of :data:`PRECISIONS`) that ``name`` means where it was written (``place``:
    ``"eval"`` or ``"plan"``, :data:`OLD_SPELLINGS`); a ValueError naming ``flag`` and the accepted names
    otherwise."""
    check_dtype_name(name, precision_names(place), flag=flag)
    return OLD_SPELLINGS[place].get(name, name)


def training_dtype(name: str, *, flag: str = "--dtype") -> str:
    """The precision mode a training ``--dtype`` names (``bfloat16`` -> ``bfloat16-autocast``; the others are
    their own); a ValueError naming ``flag`` for ``bfloat16-weights`` (training never casts its weights) and for
    a name that is not one of :data:`DTYPES`. The configuration keeps the name as given (train_config.json)."""
    if name == "bfloat16-weights":
        raise ValueError(f"{flag} bfloat16-weights: training never casts the weights to bfloat16 (they stay float32 "
                         "for the optimizer); that mode is evaluation's. Use --dtype bfloat16-autocast (autocast: "
                         "the matrix products in bfloat16; the older --dtype bfloat16 means the same)")
    check_dtype_name(name, DTYPES, flag=flag)
    return TRAINING_SPELLINGS.get(name, name)


def check_dtype_name(name: str, choices: Sequence[str] = DTYPES, *, flag: str = "--dtype") -> str:
    """``name`` itself when it is one of ``choices``; a ValueError naming ``flag`` and the choices otherwise."""
    if name not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {name!r}")
    return name


def resolve_dtype(name: str, device: torch.device | str | None, *, flag: str = "--dtype") -> torch.dtype:
    """The torch dtype ``name`` (one of :data:`DTYPES`) means on ``device``; a ValueError naming ``flag`` when
    the device cannot compute in it. ``device=None`` (not known yet) checks the name only; ``auto`` then fails,
    as it depends on the device."""
    import torch

    check_dtype_name(name, DTYPES, flag=flag)
    torch_dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bfloat16-autocast": torch.bfloat16,
                    "float16": torch.float16}
    if device is None:
        if name == "auto":
            raise ValueError(f"{flag} auto: the device must be known to choose a dtype")
        return torch_dtypes[name]
    device = torch.device(device)
    cuda = device.type == "cuda"
    if name == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    dtype = torch_dtypes[name]
    if dtype is torch.float16 and not cuda:
        raise ValueError(f"{flag} float16 needs a CUDA device (this one is {device}); on a CPU use bfloat16 or "
                         "float32")
    if dtype is torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{flag} {name}: this GPU ({device}) does not support bfloat16; use float16 or float32")
    return dtype


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (oneDNN with AVX512-BF16 or AMX). True when torch
    cannot tell, so that no warning is raised on a guess."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def precision_warning(dtype: torch.dtype | None, device: torch.device | str | None, *,
                      flag: str = "--dtype", faster: str = "--dtype float32 (or auto)") -> str | None:
    """A warning for a precision that runs far slower than float32 on ``device``, or None: bfloat16 on a CPU
    without native bfloat16 arithmetic. ``faster`` is what to use instead, in the words of the command that
    warns (training's --dtype takes auto; evaluation's and a plan's do not)."""
    import torch

    if dtype is not torch.bfloat16 or device is None or torch.device(device).type != "cpu":
        return None
    if cpu_has_native_bfloat16():
        return None
    return (f"{flag} bfloat16: this CPU has no native bfloat16 arithmetic (torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}; it needs AVX512-BF16 or AMX), so bfloat16 is emulated and "
            "runs several times slower than float32 here (measured on an AVX2-only CPU: 16x in training, 7x in "
            f"encoding; benchmarks/RESULTS.md); {faster} is faster on this machine")
