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

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden_dim": self.hidden_dim,
                "residual": self.skip is not None, "dropout": self.dropout}
