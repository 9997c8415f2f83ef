from __future__ import annotations

import torch

from ragcun.distances.base import Distance, as_float64, direct_euclidean, pairwise_sqeuclidean, squared_norms
from ragcun.embedding import Embedding


class ExpectedSquaredEuclideanDistance(Distance):
    """Expected squared distance between independent draws of two diagonal Gaussians::

        E ||x - y||^2 = ||mu_q - mu_d||^2 + sum(sigma_q^2) + sum(sigma_d^2),   x ~ N_q, y ~ N_d independent

    Symmetric and non-negative but not a metric: a Gaussian is not at distance 0 from itself, and
    uncertain documents are pushed down the ranking. Searchable by inner product:
    ``[mu_q, 1] . [2 mu_d, -||mu_d||^2 - sum(sigma_d^2)]`` equals ``-E||x - y||^2 + ||mu_q||^2 + sum(sigma_q^2)``,
    and the added term is per query. Needs a head with a log-variance (``--set head.gaussian.logvar=true``).
    """

    needs = frozenset({"mean", "logvar"})
    formula = "-(||mu_q - mu_d||^2 + sum(sigma_q^2) + sum(sigma_d^2))"
    translation_invariant = True  # depends on the means only through mu_q - mu_d

    @staticmethod
    def _total_var(e: Embedding) -> torch.Tensor:  # (B,) sum_d sigma_d^2
        return e.logvar.exp().sum(-1) if e.logvar is not None else squared_norms(e.sigma)

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N)
        return -(pairwise_sqeuclidean(q.mean, d.mean) + self._total_var(q)[:, None] + self._total_var(d)[None, :])

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N) float64
        q, d = as_float64(q), as_float64(d)
        return -(direct_euclidean(q.mean, d.mean).square() + self._total_var(q)[:, None] + self._total_var(d)[None, :])

    def query_vectors(self, q: Embedding) -> torch.Tensor:  # (Q, D + 1)
        return torch.cat([q.mean, torch.ones_like(q.mean[:, :1])], dim=1)

    def document_vectors(self, d: Embedding) -> torch.Tensor:  # (N, D + 1)
        return torch.cat([2.0 * d.mean, -(squared_norms(d.mean) + self._total_var(d))[:, None]], dim=1)
