from __future__ import annotations

import torch
from torch.nn import functional as F

from ragcun.distances.base import Distance
from ragcun.embedding import Embedding


class CosineDistance(Distance):
    """Cosine similarity of the mean vectors (sentence-transformers' default); ``distance = 1 - cos``."""

    homogeneity = 0
    formula = "cos(q, d) = q.d / (||q|| ||d||)"
    translation_invariant = False

    is_metric = False

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = float(eps)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=self.eps)

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return self._unit(q.mean) @ self._unit(d.mean).T

    def exact_similarity(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return self._unit(q.mean.to(torch.float64)) @ self._unit(d.mean.to(torch.float64)).T

    def distance(self, q: Embedding, d: Embedding) -> torch.Tensor:
        return 1.0 - self.similarity(q, d)

    def query_vectors(self, q: Embedding) -> torch.Tensor:
        return self._unit(q.mean)

    def document_vectors(self, d: Embedding) -> torch.Tensor:
        return self._unit(d.mean)

    def get_config(self) -> dict:
        return {"eps": self.eps}
