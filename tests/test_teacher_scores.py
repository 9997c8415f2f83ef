"""Teacher scores into training batches (ragcun/data/training.py) and ``ragcun data score``
(ragcun/workflows/teacher_scores.py, ragcun/cli/data_cmd.py): the JSONL layout, resumable and atomic scoring,
bi-encoder and cross-encoder teachers, sharding over 2 gloo ranks, and training a few steps from the scores."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from _training_helpers import MSMARCO_SAMPLE, no_dropout_copy, tiny_config

from ragcun.data.training import BatchStream, open_source

pytestmark = pytest.mark.usefixtures("single_thread")


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _lines(n=12, k=5):
    # passage text encodes its own score, so a test can check that every score follows its passage
    return [{"query": f"query {i}", "pos": [f"pos {i} a", f"pos {i} b"], "neg": [f"neg {i} {j}" for j in range(k)],
             "pos_scores": [100.0 + i, 200.0 + i], "neg_scores": [10.0 * j + i / 100 for j in range(k)]}
            for i in range(n)]


def _score_of(text: str, i: int) -> float:
    kind, _, rest = text.partition(" ")
    if kind == "pos":
        return (100.0 if rest.endswith("a") else 200.0) + i
    return 10.0 * int(rest.split()[1]) + i / 100


# -- the loader ---------------------------------------------------------------------------------------------------

def test_teacher_scores_follow_the_passages_each_example_draws(tmp_path):
    data = _write(tmp_path / "scored.jsonl", _lines())
    stream = BatchStream(open_source(f"jsonl:{data}", negatives=3, seed=5, shuffle_buffer=4), 4)
    for _ in range(6):  # over an epoch boundary
        batch = stream.next_batch()
        assert len(batch.teacher_scores) == 4 and all(len(row) == 4 for row in batch.teacher_scores)
        for i, row in enumerate(batch.teacher_scores):
            n = int(batch.queries[i].split()[1])
            assert row[0] == _score_of(batch.positives[i], n)
            assert row[1:] == [_score_of(t, n) for t in batch.negatives[3 * i:3 * i + 3]]


def test_the_draws_are_those_of_the_same_file_without_scores(tmp_path):
    with_scores = _write(tmp_path / "a.jsonl", _lines())
    without = _write(tmp_path / "b.jsonl",
                     [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in _lines()])
    a = BatchStream(open_source(f"jsonl:{with_scores}", negatives=2, seed=1), 3)
    b = BatchStream(open_source(f"jsonl:{without}", negatives=2, seed=1), 3)
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert (x.queries, x.positives, x.negatives, x.relevant_ids) == (y.queries, y.positives, y.negatives,
                                                                         y.relevant_ids)
        assert y.teacher_scores is None and x.teacher_scores is not None


def test_the_msmarco_sample_brings_its_teacher_scores():
    if not MSMARCO_SAMPLE.is_file():
        pytest.skip("../shared/data/msmarco-train-sample is not here")
    batch = BatchStream(open_source(f"jsonl:{MSMARCO_SAMPLE}", negatives=4), 5).next_batch()
    scores = torch.tensor(batch.teacher_scores)
    assert scores.shape == (5, 5) and ((80 < scores) & (scores < 110)).all()


def test_ids_and_relevance_columns_are_used(tmp_path):
    records = [{"query": "q", "query_id": "q1", "pos": ["p text"], "pos_ids": ["d1"], "neg": ["n1", "n2"],
                "neg_ids": ["d7", "d8"], "relevant_ids": ["d1", "d9"], "pos_scores": [1.0], "neg_scores": [0.5, 0.2]},
               {"query": "r", "pos": ["other"], "pos_ids": ["d9"], "neg": ["n3", "n4"], "neg_ids": ["d1", "d3"],
                "pos_scores": [2.0], "neg_scores": [0.0, 0.1]}]
    data = _write(tmp_path / "ids.jsonl", records)
    batch = BatchStream(open_source(f"jsonl:{data}", negatives=2, shuffle_buffer=1), 2).next_batch()
    by_query = dict(zip(batch.queries, range(2)))
    i, j = by_query["q"], by_query["r"]
    assert batch.positive_ids[i] == "d1" and sorted(batch.negative_ids[2 * i:2 * i + 2]) == ["d7", "d8"]
    # d9 (the other line's positive) is judged relevant to q: label-aware masking sees it
    assert batch.relevant_ids[i] == ["d1", "d9"] and batch.relevant_ids[j] == ["d9"]


@pytest.mark.parametrize("change,match", [
    ({"pos_scores": [1.0]}, "'pos_scores' must be a list of 2 finite numbers"),
    ({"neg_scores": [1.0, "x", 2, 3, 4]}, "'neg_scores' must be a list of 5"),
    ({"neg_scores": [1.0, float("nan"), 2, 3, 4]}, "'neg_scores'"),
    ({"pos_ids": ["a"]}, "'pos_ids' must be a list of 2"),
])
def test_bad_score_and_id_columns_name_the_line(tmp_path, change, match):
    data = _write(tmp_path / "bad.jsonl", [_lines(1)[0] | change])
    with pytest.raises(ValueError, match=rf"bad.jsonl:1: {match}"):
        next(open_source(f"jsonl:{data}", negatives=2).examples(0))


def test_a_batch_mixing_scored_and_unscored_lines_is_an_error(tmp_path):
    lines = _lines(4)
    del lines[2]["pos_scores"]
    data = _write(tmp_path / "mixed.jsonl", lines)
    with pytest.raises(ValueError, match="mixes lines with teacher scores"):
        BatchStream(open_source(f"jsonl:{data}", negatives=1), 4).next_batch()


def test_grad_cache_and_the_plain_step_hand_the_scores_to_the_loss():
    from ragcun.data.training import TrainingBatch
    from ragcun.embedding import Embedding
    from ragcun.training.grad_cache import loss_inputs

    b = TrainingBatch(["q"], ["p"], ["n"], ["p"], ["n"], [["p"]], [[3.0, 1.0]])
    e = Embedding(torch.zeros(1, 2))
    inputs = loss_inputs(b, {"queries": e, "positives": e, "negatives": e}, 4)
    assert inputs.teacher_scores.tolist() == [[3.0, 1.0]] and inputs.teacher_scores.dtype == torch.float32


# -- ragcun data score --------------------------------------------------------------------------------------------

def _source_jsonl(tmp_path, n=7):
    lines = [{"query": f"what is thing {i}", "pos": [f"thing {i} is a word"], "neg": [f"other {j} words" for j in
                                                                                      range(i, i + 4)]}
             for i in range(n)]
    return _write(tmp_path / "source.jsonl", lines)


def test_score_with_a_bi_encoder_writes_the_layout_and_the_metadata(tiny_model_dir, tmp_path):
    from ragcun.data.training import open_source as open_data
    from ragcun.distances.base import exact_similarity
    from ragcun.files import current_umask
    from ragcun.resolve import resolve_model
    from ragcun.workflows.teacher_scores import read_metadata, score_training_data

    source = _source_jsonl(tmp_path)
    out = tmp_path / "scored.jsonl"
    teacher = f"{tiny_model_dir}+gaussian"  # a fresh euclidean head: every score negative
    result = score_training_data(teacher, f"jsonl:{source}", out, negatives=3, batch_size=3,
                                 settings={"head": {"gaussian": {"out_dim": 8}}})
    assert result["lines"] == 7 and result["scored"] == 7 and not list(tmp_path.glob("scored.jsonl.part*"))
    meta = read_metadata(out)
    assert meta["similarity"] == "euclidean" and meta["similarity_formula"] == "-||q - d||"
    assert meta["sign"] == "higher scores mean more relevant" and meta["scale"] == 1.0
    assert meta["teacher_kind"] == "bi-encoder" and meta["lines"] == 7
    usual = 0o666 & ~current_umask()  # readable by whoever may read the user's other files, not mkstemp's 0600
    for written in (out, out.with_name("scored.jsonl.meta.json")):
        assert (written.stat().st_mode & 0o777) == usual, written
    records = [json.loads(x) for x in out.read_text().splitlines()]
    model = resolve_model(teacher, settings={"head": {"gaussian": {"out_dim": 8}}})
    for i, r in enumerate(records):
        assert r["query"] == f"what is thing {i}" and len(r["neg"]) == 3 and len(r["neg_scores"]) == 3
        q = model.encode_embeddings([r["query"]])
        d = model.encode_embeddings(r["pos"] + r["neg"])
        expected = exact_similarity(model.distance, q, d)[0].tolist()
        assert r["pos_scores"] + r["neg_scores"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert max(expected) < 0
    # the loader reads it back with the scores
    batch = BatchStream(open_data(f"jsonl:{out}", negatives=2), 7).next_batch()
    assert len(batch.teacher_scores) == 7


def test_a_passage_recurring_across_lines_is_encoded_once_and_scored_alike(tiny_model_dir, tmp_path):
    from ragcun.distances.base import exact_similarity
    from ragcun.resolve import resolve_model
    from ragcun.workflows.teacher_scores import BiEncoderTeacher, ScoringItem

    passages = ["the first shared passage", "a second one, longer than the first", "third"]
    items = [ScoringItem(query=f"question {i}", pos=[passages[i % 3]], neg=[passages[(i + 1) % 3], passages[2]])
             for i in range(7)]
    teacher = BiEncoderTeacher(f"{tiny_model_dir}+gaussian", settings={"head": {"gaussian": {"out_dim": 8}}},
                               batch_size=2)
    encoded = []
    real = teacher.model.encode_embeddings

    def counting(texts, *args, **kwargs):  # the real encoder, counting what it is asked to encode
        encoded.extend(texts)
        return real(texts, *args, **kwargs)

    teacher.model.encode_embeddings = counting
    scores = teacher.score(items[:4]) + teacher.score(items[4:])  # two batches: the second finds all 3 cached
    documents = [t for t in encoded if not t.startswith("question")]
    assert sorted(documents) == sorted(passages)  # each distinct passage once, over both batches
    assert sum(t.startswith("question") for t in encoded) == 7
    model = resolve_model(f"{tiny_model_dir}+gaussian", settings={"head": {"gaussian": {"out_dim": 8}}})
    model.load_state_dict(teacher.model.state_dict())
    for item, row in zip(items, scores):
        expected = exact_similarity(model.distance, model.encode_embeddings([item.query]),
                                    model.encode_embeddings(item.pos + item.neg))[0].tolist()
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_vector_cache_drops_the_least_recently_used():
    from ragcun.workflows.teacher_scores import TextVectorCache

    cache = TextVectorCache(2)
    cache.put("a", 1), cache.put("b", 2)
    assert cache.get("a") == 1  # "a" used: "b" is now the oldest
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    nothing = TextVectorCache(0)
    nothing.put("a", 1)
    assert nothing.get("a") is None


def test_scoring_resumes_after_a_crash_keeps_finished_lines_and_is_atomic(tiny_model_dir, tmp_path, monkeypatch):
    import ragcun.workflows.teacher_scores as ts

    source = _source_jsonl(tmp_path, n=8)
    teacher = f"hf:{tiny_model_dir}"
    reference = tmp_path / "reference.jsonl"
    ts.score_training_data(teacher, f"jsonl:{source}", reference, negatives=2, batch_size=3)

    out = tmp_path / "scored.jsonl"
    real = ts.BiEncoderTeacher.score
    calls = {"n": 0}

    def crash_on_second(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a kill between batches
        return real(self, items)

    monkeypatch.setattr(ts.BiEncoderTeacher, "score", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=2, batch_size=3)
    assert not out.exists() and not ts.meta_path(out).exists()  # nothing pretends to be finished
    part = ts.part_path(out, 0)
    assert len(part.read_text().splitlines()) == 3 and ts.job_path(out).is_file()
    with part.open("a") as fh:
        fh.write('{"_index": 3, "query": "half a li')  # killed in the middle of a line
    # another setting is refused, naming it
    monkeypatch.setattr(ts.BiEncoderTeacher, "score", real)
    with pytest.raises(ValueError, match=r"other settings \(negatives\)"):
        ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=1, batch_size=3)
    result = ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=2, batch_size=3)
    assert result["resumed"] == 3 and result["scored"] == 5
    assert out.read_text() == reference.read_text()
    assert not list(tmp_path.glob("scored.jsonl.part*"))
    # a finished output is never overwritten: the same job is "already complete", another one an error
    again = ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=2, batch_size=3)
    assert again["already_complete"] and again["scored"] == 0
    with pytest.raises(ValueError, match="exists and was scored with other settings"):
        ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=1)


def test_beir_pairs_with_mined_negatives_and_ids(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("bm25s")
    from ragcun.data.beir import load_beir
    from ragcun.data.negatives import judged_relevant
    from ragcun.workflows.teacher_scores import score_training_data

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "nq.jsonl"
    score_training_data(f"hf:{tiny_model_dir}", "beir:nq-utd:test", out, negatives=2, data_dir=str(data_dir),
                        mine_negatives="bm25:skip=1", qrels_threshold=2, batch_size=64)
    dataset = load_beir(data_dir / "nq-utd", "test")
    pairs = sorted((q, d) for q, docs in dataset.qrels.items() for d, s in docs.items() if s >= 2)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["query_id"], r["pos_ids"][0]) for r in records] == pairs
    relevant = judged_relevant(data_dir / "nq-utd")
    for r in records:
        assert len(r["neg_ids"]) == 2 and not set(r["neg_ids"]) & relevant.get(r["query_id"], set())
        assert r["pos_ids"][0] in r["relevant_ids"] and len(r["neg_scores"]) == 2
    # training reads the ids: label-aware masking keeps working on scored BEIR pairs
    batch = BatchStream(open_source(f"jsonl:{out}", negatives=2), 8).next_batch()
    assert set(batch.positive_ids) <= set(dataset.corpus) and set(batch.negative_ids) <= set(dataset.corpus)


def _tiny_cross_encoder(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from ragcun.encoders.embedded import embedded_model_path
    from ragcun.testing.tiny import TOKENIZER_FILES

    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:  # the tiny model fixture's tokenizer: the packaged MiniLM's
        shutil.copy2(Path(embedded_model_path()) / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_a_cross_encoder_teacher_gives_its_raw_logits(tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import CrossEncoder

    from ragcun.workflows.teacher_scores import read_metadata, score_training_data

    folder = _tiny_cross_encoder(tmp_path / "ce")
    source = _source_jsonl(tmp_path, n=3)
    out = tmp_path / "ce.jsonl"
    score_training_data(f"cross-encoder:{folder}", f"jsonl:{source}", out, negatives=2)
    meta = read_metadata(out)
    assert meta["teacher_kind"] == "cross-encoder" and meta["similarity"] == "cross-encoder logit"
    model = CrossEncoder(str(folder), local_files_only=True)
    for r in (json.loads(x) for x in out.read_text().splitlines()):
        expected = model.predict([(r["query"], d) for d in r["pos"] + r["neg"]], activation_fn=torch.nn.Identity(),
                                 show_progress_bar=False)
        assert r["pos_scores"] + r["neg_scores"] == pytest.approx([float(x) for x in expected], abs=1e-5)
    with pytest.raises(ValueError, match="local folders only"):
        score_training_data("cross-encoder:cross-encoder/ms-marco-MiniLM-L6-v2", f"jsonl:{source}",
                            tmp_path / "x.jsonl")


def _score_on_rank(rank: int, world_size: int, teacher: str, source: str, out: str):
    import torch as t

    import ragcun.distributed as D
    from ragcun.workflows.teacher_scores import score_training_data

    ctx = D.DistributedContext(rank=rank, local_rank=rank, world_size=world_size, device=t.device("cpu"))
    result = score_training_data(teacher, source, out, negatives=2, batch_size=2, device="cpu", ctx=ctx)
    return result["scored"]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_shard_the_scoring_and_rank_0_merges(tiny_model_dir, tmp_path, monkeypatch):
    import ragcun.workflows.teacher_scores as ts
    from ragcun.testing.distributed import run_on_ranks

    source = _source_jsonl(tmp_path, n=9)
    teacher = f"hf:{tiny_model_dir}"
    reference = tmp_path / "reference.jsonl"
    ts.score_training_data(teacher, f"jsonl:{source}", reference, negatives=2)
    out = tmp_path / "sharded.jsonl"
    # an unfinished single-process run first (2 lines), then 2 ranks finish it: every line is kept once
    real = ts.BiEncoderTeacher.score
    calls = {"n": 0}

    def crash_on_second(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(ts.BiEncoderTeacher, "score", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ts.score_training_data(teacher, f"jsonl:{source}", out, negatives=2, batch_size=2)
    scored = run_on_ranks(_score_on_rank, 2, teacher, f"jsonl:{source}", str(out), timeout=240)
    assert sum(scored) == 7 and all(s > 0 for s in scored)  # each rank scored its own share of the rest
    assert out.read_text() == reference.read_text()
    assert not list(tmp_path.glob("sharded.jsonl.part*"))


def test_the_cli_scores_and_says_how_to_train(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    source = _source_jsonl(tmp_path, n=4)
    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(build_cli(), ["data", "score", "--teacher", f"hf:{tiny_model_dir}", "--train-data",
                                              f"jsonl:{source}", "--negatives", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "--loss margin-mse" in result.output and len(out.read_text().splitlines()) == 4
    again = CliRunner().invoke(build_cli(), ["data", "score", "--teacher", f"hf:{tiny_model_dir}", "--train-data",
                                             f"jsonl:{source}", "--negatives", "1", "--output", str(out)])
    assert again.exit_code != 0 and "does not overwrite" in again.output


def test_a_sample_scores_a_fixed_random_subset_in_input_order(tiny_model_dir, tmp_path):
    from ragcun.workflows.teacher_scores import read_metadata, score_training_data

    source = _source_jsonl(tmp_path, n=10)
    teacher = f"hf:{tiny_model_dir}"
    full = tmp_path / "full.jsonl"
    score_training_data(teacher, f"jsonl:{source}", full, negatives=2, batch_size=4)
    by_query = {r["query"]: r for r in map(json.loads, full.read_text().splitlines())}
    picked = {}
    for seed in (1, 2):
        out = tmp_path / f"sample-{seed}.jsonl"
        result = score_training_data(teacher, f"jsonl:{source}", out, negatives=2, batch_size=4, sample=4,
                                     sample_seed=seed)
        assert result["lines"] == 4 and result["sampled_from"] == 10 and result["sample_seed"] == seed
        records = [json.loads(x) for x in out.read_text().splitlines()]
        numbers = [int(r["query"].split()[-1]) for r in records]
        assert numbers == sorted(numbers) and len(set(numbers)) == 4  # input order, no repeats
        for r in records:  # the same scores as when the whole file is scored
            whole = by_query[r["query"]]
            assert r["pos_scores"] + r["neg_scores"] == pytest.approx(whole["pos_scores"] + whole["neg_scores"],
                                                                     rel=1e-5, abs=1e-6)
        assert read_metadata(out)["job"]["sample"] == 4
        picked[seed] = numbers
    assert picked[1] != picked[2]  # another seed, another sample
    again = score_training_data(teacher, f"jsonl:{source}", tmp_path / "sample-1.jsonl", negatives=2, batch_size=4,
                                sample=4, sample_seed=1)
    assert again["already_complete"]
    with pytest.raises(ValueError, match="does not overwrite"):  # another sample is another job
        score_training_data(teacher, f"jsonl:{source}", tmp_path / "sample-1.jsonl", negatives=2, sample=5)
    everything = score_training_data(teacher, f"jsonl:{source}", tmp_path / "all.jsonl", negatives=2, sample=50)
    assert everything["lines"] == 10 and "sampled_from" not in everything  # a sample as large as the file: all


def test_a_bfloat16_teacher_scores_close_to_float32_and_says_so(tiny_model_dir, tmp_path):
    from ragcun.workflows.teacher_scores import read_metadata, score_training_data

    source = _source_jsonl(tmp_path, n=5)
    teacher = f"hf:{tiny_model_dir}"
    exact, fast = tmp_path / "f32.jsonl", tmp_path / "bf16.jsonl"
    score_training_data(teacher, f"jsonl:{source}", exact, negatives=2)
    score_training_data(teacher, f"jsonl:{source}", fast, negatives=2, dtype="bfloat16-autocast")
    assert read_metadata(fast)["teacher_dtype"] == "bfloat16-autocast" and read_metadata(exact)["teacher_dtype"] == \
        "float32"
    for a, b in zip(*(map(json.loads, p.read_text().splitlines()) for p in (exact, fast))):
        assert a["query"] == b["query"]
        assert b["pos_scores"] + b["neg_scores"] == pytest.approx(a["pos_scores"] + a["neg_scores"], abs=0.05)
        assert b["pos_scores"] + b["neg_scores"] != a["pos_scores"] + a["neg_scores"]  # it did compute in bfloat16
    with pytest.raises(ValueError, match="--dtype must be one of"):
        score_training_data(teacher, f"jsonl:{source}", tmp_path / "x.jsonl", dtype="bfloat17")
    with pytest.raises(ValueError, match="a cross-encoder teacher scores in float32"):
        score_training_data(f"cross-encoder:{tmp_path}", f"jsonl:{source}", tmp_path / "y.jsonl",
                            dtype="bfloat16-autocast")


# -- training from teacher scores ------------------------------------------------------------------------------------

def test_training_a_few_steps_from_the_msmarco_samples_teacher_scores(tiny_model_dir, tmp_path):
    if not MSMARCO_SAMPLE.is_file():
        pytest.skip("../shared/data/msmarco-train-sample is not here")
    from ragcun.losses.distill import TeacherScaleWarning
    from ragcun.training.loop import train

    config = tiny_config(tiny_model_dir, tmp_path / "run", MSMARCO_SAMPLE, loss="distill-margin-mse+0.2*isotropy",
                         negatives=3, batch_size=2, steps=3)
    with pytest.warns(TeacherScaleWarning, match=r"--set loss\.margin-mse\.teacher_scale="):
        result = train(config)  # FlagEmbedding's scores (about 85..100) on a fresh Euclidean head: not mapped
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert set(result.terms[0]) == {"margin-mse", "isotropy"}
    # mapped, the same run is silent; distill-kl trains too
    config = tiny_config(tiny_model_dir, tmp_path / "run-kl", MSMARCO_SAMPLE, loss="distill-kl+0.2*isotropy",
                         negatives=3, batch_size=2, steps=2,
                         settings={"head": {"gaussian": {"out_dim": 16}}, "loss": {
                             "isotropy": {"num_slices": 32}, "distill-kl": {"teacher_temperature": 5.0}}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherScaleWarning)
        result = train(config)
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_training_from_data_score_output_with_and_without_grad_cache(tiny_model_dir, tmp_path):
    from ragcun.training.loop import train
    from ragcun.workflows.teacher_scores import score_training_data

    model_dir = no_dropout_copy(tiny_model_dir, tmp_path / "tiny-nodrop")
    source = _source_jsonl(tmp_path, n=8)
    scored = tmp_path / "scored.jsonl"
    score_training_data(f"hf:{model_dir}", f"jsonl:{source}", scored, negatives=3)
    settings = {"head": {"gaussian": {"out_dim": 16}}, "loss": {"isotropy": {"num_slices": 32},
                                                                 "margin-mse": {"check_scale": False}}}
    runs = {}
    for name, extra in (("plain", {}), ("gradcache", {"grad_cache_chunk": 3})):
        config = tiny_config(model_dir, tmp_path / name, scored, loss="margin-mse+0.2*isotropy", negatives=2,
                             batch_size=4, steps=2, settings=settings, **extra)
        runs[name] = train(config).losses
    assert all(torch.isfinite(torch.tensor(runs["plain"])))
    torch.testing.assert_close(torch.tensor(runs["gradcache"]), torch.tensor(runs["plain"]), rtol=1e-4, atol=1e-5)


def test_a_distillation_run_without_teacher_scores_stops_naming_the_data(tiny_model_dir, tmp_path):
    from ragcun.training.loop import train

    source = _source_jsonl(tmp_path, n=8)  # no pos_scores / neg_scores
    config = tiny_config(tiny_model_dir, tmp_path / "run", source, loss="margin-mse+0.2*isotropy", negatives=2,
                         steps=2)
    with pytest.raises(ValueError, match=r"loss margin-mse needs a teacher's scores.*pos_scores.*ragcun data score"):
        train(config)


def test_beir_negatives_mined_by_the_teacher_itself(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    from ragcun.data.negatives import judged_relevant
    from ragcun.workflows.teacher_scores import score_training_data

    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "nq-model.jsonl"
    score_training_data(f"{tiny_model_dir}+gaussian", "beir:nq-utd:test", out, negatives=2, data_dir=str(data_dir),
                        mine_negatives="model:skip=1", qrels_threshold=2,
                        settings={"head": {"gaussian": {"out_dim": 8}}})
    relevant = judged_relevant(data_dir / "nq-utd")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records and all(len(r["neg_ids"]) == 2 for r in records)
    for r in records:
        assert not set(r["neg_ids"]) & relevant.get(r["query_id"], set())
        assert max(r["neg_scores"] + r["pos_scores"]) < 0  # the teacher's Euclidean similarity: -||q - d||
    assert list((tmp_path / "cache" / "negatives").glob("nq-utd-test-model-*.json"))
