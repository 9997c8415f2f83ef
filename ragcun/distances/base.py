"""The distance contract.

A distance scores every query against every document with ``similarity(q, d) -> (Q, N)``: larger means
closer (a true distance returns its negation). Training uses it for logits; retrieval must rank with the
*same* function. To let retrieval use one inner-product search (exact, chunked, or FAISS) for every
distance, each distance also maps queries and documents to vectors whose inner product ranks documents
exactly as ``similarity`` does for each query::

    query_vectors(q) @ document_vectors(d).T  ==  g_q(similarity(q, d))   for a per-query increasing g_q

(``g_q`` need not be known: retrieval re-scores the candidates with ``exact_similarity``, never inverts it).

The inner product is computed in float32, so it only proposes candidates; retrieval (and ``ragcun encode``)
ranks and reports with ``exact_similarity``: the same function computed in float64 from direct differences
(never the ``||q||^2 + ||d||^2 - 2 q.d`` expansion, whose round-off grows with the distance from the origin).
"""

from __future__ import annotations

import torch

from ragcun.embedding import Embedding


class Distance:
    needs: frozenset[str] = frozenset({"mean"})
    #: True for distances (similarity = -distance), False for similarities (cosine, dot)
    is_metric: bool = True
    #: ``k`` such that ``similarity(c q, c d) == c**k * similarity(q, d)`` for every ``c > 0`` (None: not
    #: homogeneous). Training start-up uses it to rescale the contrastive temperature when it rescales the head,
    #: so the initial logits do not change (ragcun.training.calibration).
    homogeneity: float | None = None
    #: True when ``similarity(q + v, d + v) == similarity(q, d)`` for every shift ``v`` of the means: then
    #: centering the embeddings changes no ranking, and retrieval searches centred embeddings (float32 inner
    #: products lose precision far from the origin).
    translation_invariant: bool = False
    #: ``similarity(q, d)`` written out, for people (teacher-score metadata, scale warnings); None: not stated
    formula: str | None = None

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N)
        raise NotImplementedError

    def distance(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N)
        return -self.similarity(q, d)

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N) float64
        """``similarity(q, d)`` as exactly as float64 allows, for ranking and reporting (no gradients needed).

        Retrieval re-scores its candidates with it and ranks by it; the default is ``similarity`` on float64
        copies. A distance whose ``similarity`` loses precision (an expansion, a gradient guard ``eps``)
        overrides it with the direct computation.
        """
        return self.similarity(as_float64(q), as_float64(d))

    def query_vectors(self, q: Embedding) -> torch.Tensor:  # (Q, K)
        raise NotImplementedError

    def document_vectors(self, d: Embedding) -> torch.Tensor:  # (N, K)
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def exact_similarity(distance, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N) float64
    """``distance.exact_similarity(q, d)``, or ``similarity`` in float64 for a distance that does not subclass
    :class:`Distance` (a third party's)."""
    fn = getattr(distance, "exact_similarity", None)
    if fn is None:
        return distance.similarity(as_float64(q), as_float64(d)).to(torch.float64)
    return fn(q, d).to(torch.float64)


def similarity_formula(distance) -> str:
    """What ``distance.similarity(q, d)`` computes, in words (``"-||q - d||"`` for euclidean): its ``formula``, or
    the class name for a distance that states none (a third party's)."""
    formula = getattr(distance, "formula", None)
    return formula if formula else f"{type(distance).__name__}.similarity(q, d)"


def as_float64(e: Embedding) -> Embedding:
    return Embedding(e.mean.to(torch.float64), None if e.logvar is None else e.logvar.to(torch.float64))


def direct_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||`` as (A, B) in float64 from the differences themselves (exactly 0 for equal rows)."""
    return torch.cdist(a.to(torch.float64), b.to(torch.float64), compute_mode="donot_use_mm_for_euclid_dist")


def squared_norms(x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B,)
    return (x * x).sum(-1)


def pairwise_sqeuclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` as (A, B), via the expansion (one matmul) and clamped at 0 against round-off."""
    sq = squared_norms(a)[:, None] + squared_norms(b)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min(0.0)


def euclidean_query_vectors(x: torch.Tensor) -> torch.Tensor:
    """``[q, 1]``: paired with :func:`euclidean_document_vectors` gives ``2 q.d - ||d||^2``."""
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def euclidean_document_vectors(x: torch.Tensor) -> torch.Tensor:
    """``[2 d, -||d||^2]``: ``-||q - d||^2 = 2 q.d - ||d||^2 - ||q||^2`` and the last term is per query."""
    return torch.cat([2.0 * x, -squared_norms(x)[:, None]], dim=1)
