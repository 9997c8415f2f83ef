"""Matryoshka truncation of a trained model: its embeddings cut to their first ``D`` coordinates.

A model trained with ``--loss matryoshka:LOSS`` is meant to be used at a smaller width too. :func:`truncate_model`
wraps its head in a :class:`TruncatedHead`, so everything downstream (``ragcun eval beir --truncate-dim D``,
``ragcun isotropy report --truncate-dim D``, ``ragcun export --truncate-dim D``) sees a ``D``-dimensional model
scored with its own distance on the prefix (Euclidean on the first ``D`` coordinates, cosine of the prefixes,
...), the same function the matryoshka loss trained. Nothing is renormalized: a prefix of an unnormalized
embedding stays unnormalized.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ragcun.embedding import Embedding


def check_truncate_dim(dim: Any, width: int, flag: str = "--truncate-dim") -> int:
    """``dim`` as an int in ``1..width``, or a ValueError naming ``flag``."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{flag} must be a positive integer, got {dim!r}")
    if dim > width:
        raise ValueError(f"{flag} {dim}: the model's embeddings have {width} dimensions")
    return dim


class TruncatedHead(nn.Module):
    """A head whose outputs are cut to their first ``dim`` coordinates (mean and log-variance)."""

    def __init__(self, head: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = head
        self.out_dim = check_truncate_dim(dim, int(head.out_dim))
        self.in_dim = getattr(head, "in_dim", None)
        self.provides = frozenset(getattr(head, "provides", {"mean"}))

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> (B, dim)
        return self.inner(x).truncate(self.out_dim)

    def get_config(self) -> dict:
        inner = self.inner.get_config() if hasattr(self.inner, "get_config") else {}
        return {**inner, "truncate_dim": self.out_dim, "full_dim": int(self.inner.out_dim)}


def truncate_model(model, dim: int | None):
    """``model`` cut to its first ``dim`` coordinates: a new EmbeddingModel sharing the encoder, the head (wrapped
    in a :class:`TruncatedHead`), the distance and the prefixes; ``model`` itself is unchanged. ``None`` or the
    model's own width give ``model`` back."""
    if dim is None:
        return model
    check_truncate_dim(dim, int(model.dim))
    if dim == model.dim:
        return model
    from ragcun.model import EmbeddingModel

    return EmbeddingModel(model.encoder, TruncatedHead(model.head, dim), model.distance,
                          query_prefix=model.query_prefix, document_prefix=model.document_prefix)
