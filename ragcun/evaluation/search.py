"""Exact top-k retrieval for every distance: float32 inner-product candidates, float64 re-ranking.

Each distance maps queries and documents to vectors whose inner product ranks documents as the distance does
(``Distance.query_vectors`` / ``document_vectors``). That inner product, computed in float32 (a chunked matmul,
or FAISS's flat index), only proposes candidates: far from the origin its round-off exceeds the gaps between
neighbours (Euclidean ``2 q.d - ||d||^2``: at an offset of 20 in 384 dimensions ``||d||^2`` is ~1.5e5 and the
float32 sum is off by ~0.5, while neighbouring squared distances differ by ~0.2). :class:`ExactTopK`

* searches embeddings centred by the first chunk's mean when the distance is translation invariant
  (``Distance.translation_invariant``: Euclidean and the Gaussian distances), which removes the offset;
* over-fetches ``k + margin`` candidates per query and re-scores them with ``Distance.exact_similarity``
  (float64, direct differences), then ranks by that score (ties by document order);
* certifies every query with a rigorous bound on the float32 round-off (``1.01 (K + 4) u sum_i |q_i v_i|``,
  derived in :func:`roundoff_factor`, the sum bounded by Cauchy-Schwarz on the first ``K - 1`` coordinates and
  the last apart; ``u`` the matmul's unit round-off, 2^-24: TF32 is switched off around the matmul): when a
  document left out could still beat one kept, that query
  fetches 4x more candidates from the chunk (at most the whole chunk), so the result is the brute-force ranking
  up to exact ties, whatever the data's offset or scale, for every distance, through either candidate search.

Documents arrive in chunks (as they are encoded); only the best ``k`` per query are kept (with their exact
scores), so memory is ``O(Q * (k + margin) + block + chunk)`` whatever the corpus size (a chunk larger than
``CHUNK_ROWS`` is searched in pieces). Candidates of later chunks that the bound proves cannot enter the kept
top-k are not re-scored.

Under ``torchrun`` (:class:`ShardedTopK`, what ``make_searcher(..., shard=True)`` gives on several ranks) each rank
searches every document for its contiguous share of the queries, and the shares are all-gathered at the end:
the work is split ``world_size`` ways and the result is the one-process result, because no query's search
depends on another's.

Identical query and document ids are skipped by default, as BEIR's exact search does (a query must not
retrieve itself on datasets such as ArguAna or Quora where queries are also documents).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch

from ragcun.distances.base import exact_similarity
from ragcun.distributed import all_gather_rows, is_distributed, world
from ragcun.embedding import Embedding

# Largest score block (queries x documents) materialised at once: 2^25 floats = 128 MiB.
MAX_BLOCK_ELEMENTS = 1 << 25
SEARCH_KINDS = ("exact", "faiss")
# Documents searched (and copied to float64) at once, and the size of the (queries x candidates) temporaries.
CHUNK_ROWS = 65_536
QUERY_BLOCK_ELEMENTS = 1 << 22


class RunningTopK:
    """Top-k by float32 inner product over documents added in chunks (the candidate search of
    :class:`ExactTopK`; on its own it is not exact far from the origin).

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
        self.exclude = None if exclude is None else exclude.to(queries.device)
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
                scores.nan_to_num_(nan=float("-inf"))  # in place: a copy would double the block's memory
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


@contextlib.contextmanager
def ieee_float32_matmul():
    """Float32 matmuls in full float32 (no TF32 or bfloat16 passes, which training on a GPU switches on) inside
    the block: the round-off bound of the candidate search assumes it."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _torch_candidates(queries: torch.Tensor, documents: torch.Tensor, m: int, exclude: torch.Tensor | None,
                      max_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` largest float32 inner products of each query with one chunk: ``(values, local indices)``."""
    top = RunningTopK(queries, m, exclude, max_block)
    with ieee_float32_matmul():
        top.add(documents)
    return top.result()


class _FaissCandidates:
    """The same candidate search over a flat (exact) FAISS inner-product index of one chunk."""

    def __init__(self, documents: torch.Tensor) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(documents.shape[1])
        self.index.add(documents.float().cpu().contiguous().numpy())
        self.n = documents.shape[0]

    def __call__(self, queries: torch.Tensor, m: int,
                 exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        want = min(m + (1 if exclude is not None else 0), self.n)
        values, indices = self.index.search(queries.float().cpu().contiguous().numpy(), want)
        values, indices = torch.from_numpy(values), torch.from_numpy(indices).long()
        values = torch.nan_to_num(values, nan=float("-inf"))
        values[indices < 0] = float("-inf")
        if exclude is not None:
            values[indices == exclude.cpu()[:, None]] = float("-inf")
            # push the excluded slot to the end (a stable sort keeps FAISS's order otherwise)
            values, pos = values.sort(dim=1, descending=True, stable=True)
            indices = indices.gather(1, pos)
        top = min(m, values.shape[1])
        return values[:, :top], indices[:, :top].clamp_min(0)


def matmul_unit_roundoff(device: torch.device) -> float:
    """Unit round-off of a float32 matmul on ``device`` under torch's current precision settings (2^-24 inside
    :func:`ieee_float32_matmul`)."""
    u = {"highest": 2.0 ** -24, "high": 2.0 ** -11, "medium": 2.0 ** -8}.get(torch.get_float32_matmul_precision(),
                                                                           2.0 ** -8)
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        u = max(u, 2.0 ** -11)  # TF32: 10 mantissa bits
    return u


def _split_norms(x: torch.Tensor) -> torch.Tensor:
    """``[||x[:, :-1]||, |x[:, -1]|]`` per row, float64, rounded up; 0 for a row with NaN (it scores -inf: it is
    never a candidate nor a result, and bounds nothing)."""
    norms = torch.stack([torch.linalg.vector_norm(x[:, :-1], dim=1), x[:, -1].abs()], dim=1).double() * (1 + 1e-5)
    return torch.nan_to_num(norms, nan=0.0)


def _rank(values: torch.Tensor, indices: torch.Tensor, *rest: torch.Tensor, k: int):
    """Order each row by (value descending, index ascending) and keep the first ``k`` columns."""
    by_index = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    rest = [r.gather(1, by_index) for r in rest]
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return (values.gather(1, order), indices.gather(1, order), *(r.gather(1, order) for r in rest))


class _Piece:
    """The documents being searched, handing out centred float64 rows for re-scoring: converted row by row when
    few are re-scored, from one float64 copy of the piece when more rows than it holds are."""

    def __init__(self, documents: Embedding, centred) -> None:
        self.documents, self.centred, self.copy = documents, centred, None

    def rows_for(self, count: int):
        if self.copy is None and count > len(self.documents):
            self.copy = self.centred(self.documents)
        return self if self.copy is None else self.copy

    def __getitem__(self, index) -> Embedding:
        return self.centred(self.documents[index])


def roundoff_factor(width: int, kind: str, device) -> float:
    """``e`` such that ``|fl32(q . v) - q . v| <= e * sum_i |q_i v_i|`` for the candidate search's float32 inner
    products of ``width``-long vectors; the bound of the module docstring, derived here once.

    Summing ``K`` products in floating point errs by at most ``gamma_K = K u / (1 - K u)`` times
    ``sum_i |q_i v_i|`` (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5) whatever the
    summation order (a blocked matmul's or FAISS's); ``1 / (1 - K u) <= 1.01`` while ``K u <= 0.0099``, which
    holds for any embedding width below 160,000. Rounding ``q`` and ``v`` to float32 first changes each product
    by a factor within ``(1 + u)^2``: 2 u more. That is ``1.01 (K + 2) u``; the code takes ``1.01 (K + 4) u``,
    2 u of headroom for the float64 norms that bound the sum (by Cauchy-Schwarz, see :func:`_split_norms`).
    ``u`` is the matmul's unit round-off: 2^-24 with TF32 off (it is switched off around the matmul); FAISS's
    flat index computes in float32.
    """
    with ieee_float32_matmul():
        u = 2.0 ** -24 if kind == "faiss" else matmul_unit_roundoff(device)
    return 1.01 * (width + 4) * u


class ExactTopK:
    """Exact top-``k`` under ``distance`` over documents added in chunks (see the module docstring).

    Args:
        distance: the model's distance.
        queries: the query embeddings.
        k: how many documents to keep per query.
        exclude: for each query, the global index of the document to skip (``-1`` for none), ``(Q,)``.
        kind: the candidate search, ``exact`` (chunked torch matmul) or ``faiss`` (a flat FAISS index per chunk).
        margin: candidates fetched beyond ``k`` (default ``max(32, k // 16)``); more are fetched when needed.
    """

    def __init__(self, distance, queries: Embedding, k: int, exclude: torch.Tensor | None = None, *,
                 kind: str = "exact", max_block_elements: int = MAX_BLOCK_ELEMENTS, margin: int | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if kind not in SEARCH_KINDS:
            raise ValueError(f"unknown search {kind!r}; choose exact or faiss")
        if kind == "faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ValueError("the FAISS search needs faiss: pip install 'ragcun[faiss]' (or faiss-cpu)") from None
        self.distance = distance
        self.raw_queries = queries
        self.device = queries.mean.device
        self.k = int(k)
        self.exclude = None if exclude is None else exclude.to(self.device)
        self.kind = kind
        self.max_block = int(max_block_elements)
        self.margin = max(32, self.k // 16) if margin is None else int(margin)
        self.chunk_rows = CHUNK_ROWS
        self.query_block_elements = QUERY_BLOCK_ELEMENTS
        n = len(queries)
        self.values = torch.empty(n, 0, dtype=torch.float64, device=self.device)  # (Q, <=k) exact, descending
        self.indices = torch.empty(n, 0, dtype=torch.long, device=self.device)  # (Q, <=k) global doc index
        self.lower = torch.empty(n, 0, dtype=torch.float64, device=self.device)  # lower bounds of their inner products
        self.threshold = torch.full((n,), float("-inf"), dtype=torch.float64, device=self.device)
        self.shift: torch.Tensor | None = None
        self.seen = 0
        self.refetched = 0  # queries that needed more candidates than k + margin (a diagnostic)

    # -- set-up from the first chunk ------------------------------------------------------------------------

    def _centred(self, e: Embedding) -> Embedding:
        """A float64 copy on the search device, shifted by the centring shift (if any)."""
        mean = e.mean.to(self.device, torch.float64, copy=True)
        if self.shift is not None:
            mean.sub_(self.shift)
        return Embedding(mean, None if e.logvar is None else e.logvar.to(self.device, torch.float64))

    def _start(self, first: Embedding) -> None:
        if getattr(self.distance, "translation_invariant", False):
            # any point near the data will do: the mean of (at most) the first chunk's first 4096 documents
            shift = first.mean[:4096].to(self.device, torch.float64).mean(0)
            self.shift = shift if bool(torch.isfinite(shift).all()) else None
        self.queries = self._centred(self.raw_queries)
        self.query_vectors = self._vectors(self.distance.query_vectors, self.raw_queries)
        self.query_norms = _split_norms(self.query_vectors)

    def _vectors(self, fn, e: Embedding) -> torch.Tensor:
        """``fn`` (query or document vectors) of the centred float64 embeddings, rounded to float32 ``(n, K)``;
        computed in cache-sized slices, so no float64 copy of a whole chunk is made."""
        rows = max(1, (1 << 17) // max(1, e.mean.shape[1]))
        first = fn(self._centred(e[:rows])).to(torch.float32)
        out = first.new_empty((len(e), first.shape[1]))
        out[:rows] = first
        for s in range(rows, len(e), rows):
            out[s:s + rows] = fn(self._centred(e[s:s + rows]))
        return out

    # -- one chunk ------------------------------------------------------------------------------------------

    def add(self, documents: Embedding) -> None:
        """Search the next chunk of document embeddings (global indices continue from the previous chunk).
        A large chunk is searched in pieces of ``chunk_rows`` documents (its float64 copy is per piece)."""
        n = len(documents)
        if n == 0:
            return
        if self.seen == 0:
            self._start(documents[:4096].to(self.device))
        step = max(self.chunk_rows, 4 * (self.k + self.margin))
        for s in range(0, n, step):
            self._add_piece(documents[s:s + step].to(self.device))

    def _add_piece(self, documents: Embedding) -> None:
        """Merge one piece of documents into every query's kept top k, certified (see the module docstring)."""
        n = len(documents)
        vectors = self._vectors(self.distance.document_vectors, documents)
        piece = _Piece(documents, self._centred)
        norms = _split_norms(vectors)  # (n, 2)
        err = roundoff_factor(vectors.shape[1], self.kind, vectors.device)
        candidates = self._candidate_source(vectors)
        n_q = len(self.raw_queries)
        q_block = max(1, self.query_block_elements // (self.k + self.margin))  # bounds the (queries, m) temporaries
        for q_start in range(0, n_q, q_block):
            rows = torch.arange(q_start, min(n_q, q_start + q_block), device=self.device)
            self._certify(rows, candidates, piece, norms, err)
        self.seen += n

    def _candidate_source(self, vectors: torch.Tensor):
        """``(query vectors, m, exclude) -> (float32 inner products, local indices)`` of the best ``m`` documents
        of this piece: FAISS's flat index or a blocked torch matmul."""
        if self.kind == "faiss":
            return _FaissCandidates(vectors)

        def candidates(q, m, exclude):
            return _torch_candidates(q, vectors, m, exclude, self.max_block)

        return candidates

    def _certify(self, rows: torch.Tensor, candidates, piece: _Piece, norms: torch.Tensor, err: float) -> None:
        """Fetch candidates for ``rows``, re-score those that could enter the top k, and commit each query whose
        left-out documents provably cannot beat a kept one; the others fetch 4x more, up to the whole piece."""
        n = len(norms)
        max_norms = norms.max(0).values  # (2,)
        m = min(n, self.k + self.margin)
        while rows.numel():
            exclude = None if self.exclude is None else self.exclude[rows] - self.seen
            fl, local = candidates(self.query_vectors[rows], m, exclude)
            fl, local = fl.to(self.device, torch.float64), local.to(self.device)
            q_norms = self.query_norms[rows]  # (r, 2)
            # round-off bounds: of each candidate's inner product (r, m), and of any document's (r,)
            cand_err = err * (q_norms[:, :1] * norms[local, 0] + q_norms[:, 1:] * norms[local, 1])
            left_err = err * (q_norms @ max_norms)
            # a candidate whose inner product cannot beat every kept document's cannot enter the top k
            need = torch.isfinite(fl) & (fl + cand_err > self.threshold[rows, None])
            exact = self._rescore(rows, local, need, piece)
            lower = torch.where(torch.isfinite(exact), fl - cand_err, float("-inf"))
            values, indices, lower = _rank(torch.cat([self.values[rows], exact], 1),
                                           torch.cat([self.indices[rows], local + self.seen], 1),
                                           torch.cat([self.lower[rows], lower], 1), k=self.k)
            if fl.shape[1] >= n:
                done = torch.ones(rows.numel(), dtype=torch.bool, device=self.device)
            else:
                # a document left out has inner product <= the last candidate's (+ its round-off); it cannot
                # beat a kept one when every kept document's lower bound is above that
                full = torch.isfinite(values).sum(1) >= self.k
                worst_kept = torch.where(torch.isfinite(values), lower, float("inf")).min(1).values
                done = (full & (worst_kept > fl[:, -1] + left_err)) | (fl[:, -1] == float("-inf"))
            self._commit(rows[done], values[done], indices[done], lower[done])
            rows = rows[~done]
            self.refetched += rows.numel()
            m = min(n, 4 * m)

    def _rescore(self, rows: torch.Tensor, local: torch.Tensor, need: torch.Tensor, piece: _Piece) -> torch.Tensor:
        """``exact_similarity`` of each (centred) query with its candidates where ``need`` (else ``-inf``):
        ``(r, m)``."""
        exact = torch.full(local.shape, float("-inf"), dtype=torch.float64, device=self.device)
        chunk = piece.rows_for(int(need.sum()))
        for j, row in enumerate(rows.tolist()):
            pos = torch.nonzero(need[j]).squeeze(1)
            if not pos.numel():
                continue
            ids, order = local[j, pos].sort()  # gather in document order (memory locality)
            pos = pos[order]
            sim = exact_similarity(self.distance, self.queries[row:row + 1], chunk[ids])[0]
            exact[j, pos] = torch.nan_to_num(sim.to(self.device, torch.float64), nan=float("-inf"))
        return exact

    def _commit(self, rows, values, indices, lower) -> None:
        if not rows.numel():
            return
        width = max(self.values.shape[1], values.shape[1])
        if width > self.values.shape[1]:
            pad = width - self.values.shape[1]
            self.values = torch.nn.functional.pad(self.values, (0, pad), value=float("-inf"))
            self.indices = torch.nn.functional.pad(self.indices, (0, pad), value=0)
            self.lower = torch.nn.functional.pad(self.lower, (0, pad), value=float("-inf"))
        if values.shape[1] < width:
            pad = width - values.shape[1]
            values = torch.nn.functional.pad(values, (0, pad), value=float("-inf"))
            indices = torch.nn.functional.pad(indices, (0, pad), value=0)
            lower = torch.nn.functional.pad(lower, (0, pad), value=float("-inf"))
        self.values[rows], self.indices[rows], self.lower[rows] = values, indices, lower
        full = torch.isfinite(values).sum(1) >= self.k
        kept_lower = torch.where(torch.isfinite(values), lower, float("inf")).min(1).values
        self.threshold[rows] = torch.where(full, kept_lower, float("-inf"))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(similarities, indices)``, each ``(Q, min(k, N))``, best first, the similarities exact (float64);
        excluded or missing slots have value ``-inf``."""
        return self.values, self.indices


def query_share(n_queries: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n_queries`` queries (the first ``n_queries % world_size`` ranks take
    one more)."""
    base, extra = divmod(n_queries, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class ShardedTopK:
    """:class:`ExactTopK` with the queries split across the ranks of a ``torchrun`` job.

    Every rank must create one and add the same documents (as :func:`ragcun.encoding.encode` hands every rank
    the whole chunk); each searches them for its own share of the queries (:func:`query_share`), and
    :meth:`result` all-gathers the shares, so every rank returns the complete result, equal to one process's.
    """

    def __init__(self, distance, queries: Embedding, k: int, exclude: torch.Tensor | None = None, **options) -> None:
        rank, world_size = world()
        self.shares = [query_share(len(queries), r, world_size) for r in range(world_size)]
        mine = self.shares[rank]
        self.local = ExactTopK(distance, queries[mine], k, None if exclude is None else exclude[mine], **options)

    @property
    def seen(self) -> int:
        return self.local.seen

    def add(self, documents: Embedding) -> None:
        """Search the next chunk for this rank's queries (every rank adds the same chunk)."""
        self.local.add(documents)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' ``(similarities, indices)``, ``(Q, min(k, N))`` in query order (a collective: every rank
        must call it)."""
        values, indices = self.local.result()
        width = min(self.local.k, self.seen)
        if values.shape[1] < width:  # a rank with no queries holds (0, 0)
            pad = width - values.shape[1]
            values = torch.nn.functional.pad(values, (0, pad), value=float("-inf"))
            indices = torch.nn.functional.pad(indices, (0, pad), value=0)
        counts = [s.stop - s.start for s in self.shares]
        device = values.device
        return (torch.cat(all_gather_rows(values, counts)).to(device),
                torch.cat(all_gather_rows(indices, counts)).to(device))


def make_searcher(kind: str, distance, queries: Embedding, k: int, exclude: torch.Tensor | None = None, *,
                  shard: bool = False) -> ExactTopK | ShardedTopK:
    """The exact top-k searcher; ``kind`` picks the candidate search (``exact``: torch, ``faiss``: FAISS flat).
    ``shard=True`` splits the queries across the ranks of a ``torchrun`` job (:class:`ShardedTopK`; every rank
    must then search the same documents); on one process it changes nothing."""
    if shard and is_distributed():
        return ShardedTopK(distance, queries, k, exclude, kind=kind)
    return ExactTopK(distance, queries, k, exclude, kind=kind)


def identical_id_positions(query_ids: Sequence[str], doc_ids: Sequence[str]) -> torch.Tensor:
    """For each query, the index of the document with the same id, or -1: ``(Q,)``."""
    where = {did: i for i, did in enumerate(doc_ids)}
    return torch.tensor([where.get(qid, -1) for qid in query_ids], dtype=torch.long)


def search(distance, queries: Embedding, documents: Iterable[Embedding] | Embedding, k: int, *,
           query_ids: Sequence[str], doc_ids: Sequence[str], ignore_identical_ids: bool = True,
           kind: str = "exact", shard: bool = False) -> dict[str, dict[str, float]]:
    """Top-``k`` documents per query under ``distance``, as BEIR's ``{query id: {doc id: similarity}}``.

    ``documents`` is one Embedding or an iterable of chunks (in ``doc_ids`` order); the ranking and the reported
    scores are ``distance.exact_similarity(q, d)`` (see :class:`ExactTopK`). ``shard=True``: every rank of a
    ``torchrun`` job calls this with the same arguments and searches for its share of the queries
    (:class:`ShardedTopK`); all return the whole result.
    """
    chunks = [documents] if isinstance(documents, Embedding) else documents
    exclude = identical_id_positions(query_ids, doc_ids) if ignore_identical_ids else None
    searcher = make_searcher(kind, distance, queries, k, exclude, shard=shard)
    for chunk in chunks:
        searcher.add(chunk)
    if searcher.seen != len(doc_ids):
        raise ValueError(f"search got {searcher.seen} document vectors for {len(doc_ids)} document ids")
    values, indices = searcher.result()
    return to_results(values, indices, query_ids, doc_ids)


def to_results(values: torch.Tensor, indices: torch.Tensor, query_ids: Sequence[str],
               doc_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Turn a searcher's ``(similarities, indices)`` into ``{query id: {doc id: similarity}}`` (excluded slots
    dropped)."""
    values, indices = values.cpu(), indices.cpu()
    keep = torch.isfinite(values)
    results: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(query_ids):
        ok = keep[row]
        results[qid] = {doc_ids[i]: s for i, s in zip(indices[row][ok].tolist(), values[row][ok].tolist())}
    return results
