"""Top-k retrieval for every distance through one inner-product search.

Each distance maps queries and documents to vectors whose inner product ranks documents exactly as the
distance does (``Distance.query_vectors`` / ``document_vectors``); the search ranks by that inner product and
``Distance.similarity_from_inner`` turns the kept values back into true similarities for the result file.

* :class:`RunningTopK` is the exact search: documents arrive in chunks (as they are encoded) and only the best
  ``k`` per query are kept, so memory is ``O(Q * (k + block))`` whatever the corpus size.
* :class:`FaissTopK` is the same interface over ``faiss.IndexFlatIP`` (``pip install ragcun[faiss]``).

Identical query and document ids are skipped by default, as BEIR's exact search does (a query must not
retrieve itself on datasets such as ArguAna or Quora where queries are also documents).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ragcun.embedding import Embedding

# Largest score block (queries x documents) materialised at once: 2^25 floats = 128 MiB.
MAX_BLOCK_ELEMENTS = 1 << 25


class RunningTopK:
    """Exact top-k by inner product over documents added in chunks.

    Args:
        queries: ``(Q, K)`` query vectors.
        k: how many documents to keep per query.
        exclude: for each query, the global index of the document to skip (``-1`` for none), ``(Q,)``.
    """

    def __init__(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                 max_block_elements: int = MAX_BLOCK_ELEMENTS) -> None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.queries = queries.float()
        self.k = int(k)
        self.exclude = exclude
        self.max_block = int(max_block_elements)
        n = queries.shape[0]
        self.values = torch.empty(n, 0, dtype=torch.float32, device=queries.device)  # (Q, <=k), descending
        self.indices = torch.empty(n, 0, dtype=torch.long, device=queries.device)  # (Q, <=k), global doc index
        self.seen = 0

    def add(self, documents: torch.Tensor) -> None:
        """Score the next ``(N, K)`` documents (global indices continue from the previous chunk)."""
        documents = documents.to(self.queries.device, torch.float32)
        n_q = self.queries.shape[0]
        q_block = max(1, min(n_q, self.max_block // max(1, min(documents.shape[0], 8192))))
        d_block = max(1, self.max_block // max(1, min(n_q, q_block)))
        for d_start in range(0, documents.shape[0], d_block):
            docs = documents[d_start:d_start + d_block]  # (n, K)
            offset = self.seen + d_start
            values, indices = [], []
            for q_start in range(0, n_q, q_block):
                q_end = min(q_start + q_block, n_q)
                scores = self.queries[q_start:q_end] @ docs.T  # (q, n)
                scores = torch.nan_to_num(scores, nan=float("-inf"))
                if self.exclude is not None:
                    local = self.exclude[q_start:q_end] - offset  # (q,)
                    hit = (local >= 0) & (local < docs.shape[0])
                    if hit.any():
                        rows = torch.nonzero(hit).squeeze(1)
                        scores[rows, local[rows]] = float("-inf")
                top = min(self.k, scores.shape[1])
                v, i = scores.topk(top, dim=1)
                values.append(v)
                indices.append(i + offset)
            self._merge(torch.cat(values), torch.cat(indices))
        self.seen += documents.shape[0]

    def _merge(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        values = torch.cat([self.values, values], dim=1)
        indices = torch.cat([self.indices, indices], dim=1)
        top = min(self.k, values.shape[1])
        self.values, pos = values.topk(top, dim=1)
        self.indices = indices.gather(1, pos)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)``, each ``(Q, min(k, N))``, best first; excluded slots have value ``-inf``."""
        return self.values, self.indices


class FaissTopK:
    """The :class:`RunningTopK` interface over a flat (exact) FAISS inner-product index."""

    def __init__(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> None:
        try:
            import faiss
        except ImportError:
            raise ValueError("the FAISS search needs faiss: pip install 'ragcun[faiss]' (or faiss-cpu)") from None
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.faiss = faiss
        self.queries = queries.float().cpu().contiguous()
        self.k = int(k)
        self.exclude = exclude
        self.index = faiss.IndexFlatIP(queries.shape[1])
        self.seen = 0

    def add(self, documents: torch.Tensor) -> None:
        self.index.add(documents.float().cpu().contiguous().numpy())
        self.seen += documents.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        extra = 1 if self.exclude is not None else 0
        want = min(self.k + extra, self.seen)
        values, indices = self.index.search(self.queries.numpy(), want)
        values, indices = torch.from_numpy(values), torch.from_numpy(indices).long()
        values[indices < 0] = float("-inf")
        if self.exclude is not None:
            values[indices == self.exclude.cpu()[:, None]] = float("-inf")
            # push the excluded slot to the end (a stable sort keeps FAISS's order otherwise)
            values, pos = values.sort(dim=1, descending=True, stable=True)
            indices = indices.gather(1, pos)
        top = min(self.k, values.shape[1])
        return values[:, :top], indices[:, :top]


def make_searcher(kind: str, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None):
    if kind == "exact":
        return RunningTopK(queries, k, exclude)
    if kind == "faiss":
        return FaissTopK(queries, k, exclude)
    raise ValueError(f"unknown search {kind!r}; choose exact or faiss")


def identical_id_positions(query_ids: Sequence[str], doc_ids: Sequence[str]) -> torch.Tensor:
    """For each query, the index of the document with the same id, or -1: ``(Q,)``."""
    where = {did: i for i, did in enumerate(doc_ids)}
    return torch.tensor([where.get(qid, -1) for qid in query_ids], dtype=torch.long)


def search(distance, queries: Embedding, documents: Iterable[Embedding] | Embedding, k: int, *,
           query_ids: Sequence[str], doc_ids: Sequence[str], ignore_identical_ids: bool = True,
           kind: str = "exact") -> dict[str, dict[str, float]]:
    """Top-``k`` documents per query under ``distance``, as BEIR's ``{query id: {doc id: similarity}}``.

    ``documents`` is one Embedding or an iterable of chunks (in ``doc_ids`` order); ranking uses the
    distance's inner-product vectors and the reported scores are ``distance.similarity(q, d)``.
    """
    chunks = [documents] if isinstance(documents, Embedding) else documents
    exclude = identical_id_positions(query_ids, doc_ids) if ignore_identical_ids else None
    searcher = make_searcher(kind, distance.query_vectors(queries), k, exclude)
    for chunk in chunks:
        searcher.add(distance.document_vectors(chunk))
    if searcher.seen != len(doc_ids):
        raise ValueError(f"search got {searcher.seen} document vectors for {len(doc_ids)} document ids")
    values, indices = searcher.result()
    return to_results(distance, queries, values, indices, query_ids, doc_ids)


def to_results(distance, queries: Embedding, values: torch.Tensor, indices: torch.Tensor,
               query_ids: Sequence[str], doc_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Turn inner-product top-k into ``{query id: {doc id: true similarity}}`` (excluded slots dropped)."""
    values, indices = values.cpu(), indices.cpu()
    keep = torch.isfinite(values)
    similarity = distance.similarity_from_inner(values.masked_fill(~keep, 0.0), queries.to("cpu"))
    results: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(query_ids):
        ok = keep[row]
        results[qid] = {doc_ids[i]: s for i, s in zip(indices[row][ok].tolist(), similarity[row][ok].tolist())}
    return results
