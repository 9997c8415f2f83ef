"""Contract checks for plugin authors: call them from your tests to verify a component behaves as ragcun
expects (shapes, finiteness, gradients, config round trip, the distance's inner-product reduction, a head's
calibration and fitting, a loss's determinism per step). One checker per kind: :func:`check_encoder`,
:func:`check_head`, :func:`check_loss`, :func:`check_distance`; :mod:`ragcun.protocols` documents what each kind
must provide. ragcun's own tests run them on every component registered of each kind (tests/test_contracts.py).

Each raises ``AssertionError`` naming what is wrong, and returns nothing when the component passes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from ragcun.embedding import Embedding

TEXTS = ["a short query", "a much longer document about gaussian embeddings and the distances between them " * 3,
         "x", "Euclidean distance ranks documents."]


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
    if getattr(head, "calibrates", False):
        _check_calibration(head_cls(in_dim=in_dim, **config), in_dim)
    if callable(getattr(head, "fit", None)):
        _check_fit(head_cls(in_dim=in_dim, **config), in_dim)


def _check_calibration(head: Any, in_dim: int) -> None:
    """ragcun.protocols.CalibratingHead: ``calibrate(features, center=..., ctx=...)`` returns a positive factor
    and ends the calibration (with ``ctx`` for one process, the call every rank makes under DDP)."""
    from ragcun.distributed import DistributedContext

    params = inspect.signature(head.calibrate).parameters
    missing = [name for name in ("center", "ctx") if name not in params
               and not any(p.kind is p.VAR_KEYWORD for p in params.values())]
    if missing:
        raise AssertionError(f"calibrate() must take the keyword arguments center= and ctx= (the run's "
                             f"DistributedContext, to agree with the other ranks), lacks {missing}")
    probe = torch.randn(32, in_dim, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.5
    factor = head.calibrate(probe, center=True, ctx=DistributedContext())
    if not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 0):
        raise AssertionError(f"calibrate() must return the positive factor the outputs were scaled by, got {factor!r}")
    if head.calibrates:
        raise AssertionError("calibrates is still True after calibrate(): training would calibrate a resumed run again")
    if not torch.isfinite(head(probe).mean).all():
        raise AssertionError("the calibrated head's output is not finite")


def _check_fit(head: Any, in_dim: int) -> None:
    """ragcun.protocols.FittedHead: ``fit(features)`` on encoder vectors makes ``is_fitted`` true."""
    if getattr(head, "is_fitted", True):
        raise AssertionError("a head with fit() must report is_fitted=False until it is fitted")
    head.fit(torch.randn(64, in_dim, generator=torch.Generator().manual_seed(2)) + 1.0)
    if not head.is_fitted:
        raise AssertionError("is_fitted is still False after fit()")


def check_encoder(encoder: Any, texts: list[str] | None = None) -> None:
    """An encoder (``torch.nn.Module``) turns texts into ``(B, dim)`` finite vectors through ``tokenize`` and
    ``forward``, the same vector for a text whatever else is in its batch, gradients reach its trainable
    parameters, ``tokenize(texts, max_length=N)`` (when taken) works, and ``get_config()`` is a dict."""
    texts = list(texts or TEXTS)
    if not isinstance(encoder, torch.nn.Module):
        raise AssertionError(f"an encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    dim = getattr(encoder, "dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise AssertionError(f"encoder.dim must be a positive int, got {dim!r}")
    was_training = encoder.training
    encoder.eval()
    try:
        features = encoder.tokenize(texts)
        if not isinstance(features, dict) or not all(isinstance(v, torch.Tensor) for v in features.values()):
            raise AssertionError("tokenize(texts) must return a dict of tensors (what forward takes)")
        out = encoder(features)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(texts), dim):
            raise AssertionError(f"forward must return a ({len(texts)}, {dim}) tensor, got "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if not out.is_floating_point() or not torch.isfinite(out).all():
            raise AssertionError("the encoder's vectors are not finite floating-point numbers")
        with torch.no_grad():
            alone = torch.cat([encoder(encoder.tokenize([t])) for t in texts])
        if not torch.allclose(alone, out.detach(), rtol=1e-4, atol=1e-5):
            raise AssertionError("a text's vector depends on the other texts of its batch (padding?): ragcun "
                                 "batches texts sorted by length")
        trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
        if trainable:
            out.sum().backward()
            if all(p.grad is None for _, p in trainable):
                raise AssertionError("no gradient reaches any of the encoder's trainable parameters")
            encoder.zero_grad(set_to_none=True)
        if "max_length" in inspect.signature(encoder.tokenize).parameters:
            with torch.no_grad():
                short = encoder(encoder.tokenize(texts, max_length=8))
            if tuple(short.shape) != (len(texts), dim):
                raise AssertionError(f"tokenize(texts, max_length=8) gives vectors of shape {tuple(short.shape)}")
    finally:
        encoder.train(was_training)
    if not isinstance(encoder.get_config(), dict):
        raise AssertionError("get_config() must return a dict (the constructor's arguments)")


def check_loss(loss: Any, dim: int = 8, batch: int = 6, negatives: int = 2) -> None:
    """A loss term (``torch.nn.Module``, built for embeddings ``dim`` wide) called on a :class:`LossInputs` of
    ``batch`` queries with ``negatives`` hard negatives each, teacher scores and ids returns a finite scalar tensor
    that is differentiable, the same value again for the same step, and declares consistent ``needs``,
    ``batch_requirement`` and ``get_config``. A composite (whose ``forward`` returns a ``LossOutput``) is checked
    on its total, which must equal the sum of its terms."""
    from ragcun.losses.base import LossInputs, LossOutput

    if not isinstance(loss, torch.nn.Module):
        raise AssertionError(f"a loss must be a torch.nn.Module, got {type(loss).__name__}")
    needs = set(getattr(loss, "needs", {"mean"}))
    if not needs <= {"mean", "logvar"} or "mean" not in needs:
        raise AssertionError(f"needs must name embedding fields (mean, logvar), got {needs}")
    g = torch.Generator().manual_seed(0)

    def emb(n: int) -> Embedding:
        mean = torch.randn(n, dim, generator=g).requires_grad_(True)
        logvar = (torch.randn(n, dim, generator=g) * 0.3).requires_grad_(True) if "logvar" in needs else None
        return Embedding(mean, logvar)

    q, p, n = emb(batch), emb(batch), emb(batch * negatives) if negatives else None
    inputs = LossInputs(q, p, n, positive_ids=[f"p{i}" for i in range(batch)],
                        negative_ids=[f"n{i}" for i in range(batch * negatives)] if negatives else None, step=3,
                        teacher_scores=torch.randn(batch, 1 + negatives, generator=g))

    def value_of(out: Any) -> torch.Tensor:
        if isinstance(out, LossOutput):
            if out.terms and not torch.allclose(out.total, torch.stack(list(out.terms.values())).sum()):
                raise AssertionError("a composite's total must be the sum of its weighted terms")
            return out.total
        return out

    value = value_of(loss(inputs))
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        raise AssertionError(f"forward must return a scalar (0-dim) floating-point tensor, got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    if not torch.isfinite(value):
        raise AssertionError(f"the loss is not finite: {float(value)}")
    if not value.requires_grad:
        raise AssertionError("the loss is not differentiable (no graph back to the embeddings)")
    value.backward()
    grads = [t.grad for e in (q, p, n) if e is not None for t in (e.mean, e.logvar) if t is not None]
    if all(grad is None for grad in grads):
        raise AssertionError("no gradient reaches the embeddings")
    if not all(torch.isfinite(grad).all() for grad in grads if grad is not None):
        raise AssertionError("the loss's gradient is not finite")
    with torch.no_grad():
        again = value_of(loss(inputs))
    if not torch.allclose(again, value.detach(), rtol=1e-6, atol=1e-8):
        raise AssertionError("the same inputs at the same step give a different value: seed randomness from "
                             "inputs.step (every rank must draw the same)")
    requirement = getattr(loss, "batch_requirement", None)
    if requirement is not None:
        got = requirement(negatives)
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], int) and got[0] >= 1
                and isinstance(got[1], str)):
            raise AssertionError(f"batch_requirement(K) must return (queries >= 1, why), got {got!r}")
    if hasattr(loss, "get_config") and not isinstance(loss.get_config(), dict):
        raise AssertionError("get_config() must return a dict")


def check_distance(distance: Any, dim: int = 8, n_queries: int = 4, n_docs: int = 9, logvar: bool = False) -> None:
    """``similarity`` has shape (Q, N) and is finite; the inner-product reduction ranks exactly as
    ``similarity``."""
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
