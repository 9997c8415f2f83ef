"""Heads fitted from data, not trained: centering and whitening (training-free isotropy).

They exist so that an ablation can tell a gain from SIGReg apart from a gain that centering or whitening the
embeddings alone would give (Su et al. 2021, "Whitening sentence representations for better semantics and
faster retrieval"; Mu & Viswanath 2018, "All-but-the-top"). Fit them on the encoder outputs of the corpus
that will be searched (:meth:`fit`), then save and load them like any checkpoint: the fitted statistics are
buffers in ``model.safetensors``.
"""

from __future__ import annotations

import torch
from torch import nn

from ragcun.embedding import Embedding

FIT_SAMPLE = 10_000  # documents a fitted head is fitted on when ragcun fits it (a seeded sample of the corpus)


def needs_fit(head: nn.Module) -> bool:
    """A head fitted from data (center, whiten, a plugin's with ``fit`` and ``is_fitted``) that was never fitted:
    it would pass the encoder's vectors through unchanged (or cut), so nothing may encode with it yet."""
    return callable(getattr(head, "fit", None)) and not getattr(head, "is_fitted", True)


def not_fitted_error(head: nn.Module) -> ValueError:
    from ragcun.components import component_name

    name = component_name(head)
    return ValueError(f"the model's {name} head is not fitted yet: it is fitted from the encoder's vectors of the "
                      "corpus to search, not trained. Fit it first: model.fit_head(documents) in Python; ragcun eval "
                      "beir and ragcun isotropy report fit it on the corpus they read, ragcun train on the training "
                      "documents")


def _check_features(features: torch.Tensor, in_dim: int, name: str) -> torch.Tensor:
    if features.ndim != 2 or features.shape[1] != in_dim or features.shape[0] < 2:
        raise ValueError(f"head.{name}.fit needs at least 2 vectors of width {in_dim}, got shape "
                         f"{tuple(features.shape)}")
    return features.detach().double()


class CenterHead(nn.Module):
    """``x - mu``, with ``mu`` the mean of the vectors it was fitted on (identity until fitted).

    Example::

        >>> head = CenterHead(in_dim=4)
        >>> x = torch.randn(100, 4) + 3.0
        >>> head.fit(x)
        >>> bool(head(x).mean.mean(0).abs().max() < 1e-5)
        True
    """

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = int(in_dim)
        self.register_buffer("offset", torch.zeros(self.in_dim))  # (H,)

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        self.offset.copy_(_check_features(features, self.in_dim, "center").mean(0).to(self.offset.dtype))

    @property
    def is_fitted(self) -> bool:
        # unfitted, the offset is exactly zero; the mean of real encoder vectors never is
        return bool(self.offset.any())

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> (B, H)
        return Embedding(x - self.offset.to(x.dtype))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.eye(self.in_dim, dtype=self.offset.dtype), -self.offset

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim}


class WhitenHead(nn.Module):
    """Whitening ``(x - mu) W`` fitted on a sample: ZCA (``W = U diag(1/sqrt(l + eps)) U^T``, the same width)
    by default, or, with ``dim=k``, PCA whitening onto the top ``k`` principal directions
    (``W = U_k diag(1/sqrt(l_k + eps))``, width ``k``, as in BERT-whitening). Identity until fitted.

    ``eps`` (relative to the largest eigenvalue) keeps near-null directions from being blown up to noise.

    Example::

        >>> head = WhitenHead(in_dim=3)
        >>> x = torch.randn(2000, 3) @ torch.tensor([[3.0, 0, 0], [1, 1, 0], [0, 0, 0.1]])
        >>> head.fit(x)
        >>> cov = torch.cov(head(x).mean.T)
        >>> bool((cov - torch.eye(3)).abs().max() < 1e-3)
        True
    """

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int, dim: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= self.in_dim):
            raise ValueError(f"head.whiten.dim must be an integer in 1..{self.in_dim} (or unset for ZCA), got {dim!r}")
        if not float(eps) >= 0:
            raise ValueError(f"head.whiten.eps must be 0 or more, got {eps!r}")
        self.dim, self.eps = dim, float(eps)
        self.out_dim = dim if dim is not None else self.in_dim
        self.register_buffer("offset", torch.zeros(self.in_dim))  # (H,)
        self.register_buffer("transform", torch.eye(self.in_dim)[:, :self.out_dim].clone())  # (H, out)

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        x = _check_features(features, self.in_dim, "whiten")
        mu = x.mean(0)
        cov = torch.cov((x - mu).T, correction=0)  # (H, H)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)  # descending
        scale = (values + self.eps * float(values[0])).rsqrt()
        if self.dim is None:
            transform = vectors @ torch.diag(scale) @ vectors.T  # ZCA: stays closest to the input coordinates
        else:
            transform = vectors[:, :self.dim] * scale[:self.dim]
        self.offset.copy_(mu.to(self.offset.dtype))
        self.transform.copy_(transform.to(self.transform.dtype))

    @property
    def is_fitted(self) -> bool:
        # unfitted: a zero offset and the identity (or its first columns); a fitted whitening is neither
        initial = torch.eye(self.in_dim, dtype=self.transform.dtype, device=self.transform.device)[:, :self.out_dim]
        return bool(self.offset.any()) or not torch.equal(self.transform, initial)

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> (B, out)
        return Embedding((x - self.offset.to(x.dtype)) @ self.transform.to(x.dtype))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.transform.T  # (out, H)
        return weight, -(weight @ self.offset)

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "dim": self.dim, "eps": self.eps}
