"""End-to-end: ragcun eval beir on the real nq-utd data with the real embedded all-MiniLM-L6-v2 gives the same
metrics as the sentence-transformers + beir path (SentenceBERT, DenseRetrievalExactSearch, EvaluateRetrieval)."""

from __future__ import annotations

import json

import pytest

K_VALUES = [1, 3, 5, 10, 100, 1000]


@pytest.fixture(scope="module")
def ragcun_report(data_dir):
    from ragcun.evaluation.beir_eval import evaluate_beir

    return evaluate_beir("all-minilm-l6-v2", "nq-utd", data_dir, "test", batch_size=32, download=False,
                         device="cpu", per_query=True, return_results=True, show_progress=False)


@pytest.mark.slow
def test_matches_sentence_transformers_and_beir(data_dir, ragcun_report):
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from ragcun.encoders.embedded import embedded_model_path

    corpus, queries, qrels = GenericDataLoader(str(data_dir / "nq-utd")).load("test")
    model = SentenceBERT(embedded_model_path(), device="cpu")
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(model, batch_size=32, show_progress_bar=False),
                                  k_values=K_VALUES, score_function="cos_sim")
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, precision = retriever.evaluate(qrels, results, K_VALUES)
    mrr = retriever.evaluate_custom(qrels, results, K_VALUES, "mrr")
    expected = {**ndcg, **_map, **recall, **precision, **mrr}

    got = ragcun_report["datasets"]["nq-utd"]
    assert set(expected) <= set(got)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-4), name
    # the same documents, with the same cosine scores, for every query
    runs = ragcun_report["runs"]["nq-utd"]
    assert set(runs) == set(results)
    for qid, docs in results.items():
        top_st = sorted(docs, key=docs.get, reverse=True)[:10]
        for did in top_st:
            assert runs[qid][did] == pytest.approx(docs[did], abs=1e-5)


@pytest.mark.slow
def test_report_shape(ragcun_report):
    report = ragcun_report
    assert report["model"] == "all-minilm-l6-v2"
    settings = report["settings"]
    assert settings["distance"] == "cosine" and settings["max_seq_length"] == 256
    assert settings["k_values"] == K_VALUES and settings["ignore_identical_ids"] is True
    metrics = report["datasets"]["nq-utd"]
    for name in ("NDCG@10", "MAP@100", "Recall@1000", "P@1", "MRR@10"):
        assert 0.0 <= metrics[name] <= 1.0
    assert report["counts"]["nq-utd"] == {"documents": 800, "queries": 80, "qrels": 800}
    per_query = report["per_query"]["nq-utd"]
    assert len(per_query) == 80
    mean_ndcg = sum(row["NDCG@10"] for row in per_query.values()) / len(per_query)
    assert mean_ndcg == pytest.approx(metrics["NDCG@10"], abs=1e-5)
    mean_mrr = sum(row["MRR@10"] for row in per_query.values()) / len(per_query)
    assert mean_mrr == pytest.approx(metrics["MRR@10"], abs=1e-5)
    assert report["timings"]["nq-utd"]["docs_per_s"] > 0
    json.dumps({k: v for k, v in report.items() if k != "runs"})  # serialisable


def _tiny_beir(folder, splits):
    """A two-document BEIR folder with a qrels file per split (enough for ``select_datasets``)."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "one"}\n'
                                         '{"_id": "d2", "title": "", "text": "two"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "one?"}\n')
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")


def test_all_lists_present_and_skipped(tmp_path):
    """``all`` = the folders present with the split; the rest are named with why. The test builds its own data
    folder: the shared one grows (squad, cacm, ...), and this is about the rule, not about that folder."""
    from ragcun.evaluation.beir_eval import select_datasets

    for name, splits in (("nfcorpus", ("train", "test")), ("scifact", ("train", "test")), ("nq-utd", ("test",)),
                         ("my-own", ("dev", "train"))):
        _tiny_beir(tmp_path / name, splits)
    (tmp_path / "not-a-dataset").mkdir()
    chosen, skipped = select_datasets(["all"], tmp_path, "train", download=False)
    assert [n for n, _ in chosen] == ["my-own", "nfcorpus", "scifact"]
    assert [folder for _, folder in chosen] == [tmp_path / "my-own", tmp_path / "nfcorpus", tmp_path / "scifact"]
    assert skipped["nq-utd"] == "no train split (has: test)"
    assert skipped["arguana"].startswith("not present")
    assert "not-a-dataset" not in skipped and "nfcorpus" not in skipped
    chosen, skipped = select_datasets(["all"], tmp_path, "test", download=False)
    assert [n for n, _ in chosen] == ["nfcorpus", "nq-utd", "scifact"]
    assert skipped["my-own"].startswith("no test split")


def test_loader_equals_generic_data_loader(data_dir):
    from beir.datasets.data_loader import GenericDataLoader

    from ragcun.data.beir import load_beir

    for name, split in (("scifact", "test"), ("scifact", "train"), ("nfcorpus", "test"), ("nq-utd", "test"),
                        ("cranfield", "test")):
        ours = load_beir(data_dir / name, split)
        corpus, queries, qrels = GenericDataLoader(str(data_dir / name)).load(split)
        assert ours.corpus == corpus
        assert ours.queries == queries and list(ours.queries) == list(queries)
        assert ours.qrels == qrels
        assert ours.qrels_report.clean
