from __future__ import annotations

import torch

from ragcun.distances.base import (Distance, direct_euclidean, euclidean_document_vectors,
                                   euclidean_query_vectors, pairwise_sqeuclidean)
from ragcun.embedding import Embedding


class SquaredEuclideanDistance(Distance):
    """``||q - d||_2^2`` on the mean vectors; ranks like ``euclidean`` but has smooth gradients everywhere."""

    homogeneity = 2
    formula = "-||q - d||^2"
    translation_invariant = True

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return -pairwise_sqeuclidean(q.mean, d.mean)

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return -direct_euclidean(q.mean, d.mean).square()

    def query_vectors(self, q: Embedding) -> torch.Tensor:
        return euclidean_query_vectors(q.mean)

    def document_vectors(self, d: Embedding) -> torch.Tensor:
        return euclidean_document_vectors(d.mean)
