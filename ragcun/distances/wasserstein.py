from __future__ import annotations

import torch

from ragcun.distances.base import (Distance, as_float64, direct_euclidean, euclidean_document_vectors,
                                   euclidean_query_vectors, pairwise_sqeuclidean)
from ragcun.embedding import Embedding


def _mu_sigma(e: Embedding) -> torch.Tensor:  # (B, 2D)
    return torch.cat([e.mean, e.sigma], dim=1)


class WassersteinDistance(Distance):
    """2-Wasserstein distance between diagonal Gaussians ``N(mu, diag(sigma^2))``.

    For Gaussians with commuting (here diagonal) covariances
    ``W2^2 = ||mu_q - mu_d||^2 + ||sigma_q - sigma_d||^2`` (Givens & Shortt 1984; Dowson & Landau 1982),
    i.e. the Euclidean distance between the vectors ``[mu, sigma]`` (B, 2D). It is a metric, and it is
    searchable by inner product exactly like ``euclidean``: ``[v_q, 1] . [2 v_d, -||v_d||^2]`` with
    ``v = [mu, sigma]``. Needs a head with a log-variance (``--set head.gaussian.logvar=true``).
    ``eps`` (inside the square root) keeps gradients finite when two Gaussians coincide.
    """

    needs = frozenset({"mean", "logvar"})
    formula = "-sqrt(||mu_q - mu_d||^2 + ||sigma_q - sigma_d||^2)"
    translation_invariant = True  # a common shift of the means leaves mu_q - mu_d (and sigma) unchanged

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = float(eps)

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N)
        return -torch.sqrt(pairwise_sqeuclidean(_mu_sigma(q), _mu_sigma(d)) + self.eps)

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:  # (Q, N) float64
        return -direct_euclidean(_mu_sigma(as_float64(q)), _mu_sigma(as_float64(d)))

    def query_vectors(self, q: Embedding) -> torch.Tensor:  # (Q, 2D + 1)
        return euclidean_query_vectors(_mu_sigma(q))

    def document_vectors(self, d: Embedding) -> torch.Tensor:  # (N, 2D + 1)
        return euclidean_document_vectors(_mu_sigma(d))

    def get_config(self) -> dict:
        return {"eps": self.eps}
