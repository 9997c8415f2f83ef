"""Dropout for training on a CPU at the speed of the random-number generator, not of torch's ``bernoulli_``.

A torch.profiler trace of a bfloat16 training step of all-MiniLM-L6-v2 on a 2-core CPU (batch 32, NFCorpus
pairs at 256 tokens) put half of the step inside ``scaled_dot_product_attention``: with ``dropout_p > 0`` torch
has no fused CPU kernel, so it takes its reference path, which draws the dropout mask of every (text, head,
query, key) with ``bernoulli_`` (about 1 G draws/s on 2 cores: 126 ms for one layer's 32 x 12 x 256 x 256
probabilities), then applies it and the softmax's safety checks in separate passes. The whole-step gain is what
``python benchmarks/bench_train.py`` measures (its "torch's dropout" rows; benchmarks/RESULTS.md, "Training").

Here the mask comes from 64-bit random words split into 16-bit lanes (``random_`` fills 25 M lanes in about 10 ms):
a lane below ``round(p * 65536)`` drops its element. The drop probability is therefore ``p`` rounded to a
multiple of 1/65536 (0.1 becomes 0.1000061) and the kept values are scaled by the exact ``1 / (1 - p')``, so each
element's expectation is unchanged, as with torch's dropout. For bfloat16 and float16 activations the mask is a
0/1 tensor of their dtype, which multiplies them about 5x faster than ``torch.where`` selects with a boolean one;
float32 keeps torch's boolean mask (one byte per element saved for the backward pass instead of four). The
attention itself is the textbook one in the inputs' dtype (the same products and softmax torch's reference path
computes), with the mask applied once and its scale folded into the small (tokens, head_dim) output.

Only training on a CPU takes this path. In evaluation, or with ``p = 0``, or on a GPU (whose fused kernels draw
dropout themselves) the attention is transformers' SDPA and the dropout torch's, bit for bit. The masks come
from torch's default generator, so seeding, checkpointed RNG state, GradCache's replay and gradient
checkpointing's recomputation all see the same masks as before; they are different draws from torch's own, so
a run's losses differ from one with torch's dropout by dropout noise only. ``RAGCUN_CPU_FAST_DROPOUT=0`` keeps
torch's dropout (to compare, or to rule this out).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ATTENTION_NAME", "FastDropout", "attention_forward", "dropout", "fast_dropout_enabled",
           "install_fast_dropout", "keep_mask"]

ATTENTION_NAME = "ragcun_cpu_dropout"  # the name under which transformers finds attention_forward
_LANES = 65536  # a 16-bit lane takes this many values


def fast_dropout_enabled() -> bool:
    """False when ``RAGCUN_CPU_FAST_DROPOUT`` is 0."""
    return os.environ.get("RAGCUN_CPU_FAST_DROPOUT", "1") != "0"


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.bool) -> tuple[torch.Tensor, float]:
    """A mask of ``shape`` whose elements are 0 (False) with probability ``p'`` (``p`` rounded to a multiple of
    1/65536) and 1 (True) otherwise, and ``1 / (1 - p')``, the scale that keeps each element's expectation.
    ``dtype`` may be a floating type: a 0/1 mask in the activations' dtype (:func:`_mask_dtype` says when)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    dropped = round(p * _LANES)
    if dropped in (0, _LANES):
        raise ValueError(f"dropout probability {p} rounds to {dropped}/65536: use 0 or 1 without a mask")
    count = math.prod(shape)
    # full-range 64-bit words: every one of the four 16-bit lanes is uniform (random_() alone leaves the top bit 0)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    lanes = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    mask = torch.ge(lanes, dropped - _LANES // 2, out=torch.empty(shape, dtype=dtype, device=device))
    return mask, _LANES / (_LANES - dropped)


def _fast_path(x: torch.Tensor, p: float) -> bool:
    return x.device.type == "cpu" and 0.0 < p < 1.0 and 0 < round(p * _LANES) < _LANES and fast_dropout_enabled()


def _mask_dtype(x: torch.Tensor) -> torch.dtype:
    """A 16-bit activation gets a 0/1 mask of its own dtype (multiplying by it is 5x faster than selecting with a
    boolean mask, for one more byte per element kept for the backward pass); float32 keeps a boolean mask, as
    torch's dropout does: a float32 mask would cost 3 more bytes per element of every attention matrix."""
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bool


def _apply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, x, 0.0) if keep.dtype == torch.bool else x * keep


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the mask of :func:`keep_mask` when training on a CPU; ``F.dropout`` itself otherwise."""
    if not training or not _fast_path(x, p):
        return F.dropout(x, p, training)
    keep, scale = keep_mask(x.shape, p, x.device, _mask_dtype(x))
    return _apply(x, keep) * scale  # the scale in float arithmetic, rounded once per element, as torch's does


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose training-mode mask on a CPU comes from :func:`keep_mask` (:func:`dropout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.inplace else dropout(x, self.p, self.training)


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``(B, H, Tq, d)`` query, key and value in, ``(B, Tq, H, d)`` out.
    Training with dropout on a CPU computes it here; everything else is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _fast_path(query, dropout) or kwargs.get("position_bias") is not None or kwargs.get("is_causal"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # the reference path's arithmetic, in the projections' dtype (SDPA is a single op to autocast, so this runs
    # with autocast off and keeps the dtype the query, key and value arrive in)
    with torch.autocast(device_type="cpu", enabled=False):
        key, value = key.to(query.dtype), value.to(query.dtype)
        scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # (B, H, Tq, Tk)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask.to(scores.dtype)
        probs = torch.softmax(scores, dim=-1)
        keep, scale = keep_mask(probs.shape, dropout, probs.device, _mask_dtype(probs))
        out = torch.matmul(_apply(probs, keep), value) * scale  # the scale on (Tq, d), not on (Tq, Tk)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the same masks SDPA receives


def install_fast_dropout(model: nn.Module) -> dict[str, int]:
    """Give ``model`` this module's dropout: every ``nn.Dropout`` becomes a :class:`FastDropout` (same ``p``),
    and every transformers model that attends through SDPA attends through :func:`attention_forward`. Nothing
    changes in evaluation or on a GPU, nor in the weights or the saved config. Returns what was replaced."""
    replaced = {"dropout_modules": 0, "attention_models": 0}
    if not fast_dropout_enabled():
        return replaced
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                replaced["dropout_modules"] += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(module, "set_attn_implementation"):
            try:
                _register()
            except ImportError:  # a transformers without attention or mask interfaces: its attention stays SDPA
                break
            module.set_attn_implementation(ATTENTION_NAME)
            replaced["attention_models"] += 1
    return replaced

