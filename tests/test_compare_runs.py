"""``ragcun compare``: TREC runs on the same queries, with the ablation's paired statistics (issue 29, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.console import stdout  # noqa: F401  made before any test sets COLUMNS: its width follows them
from ragcun.evaluation.beir_eval import per_query_scores
from ragcun.evaluation.compare_runs import compare_runs, load_judgments, parse_metric, read_qrels_file, to_markdown
from ragcun.evaluation.run_files import format_trec_qrels, format_trec_run


def _judged(n_queries=40, n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(n_docs, 3, replace=False)}
             for i in range(n_queries)}
    return qrels, [f"d{j}" for j in range(n_docs)]


def _run(qrels, docs, skill: float, seed: int) -> dict[str, dict[str, float]]:
    """Scores that rank judged documents higher the more ``skill``."""
    rng = np.random.default_rng(seed)
    return {q: {d: float(rng.normal() + skill * judged.get(d, 0)) for d in docs} for q, judged in qrels.items()}


@pytest.fixture()
def runs(tmp_path):
    qrels, docs = _judged()
    paths = []
    for name, skill, seed in (("a", 0.5, 1), ("b", 1.0, 2), ("c", 0.7, 3)):
        path = tmp_path / f"{name}.trec"
        path.write_text(format_trec_run(_run(qrels, docs, skill, seed)))
        paths.append(path)
    (tmp_path / "test.qrels").write_text(format_trec_qrels(qrels))
    return qrels, paths


def test_the_paired_t_test_is_scipys_on_the_per_query_values(runs):
    qrels, (a, b, c) = runs
    report = compare_runs([a, b, c], qrels, metric="NDCG@10", resamples=2000)
    per_query = {row["run"]: row["per_query"] for row in report["runs"]}
    qids = sorted(qrels)
    from ragcun.evaluation.run_files import read_trec_run

    for path in (a, b, c):  # the per-query values are beir_eval's scorer's
        expected = per_query_scores(qrels, read_trec_run(path), [10])
        assert per_query[path.name] == {q: expected[q]["NDCG@10"] for q in qids}
    base = np.array([per_query["a.trec"][q] for q in qids])
    for comparison in report["comparisons"]:
        other = np.array([per_query[comparison["run"]][q] for q in qids])
        assert comparison["p"] == pytest.approx(scipy.stats.ttest_rel(base, other).pvalue, abs=1e-9)
        assert comparison["diff"] == pytest.approx(float((other - base).mean()), abs=1e-12)
        low, high = comparison["ci95"]
        assert low <= comparison["diff"] <= high
    holm = [c["p_holm"] for c in report["comparisons"]]
    assert all(h >= c["p"] for h, c in zip(holm, report["comparisons"]))


def test_it_uses_the_ablations_statistics(runs):
    """The same functions as the ablation report's query-level test (ragcun.stats.paired), not a copy."""
    import ragcun.ablation.compare as ablation
    import ragcun.stats.paired as paired

    assert ablation.paired_test is paired.paired_test and ablation.bootstrap_interval is paired.bootstrap_interval
    qrels, (a, b, _) = runs
    report = compare_runs([a, b], qrels, resamples=2000, seed=7)
    qids = sorted(qrels)
    x = np.array([report["runs"][0]["per_query"][q] for q in qids])
    y = np.array([report["runs"][1]["per_query"][q] for q in qids])
    assert report["comparisons"][0]["ci95"] == list(paired.bootstrap_interval(y - x, resamples=2000, seed=7))


def test_the_command_prints_a_table_conditional_on_the_runs(runs, tmp_path):
    qrels, (a, b, c) = runs
    result = CliRunner().invoke(build_cli(), ["compare", str(a), str(b), str(c),
                                              "--qrels", str(tmp_path / "test.qrels"),
                                              "--resamples", "500", "--output", str(tmp_path / "cmp.json")],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Conditional on these runs" in text and "not whether the recipes" in text
    assert "a.trec (baseline)" in text and "p (Holm)" in text and "better / worse" in text
    narrow = CliRunner().invoke(build_cli(), ["compare", str(a), str(b), str(c),
                                              "--qrels", str(tmp_path / "test.qrels"), "--resamples", "500"],
                                env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.output.splitlines()) <= 80, narrow.output
    assert "b.trec: NDCG@10" in narrow.output  # one block per run: the names whole
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["metric"] == "NDCG@10" and len(saved["runs"][0]["per_query"]) == len(qrels)
    as_json = CliRunner().invoke(build_cli(), ["compare", str(a), str(b), "--qrels", str(tmp_path / "test.qrels"),
                                               "--metric", "recall@100", "--baseline", "2", "--format", "json"])
    report = json.loads(as_json.output)
    assert report["metric"] == "Recall@100" and report["baseline"] == "b.trec" and "per_query" not in report["runs"][0]


def test_markdown_marks_the_baseline_and_says_what_was_left_out(runs):
    qrels, (a, b, _) = runs
    fewer = {q: docs for q, docs in list(qrels.items())[:10]}
    report = compare_runs([a, b], fewer, resamples=500)
    text = to_markdown(report)
    assert "| `a.trec` (baseline) |" in text and "p (Holm)" not in text
    assert "30 queries the qrels do not judge (left out)" in text


def test_qrels_from_a_beir_dataset_and_its_files(data_dir, tmp_path):
    from ragcun.data.beir import load_beir

    qrels, name = load_judgments("nq-utd", data_dir)
    assert name == "nq-utd:test" and qrels == load_beir(data_dir / "nq-utd", "test").qrels
    tsv = data_dir / "nq-utd" / "qrels" / "test.tsv"
    from ragcun.data.beir import load_qrels

    assert read_qrels_file(tsv) == load_qrels(tsv)  # BEIR's TSV, header and all
    (tmp_path / "t.qrels").write_text(format_trec_qrels(qrels))
    assert read_qrels_file(tmp_path / "t.qrels") == qrels
    with pytest.raises(ValueError, match=r"splits of nq-utd"):
        load_judgments("nq-utd:nosuchsplit", data_dir)


def test_bad_input(runs, tmp_path):
    qrels, (a, b, _) = runs
    with pytest.raises(ValueError, match="FAMILY@K"):
        parse_metric("ndcg")
    with pytest.raises(ValueError, match="at least two runs"):
        compare_runs([a], qrels)
    other = {"x1": {"d1": 1}}
    with pytest.raises(ValueError, match="another dataset or split"):
        compare_runs([a, b], other)
    result = CliRunner().invoke(build_cli(), ["compare", str(a), str(b), "--qrels", str(tmp_path / "test.qrels"),
                                              "--baseline", "3"])
    assert result.exit_code == 2 and "there are 2 runs" in result.output
