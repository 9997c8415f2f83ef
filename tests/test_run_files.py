"""TREC run files and per-query metrics: what `ragcun eval beir --save-run` writes, readable by ranx."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ragcun.evaluation.run_files import format_trec_run, read_trec_run


def test_trec_run_round_trips_and_orders_by_score_then_id(tmp_path):
    results = {"q2": {"a": 0.5, "b": 0.9}, "q1": {"c": 0.1, "d": 0.1}}
    text = format_trec_run(results, tag="x")
    assert text.splitlines() == ["q1 Q0 c 1 0.100000 x", "q1 Q0 d 2 0.100000 x", "q2 Q0 b 1 0.900000 x",
                                 "q2 Q0 a 2 0.500000 x"]
    (tmp_path / "run.trec").write_text(text)
    assert read_trec_run(tmp_path / "run.trec") == results


def test_bad_tag_and_malformed_lines_are_named(tmp_path):
    with pytest.raises(ValueError, match="one word"):
        format_trec_run({"q": {"d": 1.0}}, tag="two words")
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2\n")
    with pytest.raises(ValueError, match=r"bad.trec:2"):
        read_trec_run(bad)


def test_eval_beir_save_run_writes_files_that_ranx_reads(tiny_model_dir, data_dir, tmp_path):
    from ranx import Qrels, Run, evaluate

    from ragcun.cli.root import build_cli
    from ragcun.data.beir import load_qrels

    out = tmp_path / "run"
    result = CliRunner().invoke(build_cli(), ["eval", "beir", "--model", f"hf:{tiny_model_dir}", "--datasets",
                                              "nq-utd", "--data-dir", str(data_dir), "--k", "100", "--save-run",
                                              str(out), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert "runs" not in report and "per_query" not in report  # the files hold them
    per_query = json.loads((out / "nq-utd.per_query.json").read_text())
    run = read_trec_run(out / "nq-utd.trec")
    assert set(per_query) == set(run) and all(len(docs) == 100 for docs in run.values())
    qrels = load_qrels(data_dir / "nq-utd" / "qrels" / "test.tsv")
    ranx_ndcg = evaluate(Qrels(qrels), Run.from_file(str(out / "nq-utd.trec"), kind="trec"), "ndcg@10")
    ours = sum(v["NDCG@10"] for v in per_query.values()) / len(per_query)
    assert ours == pytest.approx(report["datasets"]["nq-utd"]["NDCG@10"], abs=1e-4)
    assert ranx_ndcg == pytest.approx(ours, abs=2e-3)  # ranx's NDCG breaks score ties its own way

    # the judgments beside the run, in TREC format: ranx reads them from the file (BEIR's own TSV it refuses)
    assert "qrels" not in report and (out / "nq-utd.qrels").is_file()
    from_file = Qrels.from_file(str(out / "nq-utd.qrels"), kind="trec")
    assert from_file.to_dict() == {q: docs for q, docs in qrels.items() if q in per_query}
    ranx_from_files = evaluate(from_file, Run.from_file(str(out / "nq-utd.trec"), kind="trec"), "ndcg@10")
    assert ranx_from_files == pytest.approx(ranx_ndcg, abs=1e-12)


def test_trec_qrels_format():
    from ragcun.evaluation.run_files import format_trec_qrels

    assert format_trec_qrels({"q2": {"d1": 1}, "q1": {"b": 2, "a": 0}}).splitlines() == [
        "q1 0 a 0", "q1 0 b 2", "q2 0 d1 1"]
    with pytest.raises(ValueError, match="without spaces"):
        format_trec_qrels({"q 1": {"d": 1}})
