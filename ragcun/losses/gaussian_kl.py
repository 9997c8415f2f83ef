"""KL divergence of a ``gaussian`` head's per-text distribution to N(0, I) (the VAE prior term: Kingma &
Welling 2014, arXiv 1312.6114)."""

from __future__ import annotations

import torch

from ragcun.losses._common import check_apply_to, full_precision, rank_share, selected, upcast
from ragcun.losses.base import Loss, LossInputs

_FIX = "--head gaussian --set head.gaussian.logvar=true"


class GaussianKLLoss(Loss):
    """``mean_n KL(N(mu_n, diag(sigma_n^2)) || N(0, I))``, each KL summed over dimensions::

        KL = 0.5 * sum_d (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2)

    Inputs: ``mean`` and ``logvar`` (``log sigma^2``) of the queries and/or documents (``apply_to``,
    default both, averaged), each (N, D). Needs a head with a log-variance
    (``--set head.gaussian.logvar=true``). ``per_dimension=True`` (default) divides by D so the weight does
    not depend on the embedding width.

    Distributed: a per-text mean; each rank returns its share scaled so the rank average is the
    concatenated-batch mean (see :func:`ragcun.losses._common.rank_share`).

    Example::

        >>> from ragcun.embedding import Embedding
        >>> e = Embedding(torch.randn(4, 8), torch.zeros(4, 8))
        >>> value = GaussianKLLoss()(LossInputs(e, e))
    """

    needs = frozenset({"mean", "logvar"})

    def __init__(self, per_dimension: bool = True, apply_to: str = "both") -> None:
        super().__init__()
        self.per_dimension = bool(per_dimension)
        self.apply_to = check_apply_to(apply_to, "gaussian-kl")

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        missing = [name for name, e in (("queries", inputs.queries), ("positives", inputs.positives),
                                        ("negatives", inputs.negatives)) if e is not None and e.logvar is None]
        if missing:
            raise ValueError(f"loss 'gaussian-kl' needs a log-variance, but the {', '.join(missing)} have none; "
                             f"use {_FIX}")
        values = []
        for mu, logvar in zip(selected(inputs, self.apply_to, "mean"), selected(inputs, self.apply_to, "logvar")):
            with full_precision(mu.device):
                mu, logvar = upcast(mu), upcast(logvar)
                kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)  # (N,)
            if self.per_dimension:
                kl = kl / mu.shape[1]
            values.append(rank_share(kl.sum(), mu.shape[0]))
        return torch.stack(values).mean()

    def get_config(self) -> dict:
        return {"per_dimension": self.per_dimension, "apply_to": self.apply_to}
