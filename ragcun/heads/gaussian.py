from __future__ import annotations

import torch
from torch import nn

from ragcun.embedding import Embedding


class GaussianHead(nn.Module):
    """The ragcun head: an unnormalized linear map to ``out_dim`` (default 512) dimensions.

    The output is deliberately *not* L2-normalized: unit-norm embeddings have a per-direction spread of
    about ``1/sqrt(D)`` and look nearly collapsed to SIGReg, so the isotropy regularizer could only fight the
    normalization. With ``logvar=true`` a second linear map predicts a per-dimension log-variance, making each
    text a diagonal Gaussian ``N(mean, diag(exp(logvar)))`` for the ``wasserstein`` and
    ``expected-sqeuclidean`` distances and the ``gaussian-kl`` regularizer.

    The mean map is initialised orthogonally with gain ``init_scale``: with orthogonal rows the output keeps
    the input's geometry, so training starts from the encoder's own ranking.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, logvar: bool = False, init_scale: float = 1.0,
                 logvar_init: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        if self.out_dim < 1:
            raise ValueError(f"head.gaussian.out_dim must be positive, got {out_dim}")
        self.init_scale = float(init_scale)
        self.logvar_init = float(logvar_init)
        self.mean = nn.Linear(self.in_dim, self.out_dim)
        nn.init.orthogonal_(self.mean.weight, gain=self.init_scale)
        nn.init.zeros_(self.mean.bias)
        self.logvar = None
        if logvar:
            self.logvar = nn.Linear(self.in_dim, self.out_dim)
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, self.logvar_init)

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({"mean", "logvar"}) if self.logvar is not None else frozenset({"mean"})

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> mean (B, D), logvar (B, D)
        return Embedding(self.mean(x), self.logvar(x) if self.logvar is not None else None)

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "logvar": self.logvar is not None,
                "init_scale": self.init_scale, "logvar_init": self.logvar_init}
