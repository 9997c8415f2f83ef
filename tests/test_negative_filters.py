"""Hard negatives without false negatives (ragcun/data/negatives.py, ragcun/training/negatives.py): the
``--mine-negatives METHOD:skip=R,range=A-B,margin=M,relative_margin=F`` filters, their sign-safe relative margin
(negative, zero and positive scores), the counts each filter removes per query (in the run folder), and the
cache key that includes them."""

from __future__ import annotations

import json
import math

import pytest

from ragcun.data.negatives import MiningSpec, filter_candidates, parse_mining_spec, summarize

pytestmark = pytest.mark.usefixtures("single_thread")


# -- the syntax --------------------------------------------------------------------------------------------------

def test_parse_filters_and_their_canonical_text():
    spec = parse_mining_spec("bm25:skip=3, range=10-50 ,margin=0.05,relative-margin=0.1")
    assert spec == MiningSpec("bm25", skip=3, range=(10, 50), margin=0.05, relative_margin=0.1)
    assert spec.format() == "bm25:skip=3,range=10-50,margin=0.05,relative_margin=0.1"
    assert parse_mining_spec(spec.format()) == spec
    assert parse_mining_spec("model") == MiningSpec("model") and MiningSpec("model").format() == "model"
    assert parse_mining_spec("BM25:margin=0") == MiningSpec("bm25", margin=0.0)
    assert parse_mining_spec(None) is None


@pytest.mark.parametrize("text,match", [
    ("bm26", "must be bm25 or model"),
    ("bm25:skp=3", "unknown filter 'skp'; did you mean skip"),
    ("bm25:skip", "expected KEY=VALUE"),
    ("bm25:skip=-1", "whole number"),
    ("bm25:range=50-10", "1 <= A <= B"),
    ("bm25:range=0-10", "1 <= A <= B"),
    ("bm25:range=10", "A-B"),
    ("bm25:margin=x", "must be a number"),
    ("bm25:margin=-0.1", ">= 0"),
    ("bm25:relative_margin=1.5", "below 1"),
    ("bm25:skip=1,skip=2", "twice"),
    ("bm25:skip=50,range=10-50", "removes every rank"),
])
def test_bad_filters_name_the_flag(text, match):
    with pytest.raises(ValueError, match=rf"--mine-negatives .*{match}"):
        parse_mining_spec(text)


def test_a_training_config_checks_the_filters(tmp_path):
    from ragcun.training.config import TrainConfig

    ok = TrainConfig(train_data="beir:x", steps=1, negatives=2, mine_negatives="bm25:skip=2,margin=0.1")
    assert ok.validate() is ok
    with pytest.raises(ValueError, match="--mine-negatives 'bm25:rnage=1-5'.*did you mean range"):
        TrainConfig(train_data="beir:x", steps=1, negatives=2, mine_negatives="bm25:rnage=1-5").validate()


# -- the filters -----------------------------------------------------------------------------------------------

def _ranked(scores):
    return [(f"d{i}", s) for i, s in enumerate(scores)]


def test_skip_range_and_depth_act_on_ranks_after_the_judged_documents():
    ranked = _ranked([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])  # d0 best
    relevant = {"q": {"d1"}}
    kept, counts = filter_candidates(ranked, "q", relevant, 3, MiningSpec("bm25", skip=2))
    # unjudged ranks: d0=1 d2=2 d3=3 d4=4 ...; skip=2 drops d0, d2; depth 3 keeps d3, d4, d5
    assert kept == ["d3", "d4", "d5"]
    assert counts == {"candidates": 10, "judged_relevant": 1, "skip": 2, "depth": 4, "kept": 3}
    kept, counts = filter_candidates(ranked, "q", relevant, 3, MiningSpec("bm25", skip=1, range=(3, 6)))
    # range keeps ranks 3..6 (d3 d4 d5 d6) whatever the depth; skip=1 is inside the range's exclusion anyway
    assert kept == ["d3", "d4", "d5", "d6"]
    assert counts == {"candidates": 10, "judged_relevant": 1, "skip": 1, "range": 4, "kept": 4}
    # the query's own id is never its negative
    kept, _ = filter_candidates(_ranked([3, 2, 1]), "d0", {}, 5, None)
    assert kept == ["d1", "d2"]


@pytest.mark.parametrize("positive,scores,kept_expected", [
    # negative scores (every Euclidean similarity): bar = -10 - 0.1 * 10 = -11
    (-10.0, [-9.0, -10.0, -10.5, -11.0, -12.0], ["d3", "d4"]),
    # zero: bar = 0 (a relative margin of 0 is nothing): only candidates scoring <= 0 stay
    (0.0, [0.5, 0.0, -1e-9, -3.0], ["d1", "d2", "d3"]),
    # positive scores: bar = 10 - 0.1 * 10 = 9, sentence-transformers' 10 * (1 - 0.1)
    (10.0, [11.0, 9.5, 9.0, 8.0], ["d2", "d3"]),
])
def test_the_relative_margin_is_sign_safe(positive, scores, kept_expected):
    spec = MiningSpec("model", relative_margin=0.1)
    kept, counts = filter_candidates(_ranked(scores), "q", {}, 10, spec, positive)
    assert kept == kept_expected
    assert counts["relative_margin"] == len(scores) - len(kept_expected)
    bar = positive - 0.1 * abs(positive)
    assert all(s <= bar for d, s in _ranked(scores) if d in kept)
    # the old rule positive * (1 - F) lets more through when the positive's score is negative (-9 > -11)
    if positive < 0:
        old_bar = positive * (1 - 0.1)
        assert sum(s <= old_bar for s in scores) > len(kept_expected)


@pytest.mark.parametrize("positive", [-5.0, 0.0, 5.0])
def test_the_absolute_margin_and_both_margins_together(positive):
    scores = [positive + 1, positive, positive - 0.05, positive - 0.5, positive - 2]
    kept, counts = filter_candidates(_ranked(scores), "q", {}, 10, MiningSpec("bm25", margin=0.1), positive)
    assert kept == ["d3", "d4"] and counts["margin"] == 3
    # both: a candidate must clear each bar; the absolute margin is tested first, then the relative one
    spec = MiningSpec("bm25", margin=0.1, relative_margin=0.2)
    kept, counts = filter_candidates(_ranked(scores), "q", {}, 10, spec, positive)
    bar = min(positive - 0.1, positive - 0.2 * abs(positive))
    assert kept == [d for d, s in _ranked(scores) if s <= bar]
    assert counts["margin"] + counts["relative_margin"] == len(scores) - len(kept)
    # a query without a positive in the split: no score filter applies to it
    kept, _ = filter_candidates(_ranked(scores), "q", {}, 10, spec, None)
    assert len(kept) == len(scores)


def test_summary_totals_and_queries_left_without_negatives():
    report = {"a": {"candidates": 5, "skip": 2, "kept": 3}, "b": {"candidates": 5, "skip": 2, "kept": 0,
                                                                  "positive_score": 1.0}}
    summary = summarize(report)
    assert summary["total"] == {"candidates": 10, "kept": 3, "skip": 4}
    assert summary["mean_per_query"]["skip"] == 2 and summary["queries_without_negatives"] == ["b"]


# -- mining ----------------------------------------------------------------------------------------------------------

def _counts_add_up(counts):
    removed = sum(v for k, v in counts.items() if k not in ("candidates", "kept", "positive_score"))
    return removed + counts["kept"] == counts["candidates"]


def test_bm25_mining_with_filters_counts_and_caches_by_filter(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("bm25s")
    import bm25s

    from ragcun.data.beir import document_text, load_beir
    from ragcun.data.negatives import judged_relevant, load_or_mine, load_or_mine_with_report, report_path

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path))
    dataset = load_beir(data_dir / "nq-utd", "test")
    plain, plain_path, _ = load_or_mine("bm25", dataset, depth=10)
    spec = "bm25:skip=2,margin=0.5,relative_margin=0.05"
    mined, report, path, cached = load_or_mine_with_report(spec, dataset, depth=10)
    assert not cached and path != plain_path and report_path(path).is_file()
    relevant = judged_relevant(data_dir / "nq-utd")
    # every kept document is below both bars, scored with BM25 itself
    doc_ids = list(dataset.corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([document_text(dataset.corpus[d]) for d in doc_ids], stopwords="en",
                                   show_progress=False), show_progress=False)
    where = {d: i for i, d in enumerate(doc_ids)}
    checked = 0
    for qid in list(dataset.qrels)[:20]:
        counts = report[qid]
        assert _counts_add_up(counts), counts
        assert counts["skip"] == 2
        words = bm25s.tokenize([dataset.queries[qid]], stopwords="en", show_progress=False, return_ids=False)[0]
        scores = retriever.get_scores(retriever.get_tokens_ids(list(words)))
        positive = min(scores[where[d]] for d, s in dataset.qrels[qid].items() if s > 0)
        assert counts["positive_score"] == pytest.approx(positive)
        bar = min(positive - 0.5, positive - 0.05 * abs(positive))
        for did in mined[qid]:
            assert scores[where[did]] <= bar + 1e-6 and did not in relevant.get(qid, set())
            checked += 1
        # nothing above the bar was kept, and the two best unjudged documents were skipped
        assert not set(mined[qid]) & set(plain[qid][:2])
    assert checked > 0
    again, again_report, _, cached = load_or_mine_with_report(spec, dataset, depth=10)
    assert cached and again == mined and again_report == json.loads(json.dumps(report))
    # another setting, another cache entry
    _, _, other, _ = load_or_mine_with_report("bm25:skip=3", dataset, depth=10)
    assert other not in (path, plain_path)


def test_model_mining_filters_with_the_models_similarity(data_dir, tiny_model, tmp_path, monkeypatch):
    import torch

    from ragcun.data.beir import load_beir
    from ragcun.model import corpus_texts
    from ragcun.training.negatives import mine_with_model

    dataset = load_beir(data_dir / "nq-utd", "test")
    report: dict = {}
    spec = parse_mining_spec("model:range=2-8,relative_margin=0.02")
    mined = mine_with_model(tiny_model, dataset, 30, spec=spec, report=report)
    doc_ids = list(dataset.corpus)
    with torch.no_grad():
        docs = tiny_model.encode_embeddings(corpus_texts([dataset.corpus[d] for d in doc_ids]))
    where = {d: i for i, d in enumerate(doc_ids)}
    for qid in list(dataset.qrels)[:10]:
        counts = report[qid]
        assert _counts_add_up(counts) and counts["kept"] <= 7
        with torch.no_grad():
            q = tiny_model.encode_embeddings([dataset.queries[qid]])
            sims = tiny_model.distance.similarity(q, docs)[0]
        positive = min(float(sims[where[d]]) for d, s in dataset.qrels[qid].items() if s > 0)
        assert positive < 0  # Euclidean: every score is negative, and the filter still bites
        assert counts["positive_score"] == pytest.approx(positive, rel=1e-5)
        bar = positive - 0.02 * abs(positive)
        assert all(float(sims[where[d]]) <= bar + 1e-4 for d in mined[qid])


def test_a_training_run_writes_the_filter_counts_beside_its_metrics(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("bm25s")
    from _training_helpers import tiny_config, write_beir

    from ragcun.training.loop import train

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path / "cache"))
    beir = write_beir(tmp_path / "beir" / "tiny")
    config = tiny_config(tiny_model_dir, tmp_path / "run", tmp_path / "unused", train_data="beir:tiny:test",
                         data_dir=str(beir.parent), negatives=2, mine_negatives="bm25:skip=1,margin=0",
                         steps=2, batch_size=2)
    train(config)
    report = json.loads((tmp_path / "run" / "mined_negatives.json").read_text())
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert report["spec"] == "bm25:skip=1,margin=0.0" and report["filters"] == {"skip": 1, "margin": 0.0}
    assert report["queries"] and all(_counts_add_up(c) and c["skip"] == 1 for c in report["queries"].values())
    assert report["summary"]["total"]["skip"] == len(report["queries"])
    assert math.isclose(report["summary"]["mean_per_query"]["skip"], 1.0)
