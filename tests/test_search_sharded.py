"""The search split across ranks (issue 15, item 4): on 2 gloo ranks each rank searches its share of the queries,
and every rank returns exactly (bit for bit) what one process returns, for every distance and both candidate
searches, including a rank left without queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragcun.evaluation.search import ExactTopK, ShardedTopK, make_searcher, query_share

# each case spawns 2 gloo ranks: a few seconds each
CASES = [  # (distance, kind, queries, documents, k, chunk)
    ("euclidean", "exact", 7, 90, 10, 25),
    ("sqeuclidean", "faiss", 7, 90, 10, 25),
    ("cosine", "exact", 1, 40, 5, 40),  # one query: rank 1 has none
    ("dot", "faiss", 2, 40, 50, 13),  # k above the corpus size
    ("wasserstein", "exact", 9, 70, 8, 30),
    ("expected-sqeuclidean", "faiss", 5, 70, 8, 70),
]


def _problem(name: str, n_q: int, n_d: int, seed: int = 0):
    from ragcun.components import build
    from ragcun.embedding import Embedding

    distance = build("distance", name)
    rng = np.random.default_rng(seed)

    def emb(n):  # far from the origin, where only the exact re-ranking gets the order right
        mean = torch.from_numpy((20.0 + rng.normal(size=(n, 6))).astype(np.float32))
        logvar = torch.from_numpy(rng.normal(scale=0.5, size=(n, 6)).astype(np.float32))
        return Embedding(mean, logvar if "logvar" in distance.needs else None)

    queries, documents = emb(n_q), emb(n_d)
    exclude = torch.full((n_q,), -1, dtype=torch.long)
    exclude[0] = 3  # query 0 shares an id with document 3 and must not retrieve it
    return distance, queries, documents, exclude


def _search(rank, world_size, name, kind, n_q, n_d, k, chunk):
    distance, queries, documents, exclude = _problem(name, n_q, n_d)
    searcher = make_searcher(kind, distance, queries, k, exclude, shard=True)
    for s in range(0, n_d, chunk):
        searcher.add(documents[s:s + chunk])
    values, indices = searcher.result()
    return {"type": type(searcher).__name__, "values": values.numpy().copy(), "indices": indices.numpy().copy(),
            "local_queries": len(searcher.local.raw_queries) if isinstance(searcher, ShardedTopK) else n_q}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}q" for c in CASES])
def test_two_ranks_return_the_one_process_result(case):
    from ragcun.testing.distributed import run_on_ranks

    name, kind, n_q, n_d, k, chunk = case
    distance, queries, documents, exclude = _problem(name, n_q, n_d)
    single = ExactTopK(distance, queries, k, exclude, kind=kind)
    for s in range(0, n_d, chunk):
        single.add(documents[s:s + chunk])
    values, indices = single.result()
    ranks = run_on_ranks(_search, 2, name, kind, n_q, n_d, k, chunk)
    assert [r["local_queries"] for r in ranks] == [(n_q + 1) // 2, n_q // 2]  # the work is split
    for r in ranks:
        assert r["type"] == "ShardedTopK"
        assert np.array_equal(r["values"], values.numpy())
        assert np.array_equal(r["indices"], indices.numpy())
    assert not torch.isfinite(values[0][indices[0] == 3]).any()  # the shared id is never retrieved


def test_one_process_is_not_sharded():
    distance, queries, documents, exclude = _problem("euclidean", 3, 20)
    assert type(make_searcher("exact", distance, queries, 5, exclude, shard=True)) is ExactTopK


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_query_shares_cover_every_query_once_in_order(n, world_size):
    shares = [query_share(n, r, world_size) for r in range(world_size)]
    assert [i for s in shares for i in range(s.start, s.stop)] == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1
