"""VICReg-style variance and covariance regularizer (Bardes, Ponce & LeCun 2022, arXiv 2105.04906)."""

from __future__ import annotations

import torch

from ragcun.distributed import all_reduce_sum, all_reduce_sum_no_grad, is_distributed
from ragcun.losses._common import check_apply_to, check_positive, full_precision, selected, upcast
from ragcun.losses.base import Loss, LossInputs


class VarianceCovarianceLoss(Loss):
    """Keep every dimension's standard deviation at least ``gamma`` and decorrelate the dimensions.

    Inputs: the ``mean`` vectors of the queries and/or documents (``apply_to``), each (N, D). Per group::

        variance   = mean_d relu(gamma - sqrt(Var[x_d] + eps))
        covariance = sum_{d != e} Cov[x_d, x_e]^2 / D
        loss       = variance_weight * variance + covariance_weight * covariance

    with unbiased (N - 1) estimates, as in VICReg; groups are averaged. ``gamma`` defaults to 1, the
    standard deviation of the N(0, I) target. The variance/covariance weights default to 1 (VICReg uses
    25 : 1 next to its invariance term; set them with ``--set loss.variance-covariance.variance_weight=...``).

    Distributed: the sufficient statistics ``sum x`` (D,), ``sum x x^T`` (D, D) and N are all-reduced with
    the autograd-aware op, so every rank returns the statistic of the concatenated batch.

    Example::

        >>> from ragcun.embedding import Embedding
        >>> loss = VarianceCovarianceLoss()
        >>> value = loss(LossInputs(Embedding(torch.randn(32, 8)), Embedding(torch.randn(32, 8))))
    """

    def __init__(self, gamma: float = 1.0, eps: float = 1e-4, variance_weight: float = 1.0,
                 covariance_weight: float = 1.0, apply_to: str = "both") -> None:
        super().__init__()
        self.gamma = check_positive("gamma", gamma, "variance-covariance")
        self.eps = check_positive("eps", eps, "variance-covariance")
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        if self.variance_weight < 0 or self.covariance_weight < 0:
            raise ValueError("loss.variance-covariance: variance_weight and covariance_weight must be >= 0")
        self.apply_to = check_apply_to(apply_to, "variance-covariance")

    def _one(self, x: torch.Tensor) -> torch.Tensor:  # x (N, D)
        with full_precision(x.device):  # second moments overflow/cancel in half precision
            return self._statistic(upcast(x))

    def _statistic(self, x: torch.Tensor) -> torch.Tensor:  # x (N, D), float32 or float64
        d = x.shape[1]
        s1 = x.sum(0)  # (D,)
        s2 = x.T @ x  # (D, D)
        n = x.shape[0]
        if is_distributed():
            s1, s2 = all_reduce_sum(s1), all_reduce_sum(s2)
            n = int(all_reduce_sum_no_grad(n, device=x.device).item())
        if n < 2:
            raise ValueError("variance-covariance needs at least 2 embeddings in the (global) batch")
        mu = s1 / n  # (D,)
        cov = (s2 - n * torch.outer(mu, mu)) / (n - 1)  # (D, D), unbiased
        var = torch.diagonal(cov).clamp_min(0.0)  # round-off can make it slightly negative
        variance = torch.relu(self.gamma - torch.sqrt(var + self.eps)).mean()
        off = cov - torch.diag_embed(torch.diagonal(cov))
        covariance = off.square().sum() / d
        return self.variance_weight * variance + self.covariance_weight * covariance

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return torch.stack([self._one(x) for x in selected(inputs, self.apply_to)]).mean()

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        return 2, "estimates the batch's variance and covariance"

    def get_config(self) -> dict:
        return {"gamma": self.gamma, "eps": self.eps, "variance_weight": self.variance_weight,
                "covariance_weight": self.covariance_weight, "apply_to": self.apply_to}
