"""Bad input to ``ragcun eval beir``: a clear one-line error naming the file (and line), a non-zero exit, no
traceback; qrels rows naming unknown ids are counted and reported, not fatal."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ragcun.cli.root import build_cli


@pytest.fixture()
def beir_folder(tmp_path):
    """A valid 6-document BEIR dataset at tmp/data/mini."""
    folder = tmp_path / "data" / "mini"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"doc {i}", "text": f"about topic {i} and more words {i}"} for i in range(6)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"topic {i}"} for i in range(3)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td2\t2\n")
    return folder


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    from ragcun.testing.tiny import make_tiny_bert

    return f"hf:{make_tiny_bert(tmp_path_factory.mktemp('tiny'))}"


def run(*args):
    result = CliRunner().invoke(build_cli(), ["eval", "beir", "--no-download", "--device", "cpu", *map(str, args)])
    return result


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # click's error, not a crash
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def test_valid_folder_runs(beir_folder, tiny_spec, tmp_path):
    out = tmp_path / "r.json"
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent, "--k", 5,
                 "--output", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["datasets"]["mini"]) >= {"NDCG@1", "NDCG@5", "MRR@5", "Recall@5", "P@3", "MAP@5"}
    assert "NDCG@10" not in report["datasets"]["mini"]
    assert report["warnings"] == []


def test_malformed_jsonl_line(beir_folder, tiny_spec):
    lines = (beir_folder / "corpus.jsonl").read_text().splitlines()
    lines[3] = lines[3][:-5]  # cut the closing of the 4th record
    (beir_folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, f"{beir_folder / 'corpus.jsonl'}:4", "malformed JSON")


def test_record_without_id(beir_folder, tiny_spec):
    with (beir_folder / "queries.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": "no id here"}) + "\n")
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, f"{beir_folder / 'queries.jsonl'}:4", "_id")


def test_unknown_ids_in_qrels_are_counted_and_reported(beir_folder, tiny_spec, tmp_path):
    with (beir_folder / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q-missing\td1\t1\nq-missing\td2\t1\nq0\td-missing\t1\n")
    out = tmp_path / "r.json"
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent, "--k", 5,
                 "--output", out)
    assert result.exit_code == 0, result.output
    assert "2 of 6 rows name a query id" in result.output and "'q-missing'" in result.output
    assert "1 of 6 rows name a document id" in result.output and "'d-missing'" in result.output
    report = json.loads(out.read_text())
    assert len(report["warnings"]) == 2
    assert report["counts"]["mini"]["queries"] == 3


def test_qrels_score_not_an_integer(beir_folder, tiny_spec):
    with (beir_folder / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q0\td3\thigh\n")
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, f"{beir_folder / 'qrels' / 'test.tsv'}:5", "'high'")


def test_empty_corpus(beir_folder, tiny_spec):
    (beir_folder / "corpus.jsonl").write_text("\n")
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, str(beir_folder / "corpus.jsonl"), "empty")


def test_missing_split_file(beir_folder, tiny_spec):
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent, "--split", "dev")
    assert_clean_error(result, str(beir_folder / "qrels" / "dev.tsv"), "available splits: test")


def test_missing_corpus_file(beir_folder, tiny_spec):
    (beir_folder / "corpus.jsonl").unlink()
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, str(beir_folder), "not a BEIR folder")


def test_model_folder_that_is_not_a_model(beir_folder, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    result = run("--model", not_a_model, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, str(not_a_model), "neither a ragcun checkpoint")


def test_broken_checkpoint(beir_folder, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "ragcun.json").write_text("{not json")
    result = run("--model", ckpt, "--datasets", "mini", "--data-dir", beir_folder.parent)
    assert_clean_error(result, str(ckpt / "ragcun.json"), "not valid JSON")


def test_missing_dataset_says_where_it_looked(tmp_path):
    result = run("--datasets", "scifact", "--data-dir", tmp_path / "nowhere")
    assert_clean_error(result, "'scifact'", str(tmp_path / "nowhere"), "--data-dir", "RAGCUN_DATA",
                       "public.ukp.informatik.tu-darmstadt.de")


def test_unknown_dataset_lists_what_is_there(beir_folder):
    result = run("--datasets", "scifcat", "--data-dir", beir_folder.parent)
    assert_clean_error(result, "'scifcat'", str(beir_folder.parent), "found there: mini")


def test_download_failure_is_a_clean_error(tmp_path, monkeypatch):
    """With downloads allowed but no network, the error says which folder and how to provide the data."""
    from ragcun.data import beir

    def offline(name, data_dir):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(beir, "download_beir", offline)
    monkeypatch.delenv("RAGCUN_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = CliRunner().invoke(build_cli(), ["eval", "beir", "--datasets", "nfcorpus", "--data-dir",
                                              str(tmp_path / "d")])
    assert_clean_error(result, "downloading it from", "Network is unreachable", str(tmp_path / "d"))


def test_default_data_dir(monkeypatch, tmp_path):
    from ragcun.data.beir import default_data_dir

    monkeypatch.setenv("RAGCUN_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("RAGCUN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "ragcun" / "beir"


def test_bad_options(beir_folder, tiny_spec):
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent, "--dtype", "int8")
    assert result.exit_code != 0 and "Traceback" not in result.output
    result = run("--model", tiny_spec, "--datasets", "mini", "--data-dir", beir_folder.parent,
                 "--distance", "wasserstein")
    assert_clean_error(result, "logvar")
    result = run("--model", tiny_spec, "--datasets", " , ", "--data-dir", beir_folder.parent)
    assert_clean_error(result, "no datasets given")


def test_all_with_nothing_present(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("--datasets", "all", "--data-dir", tmp_path / "empty")
    assert_clean_error(result, "no dataset with a 'test' split", str(tmp_path / "empty"))
