"""Norm regularizer: keep the mean squared norm of the embeddings at a target."""

from __future__ import annotations

import torch

from ragcun.distributed import all_reduce_sum, all_reduce_sum_no_grad, is_distributed
from ragcun.losses._common import check_apply_to, check_positive, selected, upcast
from ragcun.losses.base import Loss, LossInputs


class NormLoss(Loss):
    """``(mean_n ||x_n||^2 / target - 1)^2``: pull the batch's mean squared norm toward ``target``.

    Inputs: the ``mean`` vectors of the queries and/or documents (``apply_to``, default both, averaged),
    each (N, D). ``target`` defaults to D, the mean squared norm of an N(0, I) sample, so the loss is a
    cheap scale anchor for unnormalized embeddings (contrastive losses on Euclidean distances otherwise
    reward growing or shrinking all vectors). The relative form keeps the loss O(1) for any D.
    Not from a paper: a simple companion to SIGReg/uniformity.

    Distributed: the sum of squared norms and the count are all-reduced (with gradient), so every rank
    returns the concatenated-batch value.

    Example::

        >>> from ragcun.embedding import Embedding
        >>> loss = NormLoss(target=8.0)
        >>> value = loss(LossInputs(Embedding(torch.randn(16, 8)), Embedding(torch.randn(16, 8))))
    """

    def __init__(self, target: float | None = None, apply_to: str = "both") -> None:
        super().__init__()
        self.target = None if target is None else check_positive("target", target, "norm")
        self.apply_to = check_apply_to(apply_to, "norm")

    def _one(self, x: torch.Tensor) -> torch.Tensor:  # x (N, D)
        target = float(x.shape[1]) if self.target is None else self.target
        total = upcast(x).square().sum()
        n = x.shape[0]
        if is_distributed():
            total = all_reduce_sum(total)
            n = int(all_reduce_sum_no_grad(n, device=x.device).item())
        if n < 1:
            raise ValueError("norm needs at least one embedding")
        return (total / n / target - 1.0).square()  # float32 (or float64): not rounded back to half

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return torch.stack([self._one(x) for x in selected(inputs, self.apply_to)]).mean()

    def get_config(self) -> dict:
        return {"target": self.target, "apply_to": self.apply_to}
