from __future__ import annotations

import torch
from torch import nn

from ragcun.embedding import Embedding


class MLPHead(nn.Module):
    """``Linear(in, hidden) -> GELU -> Linear(hidden, out)``, unnormalized, plus an optional linear residual."""

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int = 1024, residual: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if min(out_dim, hidden_dim) < 1:
            raise ValueError("head.mlp.out_dim and head.mlp.hidden_dim must be positive")
        self.in_dim, self.out_dim, self.hidden_dim = int(in_dim), int(out_dim), int(hidden_dim)
        self.dropout = float(dropout)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, out_dim))
        self.skip = nn.Linear(in_dim, out_dim, bias=False) if residual else None

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, in) -> (B, out)
        y = self.net(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return Embedding(y)

    def sentence_transformers_modules(self) -> list:
        """The head as sentence-transformers ``Dense`` modules, for ``ragcun export --to sentence-transformers``
        (the export protocol of :mod:`ragcun.exporters.st_components`); dropout is off at inference.

        Without the residual: ``Dense(in->hidden, GELU) -> Dense(hidden->out)``. A Dense applies its activation
        to every output, so the residual ``S x`` rides through the GELU layer as ``[GELU(x), GELU(-x)]`` and is
        recovered by the next layer, since ``GELU(x) - GELU(-x) = x Phi(x) + x (1 - Phi(x)) = x`` exactly::

            Dense(in -> hidden + 2 in, GELU):  [W1; I; -I] x + [b1; 0; 0]
            Dense(hidden + 2 in -> out):       [W2, S, -S] h + b2  =  W2 GELU(W1 x + b1) + b2 + S x
        """
        # Imported here so the plugin still loads with a ragcun that has no exporters.
        from ragcun.exporters.st_modules import Dense, activation_path

        first, activation, second = self.net[0], self.net[1], self.net[3]
        gelu = activation_path(activation)
        w1, b1, w2 = first.weight.detach(), first.bias.detach(), second.weight.detach()
        b2 = second.bias.detach()
        if self.skip is None:
            return [Dense(w1, b1, gelu), Dense(w2, b2)]
        eye = torch.eye(self.in_dim, dtype=w1.dtype, device=w1.device)
        zeros = torch.zeros(2 * self.in_dim, dtype=b1.dtype, device=b1.device)
        skip = self.skip.weight.detach()
        return [Dense(torch.cat([w1, eye, -eye]), torch.cat([b1, zeros]), gelu),
                Dense(torch.cat([w2, skip, -skip], dim=1), b2)]

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden_dim": self.hidden_dim,
                "residual": self.skip is not None, "dropout": self.dropout}
