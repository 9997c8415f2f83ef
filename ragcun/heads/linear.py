from __future__ import annotations

import torch
from torch import nn

from ragcun.embedding import Embedding


class LinearHead(nn.Module):
    """An affine projection ``W x + b`` from the encoder width to ``out_dim`` (default: the same width).

    Optionally L2-normalizes the output (``normalize=true``), which gives the classic cosine-space embedder.
    """

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int, out_dim: int | None = None, bias: bool = True, normalize: bool = False) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim) if out_dim is not None else self.in_dim
        if self.out_dim < 1:
            raise ValueError(f"head.linear.out_dim must be positive, got {out_dim}")
        self.normalize = bool(normalize)
        self.proj = nn.Linear(self.in_dim, self.out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> Embedding:
        y = self.proj(x)  # (B, out_dim)
        if self.normalize:
            y = nn.functional.normalize(y, dim=-1)
        return Embedding(y)

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "bias": self.proj.bias is not None,
                "normalize": self.normalize}
