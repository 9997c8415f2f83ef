"""Matryoshka representation learning: a loss applied to prefixes of the embedding, so that its first ``d``
coordinates alone are a usable embedding (Kusupati et al. 2022, arXiv 2205.13147; sentence-transformers'
``MatryoshkaLoss``)."""

from __future__ import annotations

import dataclasses
import math

import torch

from ragcun.embedding import Embedding
from ragcun.losses.base import Loss, LossInputs


def truncate_embedding(e: Embedding | None, dim: int) -> Embedding | None:
    """The first ``dim`` coordinates of the mean (and of the log-variance, for Gaussian embeddings)."""
    return None if e is None else e.truncate(dim)


def default_dims(dim: int) -> list[int]:
    """The model's width and its halvings, four levels at most (512 -> [512, 256, 128, 64])."""
    dims = [dim]
    while len(dims) < 4 and dims[-1] // 2 >= 1 and dims[-1] % 2 == 0:
        dims.append(dims[-1] // 2)
    return dims


class MatryoshkaLoss(Loss):
    """``matryoshka:INNER``: the inner loss on each prefix of the embeddings, averaged with weights.

    For ``dims = [d_1, ..., d_m]`` and weights ``w`` (default all 1)::

        loss = sum_j w_j * INNER(inputs truncated to the first d_j coordinates) / sum_j w_j

    Every embedding of the batch (queries, positives, hard negatives; means and log-variances) is truncated,
    and everything else (ids, relevance lists, teacher scores, the step) passes through, so the inner loss
    and the model's distance are used unchanged on every prefix: any distance, Euclidean on unnormalized
    vectors included (a prefix of a Euclidean embedding is scored with the Euclidean distance of the prefix).
    sentence-transformers' ``MatryoshkaLoss`` *sums* the weighted terms; this is their weighted mean, so a
    term weight of ``m`` (``4*matryoshka:contrastive`` for four dims) gives theirs.

    Spec: ``matryoshka:contrastive`` (the argument is one loss term, without a weight; its settings are its
    own, ``--set loss.contrastive.temperature=0.05``); it composes like any term:
    ``matryoshka:contrastive+0.2*isotropy`` regularizes the full embedding. Settings: ``dims`` (a list of
    positive integers, each at most the embedding width; default the width and its halvings, four levels at
    most) and ``weights`` (one positive number per dim).

    Distributed: each prefix's term is the inner loss's own, exact under torch.distributed, so the weighted
    mean is too. Start-up calibration rescales the inner loss's temperature (a uniform scale of the embedding
    scales every prefix's distances alike).
    """

    def __init__(self, inner: torch.nn.Module | None = None, dims: list[int] | None = None,
                 weights: list[float] | None = None, dim: int | None = None) -> None:
        super().__init__()
        if inner is None:  # built alone, not from a spec
            raise ValueError("loss matryoshka wraps another loss: give it as matryoshka:LOSS, e.g. "
                             "--loss matryoshka:contrastive")
        self.inner = inner
        self.needs = frozenset(getattr(inner, "needs", {"mean"}))
        if dims is None:
            if dim is None:
                raise ValueError("loss.matryoshka.dims is required here (the embedding width is not known), e.g. "
                                 "--set loss.matryoshka.dims=[512,256,128,64]")
            dims = default_dims(int(dim))
        if not isinstance(dims, (list, tuple)) or not dims or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise ValueError(f"loss.matryoshka.dims must be a non-empty list of positive integers, e.g. "
                             f"[512,256,128,64]; got {dims!r}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"loss.matryoshka.dims lists a dimension twice: {dims!r}")
        if dim is not None and max(dims) > int(dim):
            raise ValueError(f"loss.matryoshka.dims {list(dims)} asks for {max(dims)} coordinates, but the embedding "
                             f"has {dim}")
        if weights is None:
            weights = [1.0] * len(dims)
        if not isinstance(weights, (list, tuple)) or len(weights) != len(dims):
            raise ValueError(f"loss.matryoshka.weights must be a list of {len(dims)} numbers (one per dim), "
                             f"got {weights!r}")
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(f"loss.matryoshka.weights must be numbers, got {weights!r}") from None
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"loss.matryoshka.weights must be positive finite numbers, got {weights!r}")
        self.dims, self.weights = [int(d) for d in dims], weights

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        width = inputs.queries.mean.shape[-1]
        if max(self.dims) > width:
            raise ValueError(f"loss.matryoshka.dims {self.dims} asks for {max(self.dims)} coordinates, but the "
                             f"embeddings have {width}")
        total = None
        for d, w in zip(self.dims, self.weights):
            part = dataclasses.replace(inputs, queries=truncate_embedding(inputs.queries, d),
                                       positives=truncate_embedding(inputs.positives, d),
                                       negatives=truncate_embedding(inputs.negatives, d))
            value = w * _scalar(self.inner(part))
            total = value if total is None else total + value
        return total / sum(self.weights)

    @torch.no_grad()
    def rescale_temperature(self, factor: float) -> None:
        """Pass training start-up's temperature rescaling on to the inner loss (ragcun.training.calibration)."""
        rescale = getattr(self.inner, "rescale_temperature", None)
        if rescale is not None:
            rescale(factor)

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        inner = getattr(self.inner, "batch_requirement", None)
        return inner(negatives_per_query) if inner is not None else (1, "")

    def get_config(self) -> dict:
        inner = self.inner.get_config() if hasattr(self.inner, "get_config") else {}
        return {"dims": list(self.dims), "weights": list(self.weights), "inner": inner}


def _scalar(value) -> torch.Tensor:
    """An inner loss may be a composite (returns LossOutput): its total."""
    return getattr(value, "total", value)
