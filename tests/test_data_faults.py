"""Issue 14 points 6 and 10: duplicate ids are refused with the file and both lines; non-UTF-8 input and
malformed JSON name the file and line (no traceback, no "at at column")."""

from __future__ import annotations

import json

import pytest

from ragcun.data.beir import load_beir, load_corpus, load_queries


def write_beir(folder, corpus, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n"):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_bytes(corpus if isinstance(corpus, bytes) else corpus.encode())
    (folder / "queries.jsonl").write_bytes((queries or '{"_id": "q1", "text": "what"}\n').encode()
                                           if not isinstance(queries, bytes) else queries)
    (folder / "qrels" / "test.tsv").write_bytes(qrels.encode() if isinstance(qrels, str) else qrels)
    return folder


def docs(*ids):
    return "".join(json.dumps({"_id": i, "title": "", "text": f"doc {n}"}) + "\n" for n, i in enumerate(ids))


def test_duplicate_corpus_ids_are_refused_naming_both_lines(tmp_path):
    folder = write_beir(tmp_path / "ds", docs("d1", "d2", "d3", "d2"))
    with pytest.raises(ValueError, match=r"corpus.jsonl:4: duplicate document id 'd2' \(first on line 2\)"):
        load_corpus(folder)
    with pytest.raises(ValueError, match="duplicate document id"):
        load_beir(folder, "test")


def test_duplicate_query_ids_are_refused(tmp_path):
    folder = write_beir(tmp_path / "ds", docs("d1"), '{"_id": "q1", "text": "a"}\n\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(ValueError, match=r"queries.jsonl:3: duplicate query id 'q1' \(first on line 1\)"):
        load_queries(folder)


@pytest.mark.parametrize("where", ["corpus", "queries", "qrels"])
def test_non_utf8_names_file_and_line(tmp_path, where):
    bad = b'{"_id": "d9", "text": "caf\xe9"}\n'
    if where == "corpus":
        folder = write_beir(tmp_path / "ds", docs("d1").encode() + bad)
        expected = r"corpus.jsonl:2: not UTF-8 text \(byte 0xe9 at column 27\)"
    elif where == "queries":
        folder = write_beir(tmp_path / "ds", docs("d1"), b'{"_id": "q1", "text": "\xff"}\n')
        expected = r"queries.jsonl:1: not UTF-8 text"
    else:
        folder = write_beir(tmp_path / "ds", docs("d1"), None, b"query-id\tcorpus-id\tscore\nq1\td\xe91\t1\n")
        expected = r"test.tsv:2: not UTF-8 text"
    with pytest.raises(ValueError, match=expected):
        load_beir(folder, "test")


def test_training_jsonl_non_utf8_and_malformed_json(tmp_path):
    from ragcun.data.training import open_source

    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"query": "q", "pos": ["p"]}\n{"query": "\xe9", "pos": ["p"]}\n')
    source = open_source(f"jsonl:{path}", shuffle_buffer=10)
    with pytest.raises(ValueError, match=r"train.jsonl:2: not UTF-8 text"):
        list(source.examples(0))
    path.write_text('{"query": "q", "pos": ["p"]}\n{"query": "unterminated\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: malformed JSON") as info:
        list(open_source(f"jsonl:{path}", shuffle_buffer=10).examples(0))
    assert "at at" not in str(info.value)


def test_beir_malformed_json_message_reads_well(tmp_path):
    folder = write_beir(tmp_path / "ds", docs("d1") + '{"_id": "d2", "text": "unterminated\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: malformed JSON") as info:
        load_corpus(folder)
    assert "at at" not in str(info.value)


# -- 7: an hf: folder with only a pickle is refused, with a message, not a traceback -----------------------
def _pickle_only_copy(tiny_model_dir, dst, malicious=False):
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_model_dir, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    if malicious:
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        torch.save({"x": Evil()}, dst / "pytorch_model.bin")
    else:
        torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_hf_folder_with_only_a_pickle_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli
    from ragcun.model import EmbeddingModel

    folder = _pickle_only_copy(tiny_model_dir, tmp_path / "bin-only")
    monkeypatch.delenv("RAGCUN_ALLOW_PICKLE", raising=False)
    with pytest.raises(ValueError, match=r"only as a pickle \(pytorch_model.bin\).*RAGCUN_ALLOW_PICKLE=1"):
        EmbeddingModel.build(f"hf:{folder}", "identity", "cosine")
    result = CliRunner().invoke(build_cli(), ["encode", "--model", f"hf:{folder}", "a", "b"])
    assert result.exit_code != 0 and "only as a pickle" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    monkeypatch.setenv("RAGCUN_ALLOW_PICKLE", "1")  # opted in: transformers reads it (weights_only)
    EmbeddingModel.build(f"hf:{folder}", "identity", "cosine")


def test_a_malicious_pickle_is_refused_even_when_allowed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from ragcun.model import EmbeddingModel

    folder = _pickle_only_copy(tiny_model_dir, tmp_path / "evil", malicious=True)
    monkeypatch.setenv("RAGCUN_ALLOW_PICKLE", "1")
    with pytest.raises(ValueError, match="refused to load the weights|cannot load a transformers model") as info:
        EmbeddingModel.build(f"hf:{folder}", "identity", "cosine")
    assert "weights_only=False" not in str(info.value)
    assert "pwned" not in capsys.readouterr().out


# -- 12: empty queries are counted and reported -----------------------------------------------------------
def test_empty_queries_are_reported_with_a_count(tmp_path):
    folder = write_beir(tmp_path / "ds", docs("d1", "d2"),
                        '{"_id": "q1", "text": "what"}\n{"_id": "q2", "text": "  "}\n{"_id": "q3"}\n',
                        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td1\t1\n")
    dataset = load_beir(folder, "test")
    assert dataset.empty_query_ids == ["q2", "q3"]
    assert any("2 of 3 judged queries have empty text" in w for w in dataset.warnings())
    clean = write_beir(tmp_path / "clean", docs("d1"))
    assert load_beir(clean, "test").warnings() == []
