from __future__ import annotations

import torch

from ragcun.distances.base import (Distance, direct_euclidean, euclidean_document_vectors,
                                   euclidean_query_vectors, pairwise_sqeuclidean)
from ragcun.embedding import Embedding


class EuclideanDistance(Distance):
    """``||q - d||_2`` on the mean vectors; ``similarity = -distance``.

    The gradient of the square root is infinite at 0; ``eps`` (default 1e-12, inside the root) keeps the
    gradient finite when a query and document coincide.
    """

    homogeneity = 1
    formula = "-||q - d||"
    translation_invariant = True

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = float(eps)

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return -torch.sqrt(pairwise_sqeuclidean(q.mean, d.mean) + self.eps)

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return -direct_euclidean(q.mean, d.mean)  # the distance itself: no expansion, no gradient guard

    def query_vectors(self, q: Embedding) -> torch.Tensor:
        return euclidean_query_vectors(q.mean)

    def document_vectors(self, d: Embedding) -> torch.Tensor:
        return euclidean_document_vectors(d.mean)

    def get_config(self) -> dict:
        return {"eps": self.eps}
