"""Uniformity loss (Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment
and Uniformity on the Hypersphere", arXiv 2005.10242)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.nn import functional as F

from ragcun.distributed import (all_gather_sizes, all_reduce_sum, gather_with_grad, is_distributed, world)
from ragcun.losses._common import check_apply_to, check_positive, full_precision, selected, upcast
from ragcun.losses.base import Loss, LossInputs


class UniformityLoss(Loss):
    """``log mean_{i != j} exp(-t ||x_i - x_j||^2)`` over all pairs of the (global) batch.

    Inputs: the ``mean`` vectors of the queries and/or documents (``apply_to``, default both, averaged),
    each (N, D). ``normalize=True`` (default, as in the paper) L2-normalizes first, so the loss measures
    how uniformly directions cover the sphere; with ``normalize=False`` it acts on the raw vectors and can
    be lowered just by scaling them up (pair it with ``norm``). ``t`` defaults to 2 as in the paper.

    Distributed: every rank scores its own rows against the embeddings of all ranks (gathered with
    gradient), and the pair sums are all-reduced with gradient; the log-sum-exp shift is the global
    maximum, so every rank returns the concatenated-batch value.

    Example::

        >>> from ragcun.embedding import Embedding
        >>> loss = UniformityLoss()
        >>> value = loss(LossInputs(Embedding(torch.randn(16, 8)), Embedding(torch.randn(16, 8))))
    """

    def __init__(self, t: float = 2.0, normalize: bool = True, apply_to: str = "both") -> None:
        super().__init__()
        self.t = check_positive("t", t, "uniformity")
        self.normalize = bool(normalize)
        self.apply_to = check_apply_to(apply_to, "uniformity")

    def _one(self, x: torch.Tensor) -> torch.Tensor:  # x (n, D)
        with full_precision(x.device):  # the distance expansion cancels badly in half precision
            return self._statistic(upcast(x))

    def _statistic(self, x: torch.Tensor) -> torch.Tensor:  # x (n, D)
        if self.normalize:
            x = F.normalize(x, dim=-1)
        n_local = x.shape[0]
        rank, _ = world()
        if is_distributed():
            sizes = all_gather_sizes(n_local, device=x.device)
            everyone = gather_with_grad(x, sizes)  # (N, D)
            offset = sum(sizes[:rank])
        else:
            everyone, offset = x, 0
        n = everyone.shape[0]
        if n < 2:
            raise ValueError("uniformity needs at least 2 embeddings in the (global) batch")
        sq = (x.square().sum(1)[:, None] + everyone.square().sum(1)[None, :]
              - 2.0 * x @ everyone.T).clamp_min(0.0)  # (n, N)
        logits = -self.t * sq
        rows = torch.arange(n_local, device=x.device)
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[rows, offset + rows] = False  # pairs i != j only
        logits = logits.masked_fill(~not_self, float("-inf"))
        # Shift by the global max (a constant: no gradient needed through it) before summing exponentials.
        shift = logits.detach().max() if n_local else logits.new_tensor(float("-inf"))
        if is_distributed():
            dist.all_reduce(shift, op=dist.ReduceOp.MAX)
        total = all_reduce_sum(torch.exp(logits - shift).sum())  # sum over all ordered pairs i != j
        return shift + torch.log(total) - math.log(n * (n - 1))

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return torch.stack([self._one(x) for x in selected(inputs, self.apply_to)]).mean()

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        return 2, "compares every pair of embeddings in the batch"

    def get_config(self) -> dict:
        return {"t": self.t, "normalize": self.normalize, "apply_to": self.apply_to}
