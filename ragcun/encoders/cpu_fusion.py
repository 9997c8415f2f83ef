"""bfloat16 inference on a CPU: a transformer's feed-forward ``dense`` + exact GELU as one oneDNN call.

On a CPU with AMX the bfloat16 matrix products are so fast that the element-wise work beside them sets the pace:
profiling all-MiniLM-L6-v2 over NFCorpus batches (``python benchmarks/bench_encode_peak.py --profile``) put the
GELU after the feed-forward's first product at 17% of the time, as much as that product itself, because it reads
and writes the whole (tokens, intermediate) activation once more. oneDNN applies the bias and GELU in the
product's epilogue while the block is still in cache (``torch.ops.mkldnn._linear_pointwise``, the kernel
torch.compile's CPU freezing pass uses), so the GELU costs next to nothing.

The numbers differ from the unfused pair only by rounding: the unfused pair rounds the product to bfloat16 before
the GELU, the fused one applies GELU to the float32 accumulator and rounds once. Float32 inference is never fused
(it is the reference path that equals sentence-transformers bit for bit), nor is training (the fused op has no
backward). ``RAGCUN_CPU_FUSION=0`` turns the fusion off (to compare, or to rule it out).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LinearGELU", "fuse_linear_gelu", "fused_gelu_available"]


def fused_gelu_available() -> bool:
    """Whether this torch has oneDNN's fused linear kernel, the CPU computes bfloat16 natively, and
    ``RAGCUN_CPU_FUSION`` is not 0."""
    from ragcun.precision import cpu_has_native_bfloat16

    if os.environ.get("RAGCUN_CPU_FUSION", "1") == "0":
        return False
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")
            and cpu_has_native_bfloat16())


class LinearGELU(nn.Module):
    """``gelu(linear(x))`` (exact, erf-based GELU) in one oneDNN call when ``x`` is on the CPU, in inference, with a
    bfloat16 weight; the plain two-step computation otherwise (a GPU, autograd, another dtype)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight  # (out, in)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = (x.device.type == "cpu" and self.weight.dtype == torch.bfloat16
                 and not (torch.is_grad_enabled() and self.weight.requires_grad))
        if not fused:
            return F.gelu(F.linear(x, self.weight, self.bias))
        # under autocast the input arrives in float32 (layer norm runs in float32); autocast would cast it for
        # F.linear, and does not know this op, so cast here
        rows = x.to(self.weight.dtype).reshape(-1, x.shape[-1])  # (tokens, in)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "gelu", [], "none")
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _is_exact_gelu(act) -> bool:
    from transformers.activations import GELUActivation

    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return isinstance(act, GELUActivation) and act.act is F.gelu


def fuse_linear_gelu(model: nn.Module) -> int:
    """Replace every ``dense`` + exact-GELU pair of a transformers feed-forward block (``BertIntermediate``,
    ``MPNetIntermediate`` and their kin: a module with a ``dense`` Linear and an ``intermediate_act_fn``) by one
    :class:`LinearGELU`, in place. Returns how many were fused (0 where the CPU or torch cannot)."""
    if not fused_gelu_available():
        return 0
    count = 0
    for module in model.modules():
        dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
        if isinstance(dense, nn.Linear) and _is_exact_gelu(act):
            module.dense = LinearGELU(dense)
            module.intermediate_act_fn = nn.Identity()
            count += 1
    return count
