"""The chunked exact search (and the FAISS path) equals a brute-force ranking by ``distance.similarity``, for
every registered distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragcun.components import build
from ragcun.embedding import Embedding
from ragcun.evaluation.search import RunningTopK, search
from ragcun.plugins import get_registry

DISTANCES = [e.name for e in get_registry().entries("distance")]


def _embedding(rng: np.random.Generator, n: int, dim: int, logvar: bool) -> Embedding:
    mean = torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32))
    lv = torch.from_numpy(rng.normal(scale=0.5, size=(n, dim)).astype(np.float32)) if logvar else None
    return Embedding(mean, lv)


@st.composite
def problems(draw):
    n_q = draw(st.integers(1, 6))
    n_d = draw(st.integers(1, 40))
    return {
        "n_q": n_q, "n_d": n_d, "dim": draw(st.integers(1, 8)), "k": draw(st.integers(1, 45)),
        "chunk": draw(st.integers(1, n_d)), "seed": draw(st.integers(0, 2**31 - 1)),
        "shared_ids": draw(st.integers(0, min(n_q, n_d))), "ignore": draw(st.booleans()),
        "block": draw(st.sampled_from([1, 3, 7, 1 << 25])),
    }


def brute_force(distance, q: Embedding, d: Embedding, k: int, query_ids, doc_ids, ignore: bool):
    # in float64: the float32 expansion |q|^2 + |d|^2 - 2 q.d is off by ~1e-7, which under the square root of a
    # Euclidean distance near 0 becomes ~3e-4 (hypothesis found q and d 0.0006 apart scored -1e-6)
    as64 = lambda e: Embedding(e.mean.double(), None if e.logvar is None else e.logvar.double())  # noqa: E731
    sim = distance.similarity(as64(q), as64(d))  # (Q, N)
    if ignore:
        for i, qid in enumerate(query_ids):
            for j, did in enumerate(doc_ids):
                if qid == did:
                    sim[i, j] = float("-inf")
    return sim


def check(results, sim, k, query_ids, doc_ids):
    index = {did: j for j, did in enumerate(doc_ids)}
    for i, qid in enumerate(query_ids):
        row = sim[i]
        valid = torch.isfinite(row)
        expected = torch.sort(row[valid], descending=True).values[:k]
        got = results[qid]
        assert len(got) == len(expected)
        if not got:
            continue
        tol = 1e-4 * max(1.0, float(row[valid].abs().max()))
        ours = torch.tensor(sorted(got.values(), reverse=True), dtype=torch.float64)
        assert torch.allclose(ours, expected, atol=tol, rtol=1e-4)
        kth = float(expected[-1])
        for did, score in got.items():
            true = float(row[index[did]])
            assert np.isfinite(true), "an excluded (identical-id) document was returned"
            assert abs(score - true) <= tol  # the reported score is the distance's own similarity
            assert true >= kth - tol  # and the document really is among the k best


def _setup(name, p):
    distance = build("distance", name)
    needs_logvar = "logvar" in distance.needs
    rng = np.random.default_rng(p["seed"])
    q = _embedding(rng, p["n_q"], p["dim"], needs_logvar)
    d = _embedding(rng, p["n_d"], p["dim"], needs_logvar)
    doc_ids = [f"d{j}" for j in range(p["n_d"])]
    query_ids = [f"d{j}" for j in range(p["shared_ids"])] + [f"q{i}" for i in range(p["n_q"] - p["shared_ids"])]
    rng.shuffle(doc_ids)
    return distance, q, d, query_ids, doc_ids


@pytest.mark.parametrize("name", DISTANCES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_chunked_search_equals_brute_force(name, p):
    distance, q, d, query_ids, doc_ids = _setup(name, p)
    chunks = [d[s:s + p["chunk"]] for s in range(0, p["n_d"], p["chunk"])]
    results = search(distance, q, chunks, p["k"], query_ids=query_ids, doc_ids=doc_ids,
                     ignore_identical_ids=p["ignore"])
    check(results, brute_force(distance, q, d, p["k"], query_ids, doc_ids, p["ignore"]), p["k"], query_ids, doc_ids)


@pytest.mark.parametrize("name", DISTANCES)
@settings(max_examples=30, deadline=None)
@given(p=problems())
def test_running_topk_blocks(name, p):
    """Tiny score blocks (the memory bound) change nothing."""
    distance, q, d, _query_ids, _doc_ids = _setup(name, p)
    qv = distance.query_vectors(q)
    full = RunningTopK(qv, p["k"])
    full.add(distance.document_vectors(d))
    small = RunningTopK(qv, p["k"], max_block_elements=p["block"])
    for s in range(0, p["n_d"], p["chunk"]):
        small.add(distance.document_vectors(d[s:s + p["chunk"]]))
    assert torch.allclose(full.result()[0], small.result()[0], atol=1e-5)


@pytest.mark.parametrize("name", DISTANCES)
@settings(max_examples=30, deadline=None)
@given(p=problems())
def test_faiss_search_equals_brute_force(name, p):
    pytest.importorskip("faiss")
    distance, q, d, query_ids, doc_ids = _setup(name, p)
    chunks = [d[s:s + p["chunk"]] for s in range(0, p["n_d"], p["chunk"])]
    results = search(distance, q, chunks, p["k"], query_ids=query_ids, doc_ids=doc_ids,
                     ignore_identical_ids=p["ignore"], kind="faiss")
    check(results, brute_force(distance, q, d, p["k"], query_ids, doc_ids, p["ignore"]), p["k"], query_ids, doc_ids)


def test_identical_ids_are_kept_when_asked():
    distance = build("distance", "euclidean")
    x = Embedding(torch.eye(3))
    ids = ["a", "b", "c"]
    kept = search(distance, x, x, 1, query_ids=ids, doc_ids=ids, ignore_identical_ids=False)
    assert {q: list(r) for q, r in kept.items()} == {"a": ["a"], "b": ["b"], "c": ["c"]}
    skipped = search(distance, x, x, 3, query_ids=ids, doc_ids=ids)
    assert all(q not in r and len(r) == 2 for q, r in skipped.items())


def test_bad_k_and_count_mismatch():
    distance = build("distance", "dot")
    x = Embedding(torch.ones(2, 2))
    with pytest.raises(ValueError, match="k must be positive"):
        search(distance, x, x, 0, query_ids=["a", "b"], doc_ids=["a", "b"])
    with pytest.raises(ValueError, match="3 document ids"):
        search(distance, x, x, 1, query_ids=["a", "b"], doc_ids=["a", "b", "c"])


def test_evaluate_beir_faiss_equals_exact(tiny_model_dir, tmp_path):
    pytest.importorskip("faiss")
    from _training_helpers import write_beir

    from ragcun.evaluation.beir_eval import evaluate_beir

    write_beir(tmp_path / "tiny")
    common = {"batch_size": 8, "download": False, "device": "cpu", "show_progress": False, "return_results": True}
    exact = evaluate_beir(f"hf:{tiny_model_dir}", "tiny", tmp_path, distance="euclidean", **common)
    flat = evaluate_beir(f"hf:{tiny_model_dir}", "tiny", tmp_path, distance="euclidean", search="faiss", **common)
    assert flat["datasets"] == exact["datasets"]
    for qid, docs in exact["runs"]["tiny"].items():
        assert set(flat["runs"]["tiny"][qid]) == set(docs)
        for did, score in docs.items():
            assert flat["runs"]["tiny"][qid][did] == pytest.approx(score, abs=1e-4)
