"""`ragcun isotropy report` end to end: the real embedded model on nq-utd, the files, the CLI, the errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.diagnostics import embedding_diagnostics, isotropy_report, report_rows
from ragcun.diagnostics.report import NORMALIZED_KEYS, PLOT_FILES, sample_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def minilm_report(data_dir, minilm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("isotropy-report")
    report = isotropy_report([minilm_model], "nq-utd", data_dir, sample=120, query_sample=20, seed=0,
                             output_dir=out, num_slices=256, labels=["all-minilm-l6-v2"], progress=False)
    return report, out


@pytest.mark.slow
def test_report_writes_every_file(minilm_report):
    report, out = minilm_report
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.json", "report.html", *PLOT_FILES.values()])
    for name in PLOT_FILES.values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(PLOT_FILES)  # self-contained
    assert "http://" not in page and "https://" not in page
    assert "partition isotropy I(W) [l2, n=120]" in page
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))


@pytest.mark.slow
def test_report_numbers_are_labelled_and_plausible(minilm_report):
    report, _ = minilm_report
    ds = report["dataset"]
    assert (ds["name"], ds["documents"], ds["queries"], ds["corpus_size"]) == ("nq-utd", 120, 20, 800)
    (model,) = report["models"]
    assert (model["dim"], model["head"]) == (384, "identity")
    docs = model["metrics"]["documents"]
    for group, metrics in model["metrics"].items():
        for key, m in metrics.items():
            assert m["n"] == {"documents": 120, "queries": 20, "pairs": ds["pairs"]}[group]
            assert m["normalized"] == (key in NORMALIZED_KEYS)
            assert m["vectors"] in report["vectors"]
    # MiniLM is L2-normalized: unit norms, so its raw and l2 partition isotropy coincide
    assert docs["norm_mean"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert docs["partition_isotropy_raw"]["value"] == pytest.approx(docs["partition_isotropy_l2"]["value"], rel=1e-5)
    assert 0.0 < docs["average_cosine"]["value"] < 0.5
    assert 0.0 < docs["isoscore"]["value"] < (120 - 2) / (384 - 1) + 1e-9  # n < D bounds it
    assert -4.0 < docs["uniformity"]["value"] < 0.0
    assert 0.0 < model["metrics"]["pairs"]["alignment"]["value"] < 2.0
    # unit vectors in 384 dims look collapsed to SIGReg: far above the Gaussian floor
    assert docs["sigreg_raw"]["value"] > 10 * docs["sigreg_gaussian_floor"]["value"]
    rows = report_rows(report)
    assert ("documents", "IsoScore [raw, n=120]", [f"{docs['isoscore']['value']:.4g}"]) in rows


@pytest.mark.slow
def test_cli_report_with_fresh_gaussian_head(data_dir, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(build_cli(), [
        "isotropy", "report", "--model", "all-minilm-l6-v2+gaussian", "--dataset", "nq-utd",
        "--data-dir", str(data_dir), "--sample", "60", "--query-sample", "8", "--num-slices", "64",
        "--output-dir", str(out), "--no-plots", "--set", "head.gaussian.out_dim=96", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (model,) = report["models"]
    assert (model["head"], model["dim"], model["spec"]) == ("gaussian", 96, "all-minilm-l6-v2+gaussian")
    assert model["metrics"]["documents"]["isoscore"]["n"] == 60
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_cli_table_with_two_models(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    from ragcun import console

    monkeypatch.setattr(console.stdout, "width", 200)
    out = tmp_path / "table"
    tiny = f"hf:{tiny_model_dir}"
    result = CliRunner().invoke(build_cli(), [
        "isotropy", "report", "--model", tiny, "--model", f"{tiny}+gaussian", "--dataset", "nq-utd",
        "--data-dir", str(data_dir), "--sample", "40", "--query-sample", "5", "--num-slices", "32",
        "--output-dir", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "partition isotropy I(W) [raw, n=40]" in text and "partition isotropy I(W) [l2, n=40]" in text
    assert "alignment" in text and "metric [vectors, n]" in text
    assert "identity head, D=32" in text and "gaussian head, D=512" in text
    assert "report.json" in text and sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_fresh_head_is_seeded(tiny_model_dir):
    from ragcun.resolve import resolve_model

    spec = f"{tiny_model_dir}+gaussian"  # a plain folder works too
    a, b, c = (resolve_model(spec, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.head.mean.weight, b.head.mean.weight)
    assert not torch.equal(a.head.mean.weight, c.head.mean.weight)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "no-such-set"], "dataset 'no-such-set' not found"),
    (["--dataset", "nq-utd", "--split", "dev"], "split file is missing"),
    (["--dataset", "nq-utd", "--model", "all-minilm-l6-v2+nohead"], "nohead"),
])
def test_cli_errors_are_one_line(data_dir, tmp_path, args, message):
    base = ["isotropy", "report", "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    if "--model" not in args:
        base += ["--model", "all-minilm-l6-v2"]
    result = CliRunner().invoke(build_cli(), base + args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_cli_missing_data_dir(tmp_path):
    result = CliRunner().invoke(build_cli(), ["isotropy", "report", "--model", "all-minilm-l6-v2", "--dataset",
                                              "scifact", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such folder" in result.output and len(result.output.strip().splitlines()) == 1


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from ragcun.cli.root import build_cli; "
            "r = CliRunner().invoke(build_cli(), ['isotropy', 'report', '--help']); "
            "assert r.exit_code == 0 and 'ENCODER+HEAD' in r.output, r.output; "
            "assert 'torch' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_sample_is_seeded_and_covers_pairs(data_dir):
    a = sample_dataset("nq-utd", data_dir, sample=50, query_sample=10, seed=3)
    b = sample_dataset("nq-utd", data_dir, sample=50, query_sample=10, seed=3)
    c = sample_dataset("nq-utd", data_dir, sample=50, query_sample=10, seed=4)
    assert a.doc_ids == b.doc_ids and a.query_ids == b.query_ids
    assert a.doc_ids[:50] != c.doc_ids[:50]
    assert a.sampled_docs == 50 and len(a.query_ids) == 10 and len(set(a.doc_ids)) == len(a.doc_ids)
    assert 0 < len(a.pair_query_index) <= 50
    assert max(a.pair_doc_index) < len(a.doc_texts) and max(a.pair_query_index) < 10


def test_embedding_diagnostics_on_existing_embeddings():
    from ragcun.embedding import Embedding

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen, requires_grad=True)
    out = embedding_diagnostics(Embedding(x * 1.0), positives=x.detach() + 0.1, num_slices=64, prefix="iso/")
    assert out["iso/n"] == 512 and out["iso/dim"] == 16
    assert all(isinstance(v, float) for v in out.values())
    assert out["iso/isoscore"] > 0.9 and abs(out["iso/average_cosine"]) < 0.05
    assert out["iso/alignment"] < 0.1
    assert out["iso/sigreg_raw"] == pytest.approx(out["iso/sigreg_gaussian_floor"], rel=0.6)
    with pytest.raises(ValueError):
        embedding_diagnostics(torch.zeros(1, 4))


def test_the_verdict_reads_sigreg_against_its_floor_and_names_unit_vectors():
    from ragcun.diagnostics.verdict import isotropy_verdict

    line = isotropy_verdict({"sigreg_raw": 800.0, "sigreg_gaussian_floor": 1.05, "effective_rank_ratio": 0.5,
                             "norm_mean": 1.0, "isoscore": 0.2}, 384)
    assert "762x its Gaussian floor" in line and "very far from N(0, I)" in line and "unit vectors" in line
    close = isotropy_verdict({"sigreg_raw": 1.1, "sigreg_gaussian_floor": 1.05, "norm_mean": 22.0}, 512)
    assert "as close to N(0, I) as an exact Gaussian sample" in close and "mean norm 22" in close


def test_isotropy_curves_plot_one_or_several_runs(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from _training_helpers import tiny_config, write_pairs
    from ragcun.cli.root import build_cli
    from ragcun.diagnostics.curves import read_curves
    from ragcun import train

    data = write_pairs(tmp_path / "train.jsonl", n=24)
    runs = []
    for loss in ("contrastive", "contrastive+isotropy"):
        run = tmp_path / loss.replace("+", "-")
        train(tiny_config(tiny_model_dir, run, data, loss=loss, steps=4, diagnostics_every=2, save_every=4))
        runs.append(str(run))
    curves = read_curves(runs[1])
    assert curves["diagnostics"]["step"] == [2, 4] and len(curves["diagnostics"]["sigreg_raw"]) == 2
    assert curves["steps"] == [1, 2, 3, 4] and "isotropy" in curves["terms"]
    result = CliRunner().invoke(build_cli(), ["isotropy", "curves", *runs, "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").stat().st_size > 1000
    no_diag = tmp_path / "plain"
    train(tiny_config(tiny_model_dir, no_diag, data, steps=2, save_every=2))
    result = CliRunner().invoke(build_cli(), ["isotropy", "curves", str(no_diag)])
    assert result.exit_code == 1 and "--diagnostics-every" in result.output


# -- issue 29: 80 columns, the words of the output ---------------------------------------------------------------
def _synthetic_report(labels) -> dict:
    from ragcun.diagnostics.report import pair_metrics, population_metrics
    from ragcun.diagnostics.verdict import isotropy_verdict

    gen = torch.Generator().manual_seed(0)
    docs, queries = torch.randn(40, 16, generator=gen, dtype=torch.float64), torch.randn(12, 16, generator=gen,
                                                                                         dtype=torch.float64)
    metrics = {"documents": population_metrics(docs, num_slices=16), "pairs": pair_metrics(queries, docs[:12]),
               "queries": population_metrics(queries, num_slices=16)}
    verdict = isotropy_verdict({"sigreg_raw": 800.0, "sigreg_gaussian_floor": 1.05, "norm_mean": 1.0}, 16)
    models = [{"label": label, "spec": label, "head": head, "dim": 16, "verdict": verdict,
               "metrics": {g: {m.key: m.as_dict() for m in ms} for g, ms in metrics.items()}}
              for label, head in labels]
    dataset = {"name": "scifact", "split": "test", "seed": 0, "corpus_size": 5183, "judged_queries": 300,
               "documents": 400, "queries": 300, "pairs": 339, "extra_relevant_documents": 140}
    return {"dataset": dataset, "models": models, "files": {"json": "report.json", "html": "report.html"},
            "output_dir": "isotropy-report-scifact"}


@pytest.mark.parametrize("n_models", [1, 2, 3])
def test_the_table_fits_80_columns_and_breaks_no_word(monkeypatch, n_models):
    import io

    from rich.console import Console

    from ragcun import console
    from ragcun.cli.isotropy_cmd import print_report_table

    labels = [("all-minilm-l6-v2", "identity"), ("all-minilm-l6-v2+gaussian", "gaussian"),
              ("runs/scifact-isotropy-seed-1", "gaussian")][:n_models]
    report = _synthetic_report(labels)
    recording = Console(width=80, file=io.StringIO(), record=True)
    monkeypatch.setattr(console, "stdout", recording)
    print_report_table(report)
    text = recording.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]

    def words(value: str) -> set[str]:  # "label:" ends a legend or verdict line's name
        return {w.rstrip(":") for w in value.replace("│", " ").split()}

    expected = words(" ".join(label for _, label, _ in report_rows(report)))
    expected |= words(" ".join(f"{m['label']} {m['verdict']}" for m in report["models"]))
    assert expected <= words(text), sorted(expected - words(text))


def test_the_output_explains_the_documents_beyond_the_sample(monkeypatch):
    import io

    from rich.console import Console

    from ragcun import console
    from ragcun.cli.isotropy_cmd import print_report_table

    recording = Console(width=200, file=io.StringIO(), record=True)
    monkeypatch.setattr(console, "stdout", recording)
    print_report_table(_synthetic_report([("m", "identity")]))
    text = " ".join(recording.export_text().split())
    assert "sample: 400 of 5183 documents, 300 of 300 judged queries, 339 query / relevant-document pairs" in text
    assert "140 relevant documents of those pairs that are not in the sample were embedded too" in text
    assert "(540 documents embedded in all)" in text


def test_the_verdict_does_not_say_collapsed_to_the_gaussian():
    from ragcun.diagnostics.verdict import isotropy_verdict

    line = isotropy_verdict({"sigreg_raw": 800.0, "sigreg_gaussian_floor": 1.05}, 384)
    assert "collapsed to it" not in line and "much narrower than unit spread" in line
