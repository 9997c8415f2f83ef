"""Training data: sources, deterministic resumable order, rank slices, mined negatives."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ragcun.data.training import BatchStream, DataPosition, JsonlExamples, TriplesExamples, open_source, parse_data_spec

MSMARCO_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msmarco-train-sample" / "train.jsonl"


def write_jsonl(path: Path, n: int, negs: int = 3) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"query": f"query {i}", "pos": [f"positive {i}"],
                                 "neg": [f"negative {i}.{j}" for j in range(negs)]}) + "\n")
    return path


def write_triples(path: Path, n: int) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(f"query {i}\tpositive {i}\tnegative {i}\n")
    return path


def drain(stream: BatchStream, n: int) -> list[list[str]]:
    return [stream.next_batch().queries for _ in range(n)]


def test_parse_data_spec():
    assert parse_data_spec("beir:scifact").format() == "beir:scifact:train"
    assert parse_data_spec("beir:nfcorpus:dev").split == "dev"
    assert parse_data_spec("x/train.jsonl").kind == "jsonl"
    assert parse_data_spec("triples.train.small.tsv.gz").kind == "triples"
    assert parse_data_spec("tsv:foo").kind == "triples"
    with pytest.raises(ValueError, match="--train-data"):
        parse_data_spec("what.csv")
    with pytest.raises(ValueError, match="beir:NAME"):
        parse_data_spec("beir:")


def test_resolve_eval_split(data_dir):
    from ragcun.data.training import resolve_eval_split

    assert resolve_eval_split("beir:scifact", data_dir) == (Path(data_dir) / "scifact", "test")  # not train
    assert resolve_eval_split("beir:scifact:train", data_dir) == (Path(data_dir) / "scifact", "train")
    with pytest.raises(ValueError, match="--eval-data 'x.jsonl': evaluation needs a BEIR split"):
        resolve_eval_split("x.jsonl", data_dir)


def test_jsonl_stream_is_deterministic_and_covers_each_example_once_per_epoch(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", 23)
    source = JsonlExamples(path, seed=3, negatives=2, buffer=5)
    epoch0 = [e.query for e in source.examples(0)]
    assert sorted(epoch0) == sorted(f"query {i}" for i in range(23))
    assert epoch0 == [e.query for e in JsonlExamples(path, seed=3, buffer=5).examples(0)]
    assert epoch0 != [e.query for e in source.examples(1)]  # reshuffled per epoch
    assert epoch0 != [f"query {i}" for i in range(23)]  # shuffled at all
    first = next(iter(source.examples(0)))
    assert len(first.negatives) == 2 and all(n.startswith(f"negative {first.query.split()[1]}.")
                                             for n in first.negatives)


def test_resume_position_continues_the_same_order(tmp_path):
    source = JsonlExamples(write_jsonl(tmp_path / "t.jsonl", 30), seed=1, buffer=7)
    full = drain(BatchStream(source, 4), 12)  # crosses an epoch boundary (7 batches per epoch)
    stream = BatchStream(source, 4)
    drain(stream, 5)
    saved = DataPosition(**stream.state.as_dict())
    assert drain(BatchStream(source, 4, position=saved), 7) == full[5:]


def test_rank_slices_concatenate_to_the_single_process_batch(tmp_path):
    source = JsonlExamples(write_jsonl(tmp_path / "t.jsonl", 40), seed=0, buffer=8)
    single = drain(BatchStream(source, 6), 5)
    ranks = [drain(BatchStream(source, 3, rank=r, world_size=2), 5) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single


def test_triples_streamed_and_gzip(tmp_path):
    source = TriplesExamples(write_triples(tmp_path / "t.tsv.gz", 9), seed=0, negatives=1, buffer=4)
    examples = list(source.examples(0))
    assert len(source) == 9 and len(examples) == 9
    e = examples[0]
    assert e.negatives == [e.query.replace("query", "negative")]
    with pytest.raises(ValueError, match="one negative per line"):
        TriplesExamples(tmp_path / "t.tsv.gz", negatives=2)
    bad = tmp_path / "bad.tsv"
    bad.write_text("only\ttwo\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected query<TAB>positive<TAB>negative"):
        list(TriplesExamples(bad).examples(0))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q2", "pos": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'pos' must be a non-empty list"):
        list(JsonlExamples(bad, buffer=1).examples(0))


def test_too_little_data_for_one_batch(tmp_path):
    source = JsonlExamples(write_jsonl(tmp_path / "t.jsonl", 3), buffer=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchStream(source, 4).next_batch()


def test_real_msmarco_sample():
    if not MSMARCO_SAMPLE.is_file():
        pytest.skip("msmarco-train-sample not present")
    source = open_source(str(MSMARCO_SAMPLE), negatives=4)
    batch = BatchStream(source, 5).next_batch()
    assert len(batch.queries) == 5 and len(batch.negatives) == 20
    assert batch.positive_ids == batch.positives  # text identifies a passage in this format


def test_beir_pairs_threshold_and_order(data_dir):
    source = open_source("beir:scifact:train", data_dir=str(data_dir), seed=7)
    assert len(source) == 919  # every qrels pair of SciFact train (all score 1)
    examples = list(source.examples(0))
    assert len({(e.query_id, e.positive_id) for e in examples}) == 919
    assert [e.query_id for e in open_source("beir:scifact:train", data_dir=str(data_dir), seed=7).examples(0)][:20] \
        == [e.query_id for e in examples[:20]]
    graded = open_source("beir:nq-utd:test", data_dir=str(data_dir), qrels_threshold=2)
    assert 0 < len(graded) < 800
    for e in list(graded.examples(0))[:50]:  # each pair carries its query's judged documents, score >= 2 only
        judged = graded.dataset.qrels[e.query_id]
        assert e.positive_id in e.relevant_ids
        assert sorted(e.relevant_ids) == sorted(d for d, score in judged.items()
                                                if score >= 2 and d in graded.dataset.corpus)
    with pytest.raises(ValueError, match="--qrels-threshold"):
        open_source("beir:nq-utd:test", data_dir=str(data_dir), qrels_threshold=5)
    with pytest.raises(ValueError, match="available splits"):
        open_source("beir:scifact:nope", data_dir=str(data_dir))


def test_bm25_negatives_exclude_every_judged_relevant_doc(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("bm25s")
    from ragcun.data.beir import load_beir
    from ragcun.data.negatives import judged_relevant, load_or_mine

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path))
    dataset = load_beir(data_dir / "nq-utd", "test")
    mined, path, cached = load_or_mine("bm25", dataset, depth=10)
    assert not cached and path.is_file() and path.parent == tmp_path / "negatives"
    relevant = judged_relevant(data_dir / "nq-utd")
    assert set(mined) == set(dataset.queries)
    assert all(len(v) == 10 for v in mined.values())
    assert all(not (set(docs) & relevant.get(q, set())) for q, docs in mined.items())
    # BM25 finds lexically close documents: most judged-relevant docs (score >= 1) would have ranked high
    again, _, cached = load_or_mine("bm25", dataset, depth=10)
    assert cached and again == mined
    source = open_source("beir:nq-utd:test", data_dir=str(data_dir), negatives=3, mined=mined)
    batch = BatchStream(source, 4).next_batch()
    assert len(batch.negatives) == 12 and len(batch.negative_ids) == 12


def test_model_mined_negatives_exclude_judged_relevant(data_dir, tiny_model, tmp_path, monkeypatch):
    from ragcun.data.beir import load_beir
    from ragcun.data.negatives import judged_relevant, load_or_mine

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path))
    dataset = load_beir(data_dir / "nq-utd", "test")
    from ragcun.training.negatives import mine_with_model

    mined, path, cached = load_or_mine("model", dataset, miner=lambda data, d: mine_with_model(tiny_model, data, d),
                                       depth=5, model_key="tiny")
    relevant = judged_relevant(data_dir / "nq-utd")
    assert not cached and "-model-" in path.name
    assert all(len(v) == 5 and not (set(v) & relevant.get(q, set())) for q, v in mined.items())
