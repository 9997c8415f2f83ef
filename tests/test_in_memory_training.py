"""Issue 29, item 13: training from in-memory examples (a notebook's list of pairs, a datasets.Dataset) with the
checks, the order and the resume semantics of a file."""

from __future__ import annotations

import json

import pytest
from _training_helpers import tiny_config, write_pairs
from click.testing import CliRunner

import ragcun
from ragcun.cli.root import build_cli
from ragcun.data.in_memory import InMemoryExamples
from ragcun.training.loop import train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def pairs_file(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24, negs=2)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_in_memory_examples_train_exactly_as_the_same_examples_in_a_jsonl_file(tiny_model_dir, pairs_file, tmp_path):
    # a shuffle buffer larger than the file permutes it as the in-memory source does: the same batches, the same run
    from_file = train(tiny_config(tiny_model_dir, tmp_path / "file", pairs_file, steps=3, negatives=1))
    examples = [(r["query"], r["pos"][0], r["neg"]) for r in records(pairs_file)]
    config = tiny_config(tiny_model_dir, tmp_path / "memory", None, train_data=None, steps=3, negatives=1)
    from_memory = ragcun.train(config, data=examples)
    assert from_memory.losses == from_file.losses and len(from_memory.losses) == 3
    saved = json.loads((tmp_path / "memory" / "train_config.json").read_text())
    assert saved["train_data"] == InMemoryExamples(examples, negatives=1).spec
    assert saved["train_data"].startswith("memory:")


def test_every_accepted_form_reads_the_same_examples(tmp_path):
    datasets = pytest.importorskip("datasets")
    pairs = [("what is a", "a is a letter", "b is another"), ("what is c", "c is a letter", "d is another")]
    forms = {
        "tuples": pairs,
        "tuples with a list": [(q, p, [n]) for q, p, n in pairs],
        "jsonl records": [{"query": q, "pos": [p], "neg": [n]} for q, p, n in pairs],
        "sentence-transformers names": [{"anchor": q, "positive": p, "negative": n} for q, p, n in pairs],
        "a dataset by name": datasets.Dataset.from_dict({"anchor": [q for q, _, _ in pairs],
                                                         "positive": [p for _, p, _ in pairs],
                                                         "negative": [n for _, _, n in pairs]}),
        "a dataset by column order": datasets.Dataset.from_dict({"question": [q for q, _, _ in pairs],
                                                                 "answer": [p for _, p, _ in pairs],
                                                                 "wrong": [n for _, _, n in pairs]}),
    }
    read = {name: [(e.query, e.positive, e.negatives) for e in InMemoryExamples(data, negatives=1).examples(0)]
            for name, data in forms.items()}
    first = read["tuples"]
    assert sorted(first) == sorted(pairs_as := [(q, p, [n]) for q, p, n in pairs]) and len(pairs_as) == 2
    assert all(r == first for r in read.values()), read
    assert len({InMemoryExamples(d).spec for d in forms.values()}) == 1  # one fingerprint for one set of examples


@pytest.mark.parametrize("data, message", [
    ([("only a query",)], r"data\[0\]: an example needs a query and a positive"),
    ([("q", "p"), ("", "p")], r"data\[1\]: 'query' must be a non-empty string"),
    ([("q", "p"), {"text": "x"}], r"data\[1\]: a dict example needs 'query' and 'pos'"),
    ([("q", "p"), 5], r"data\[1\]: an example is a \(query, positive\[, negatives\]\) tuple or a dict, got int"),
    ([("q", 7)], r"data\[0\]: 'pos' must be a non-empty list of strings"),
    ([], "holds no training examples"),
    ("train.jsonl", "a file goes in train_data instead"),
])
def test_bad_examples_are_named_by_their_index_before_training(tiny_model_dir, tmp_path, data, message):
    config = tiny_config(tiny_model_dir, tmp_path / "run", None, train_data=None)
    with pytest.raises(ValueError, match=message):
        ragcun.train(config, data=data)
    assert not (tmp_path / "run").exists()


def test_hard_negatives_are_asked_of_every_example(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", None, train_data=None, negatives=1)
    with pytest.raises(ValueError, match=r"data\[1\]: --negatives 1 but this line has no 'neg'"):
        ragcun.train(config, data=[("q", "p", "n"), ("q2", "p2")])
    config = tiny_config(tiny_model_dir, tmp_path / "run", None, train_data=None, mine_negatives="bm25")
    with pytest.raises(ValueError, match="in-memory examples bring their own hard negatives"):
        ragcun.train(config, data=[("q", "p", "n")])


def test_a_resumed_run_needs_the_same_examples(tiny_model_dir, pairs_file, tmp_path):
    examples = [(r["query"], r["pos"][0]) for r in records(pairs_file)]
    run = tmp_path / "run"
    config = tiny_config(tiny_model_dir, run, None, train_data=None, steps=4, save_every=2)
    train(config, data=examples, stop_after=2)
    other = examples[:-1] + [("another query", "another passage")]
    with pytest.raises(ValueError, match="a resumed run needs the same examples"):
        train(config, resume=True, data=other)
    result = CliRunner().invoke(build_cli(), ["train", "--output-dir", str(run), "--resume", "--no-progress"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "resume it from Python with the same examples" in output, output
    assert "Traceback" not in output
    finished = train(config, resume=True, data=examples)
    assert finished.resumed_from == 2 and finished.step == 4 and finished.model_dir is not None
    # resumed with the same examples, the run is the one an uninterrupted run gives
    whole = train(tiny_config(tiny_model_dir, tmp_path / "whole", None, train_data=None, steps=4, save_every=2),
                  data=examples)
    assert finished.losses == whole.losses[2:]


def test_train_data_and_data_together_are_refused(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(ValueError, match="give one"):
        ragcun.train(tiny_config(tiny_model_dir, tmp_path / "run", pairs_file), data=[("q", "p")])
