from __future__ import annotations

import torch
from torch import nn

from ragcun.embedding import Embedding


class IdentityHead(nn.Module):
    """Passes the encoder's pooled vector through unchanged (``out_dim == in_dim``).

    Use it to evaluate a base model exactly as its authors do, or to train the encoder alone.
    """

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = int(in_dim)

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> (B, H)
        return Embedding(x)

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim}
