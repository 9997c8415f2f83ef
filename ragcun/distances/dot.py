from __future__ import annotations

import torch

from ragcun.distances.base import Distance
from ragcun.embedding import Embedding


class DotProductDistance(Distance):
    """Inner product of the mean vectors; ``distance = -dot`` (not a metric)."""

    homogeneity = 2
    formula = "q.d"
    translation_invariant = False

    is_metric = False

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return q.mean @ d.mean.T

    def query_vectors(self, q: Embedding) -> torch.Tensor:
        return q.mean

    def document_vectors(self, d: Embedding) -> torch.Tensor:
        return d.mean
