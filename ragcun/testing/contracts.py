"""Contract checks for plugin authors: call them from your tests to verify a component behaves as ragcun
expects (shapes, finiteness, config round trip, the distance's inner-product reduction)."""

from __future__ import annotations

from typing import Any

import torch

from ragcun.embedding import Embedding


def check_head(head_cls: type, in_dim: int = 24, batch: int = 5, **config: Any) -> None:
    """A head builds from ``(in_dim, **config)``, returns finite ``Embedding`` fields it declares, has
    gradients for every trainable parameter, and rebuilds identically from ``get_config()``."""
    torch.manual_seed(0)
    head = head_cls(in_dim=in_dim, **config)
    x = torch.randn(batch, in_dim, requires_grad=True)
    out = head(x)
    if not isinstance(out, Embedding):
        raise AssertionError(f"{head_cls.__name__} must return ragcun.embedding.Embedding, got {type(out)}")
    if out.mean.shape != (batch, head.out_dim):
        raise AssertionError(f"mean has shape {tuple(out.mean.shape)}, expected {(batch, head.out_dim)}")
    if out.fields != set(head.provides):
        raise AssertionError(f"head declares provides={set(head.provides)} but returned {out.fields}")
    if not torch.isfinite(out.mean).all():
        raise AssertionError("head output is not finite")
    total = out.mean.sum() + (out.logvar.sum() if out.logvar is not None else 0)
    total.backward()
    if x.grad is None:
        raise AssertionError("no gradient flows from the head's output back to the encoder")
    for name, p in head.named_parameters():
        if p.requires_grad and p.grad is None:
            raise AssertionError(f"parameter {name} gets no gradient")
    config_back = head.get_config()
    rebuilt = head_cls(**config_back)
    if rebuilt.get_config() != config_back:
        raise AssertionError("get_config() does not round-trip through the constructor")


def check_distance(distance: Any, dim: int = 8, n_queries: int = 4, n_docs: int = 9, logvar: bool = False) -> None:
    """``similarity`` has shape (Q, N) and is finite; the inner-product reduction ranks exactly as
    ``similarity`` and ``similarity_from_inner`` recovers it."""
    g = torch.Generator().manual_seed(0)
    def emb(n: int) -> Embedding:
        return Embedding(torch.randn(n, dim, generator=g, dtype=torch.float64),
                         torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.3 if logvar else None)
    q, d = emb(n_queries), emb(n_docs)
    sim = distance.similarity(q, d)
    if sim.shape != (n_queries, n_docs) or not torch.isfinite(sim).all():
        raise AssertionError(f"similarity must be a finite (Q, N) matrix, got {tuple(sim.shape)}")
    inner = distance.query_vectors(q) @ distance.document_vectors(d).T
    if not torch.equal(inner.argsort(dim=1, descending=True, stable=True),
                       sim.argsort(dim=1, descending=True, stable=True)):
        raise AssertionError("the inner-product reduction does not rank documents like similarity()")
    recovered = distance.similarity_from_inner(inner, q)
    if not torch.allclose(recovered, sim, atol=1e-8, rtol=1e-6):
        raise AssertionError("similarity_from_inner does not recover similarity()")
