"""``ragcun export --to sentence-transformers``: SentenceTransformer(OUT) reproduces the ragcun model, what it
cannot represent is refused, the folder is written atomically, and its model card says what the run measured.

Fast tests use the tiny random BERT; the ``slow`` ones the real embedded all-MiniLM-L6-v2 and nq-utd.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ragcun
from ragcun.cli.root import build_cli
from ragcun.embedding import Embedding
from ragcun.model import EmbeddingModel

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["Gaussian embeddings are not normalized.", "short", "", "  leading and trailing spaces  ",
         "Euclidean distance ranks documents.", "a much longer text " * 40, "SIGReg pushes toward N(0, I)."]
# (head, distance, settings, similarity_fn_name)
HEADS = [
    ("identity", "cosine", {}, "cosine"),
    ("linear", "dot", {"head": {"linear": {"out_dim": 12}}}, "dot"),
    ("linear", "cosine", {"head": {"linear": {"out_dim": 12, "normalize": True}}}, "cosine"),
    ("gaussian", "euclidean", {"head": {"gaussian": {"out_dim": 16}}}, "euclidean"),
    ("gaussian", "sqeuclidean", {"head": {"gaussian": {"out_dim": 16}}}, "euclidean"),
]


def st_load(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def distinct_weights(model: EmbeddingModel) -> EmbeddingModel:
    """Nonzero biases everywhere, so an export that dropped one would show."""
    with torch.no_grad():
        for name, p in model.head.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return model


def saved(tmp_path, encoder, head, distance, settings=None, name="run", **kwargs) -> Path:
    model = distinct_weights(EmbeddingModel.build(encoder, head, distance, settings, **kwargs))
    return model.save_pretrained(tmp_path / name)


def invoke(*args):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# -- embeddings and similarity -----------------------------------------------------------------------------
@pytest.mark.parametrize("head, distance, settings, similarity", HEADS,
                         ids=[f"{h}-{d}" + ("-normalized" if "normalize" in str(s) else "") for h, d, s, _ in HEADS])
def test_sentence_transformers_reproduces_the_model(tiny_model_dir, tmp_path, head, distance, settings, similarity):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", head, distance, settings)
    result = ragcun.export(run, tmp_path / "out")
    assert result.path == tmp_path / "out" and result.similarity == similarity

    st = st_load(result.path)
    ours = ragcun.load(run)
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    assert theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours.encode(TEXTS), atol=1e-5)
    assert st.similarity_fn_name == similarity
    # the folder's similarity ranks every document as the model's own distance does
    emb = Embedding(torch.from_numpy(ours.encode(TEXTS)))
    ranked_ours = ours.distance.similarity(emb, emb).argsort(dim=1, descending=True, stable=True)
    ranked_st = st.similarity(theirs, theirs).argsort(dim=1, descending=True, stable=True)
    assert torch.equal(ranked_ours, ranked_st)

    modules = json.loads((result.path / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    assert kinds[:2] == ["Transformer", "Pooling"] and set(kinds[2:]) <= {"Dense", "Normalize"}
    if head != "identity":
        dense = json.loads((result.path / "2_Dense" / "config.json").read_text())
        assert dense["activation_function"] == "torch.nn.modules.linear.Identity" and dense["bias"] is True
    weights = [p.name for p in result.path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert weights == [] and (result.path / "model.safetensors").is_file()
    assert not (result.path / "ragcun.json").exists()  # a sentence-transformers folder, not a ragcun checkpoint
    assert leftovers(tmp_path) == []


def test_prefixes_become_prompts(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "gaussian", "euclidean", {"head": {"gaussian": {"out_dim": 8}}},
                query_prefix="query: ", document_prefix="passage: ")
    st = st_load(ragcun.export(run, tmp_path / "out").path)
    model = ragcun.load(run)
    np.testing.assert_allclose(st.encode(TEXTS[:3], prompt_name="query"),
                               model.encode(["query: " + t for t in TEXTS[:3]]), atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS[:3], prompt_name="document"),
                               model.encode(["passage: " + t for t in TEXTS[:3]]), atol=1e-5)


def test_round_trip_through_hf(tiny_model_dir, tmp_path):
    """``hf:OUT`` loads the export back with its Dense head and similarity, and survives a ragcun checkpoint."""
    from ragcun.distances.euclidean import EuclideanDistance
    from ragcun.resolve import resolve_model

    run = saved(tmp_path, f"hf:{tiny_model_dir}", "gaussian", "euclidean", {"head": {"gaussian": {"out_dim": 16}}})
    out = ragcun.export(run, tmp_path / "out").path
    back = resolve_model(f"hf:{out}")
    assert isinstance(back.distance, EuclideanDistance) and back.dim == 16
    expected = ragcun.load(run).encode(TEXTS)
    np.testing.assert_allclose(back.encode(TEXTS), expected, atol=1e-6)
    # a ragcun checkpoint of the re-loaded model keeps the Dense (its config copied, its weights in safetensors)
    again = ragcun.load(back.save_pretrained(tmp_path / "again"))
    np.testing.assert_allclose(again.encode(TEXTS), expected, atol=1e-6)
    # and exporting that once more gives the same folder contents
    np.testing.assert_allclose(st_load(ragcun.export(tmp_path / "again", tmp_path / "out2").path).encode(TEXTS),
                               expected, atol=1e-5)


def test_base_model_exports_as_its_authors_use_it(tiny_model_dir, tmp_path):
    result = ragcun.export(f"hf:{tiny_model_dir}", tmp_path / "out")
    assert result.similarity == "cosine" and result.pipeline == "Transformer -> Pooling(mean)"
    np.testing.assert_allclose(st_load(result.path).encode(TEXTS), st_load(tiny_model_dir).encode(TEXTS), atol=1e-6)
    assert "not from a run folder" in (result.path / "README.md").read_text()


def test_model_method_and_cli_json(tiny_model_dir, tmp_path):
    model = distinct_weights(EmbeddingModel.build(f"hf:{tiny_model_dir}", "linear", "dot"))
    result = ragcun.export(model, tmp_path / "api")
    np.testing.assert_allclose(st_load(result.path).encode(TEXTS), model.encode(TEXTS), atol=1e-5)
    run = model.save_pretrained(tmp_path / "run")
    cli = invoke("export", run, tmp_path / "cli", "--format", "json")
    assert cli.exit_code == 0, cli.output
    summary = json.loads(cli.output)
    assert summary["similarity_fn_name"] == "dot" and summary["dim"] == 32 and summary["lost"] is None


# -- what sentence-transformers cannot represent --------------------------------------------------------------
LOGVAR = {"head": {"gaussian": {"out_dim": 8, "logvar": True}}}


@pytest.mark.parametrize("distance", ["wasserstein", "expected-sqeuclidean"])
def test_logvar_distances_are_refused(tiny_model_dir, tmp_path, distance):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "gaussian", distance, LOGVAR)
    with pytest.raises(ValueError, match="log-variance.*--mean-only"):
        ragcun.export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    result = invoke("export", run, tmp_path / "out")
    assert result.exit_code == 1 and "--mean-only" in result.output and "Traceback" not in result.output


def test_mean_only_says_what_is_lost(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "gaussian", "wasserstein", LOGVAR)
    result = invoke("export", run, tmp_path / "out", "--mean-only")
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "log-variance" in result.output
    out = tmp_path / "out"
    st = st_load(out)
    assert st.similarity_fn_name == "euclidean"
    np.testing.assert_allclose(st.encode(TEXTS), ragcun.load(run).encode(TEXTS), atol=1e-5)  # the means
    info = json.loads((out / "ragcun_export.json").read_text())
    assert info["mean_only"] is True and "sigma" in info["lost"]
    card = (out / "README.md").read_text()
    assert "**Warning:** mean-only export" in card and "wasserstein" in card


def test_logvar_head_with_a_mean_distance_exports_the_mean(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "gaussian", "euclidean", LOGVAR)
    result = ragcun.export(run, tmp_path / "out")
    assert result.lost is None and any("log-variance output is not exported" in n for n in result.notes)
    np.testing.assert_allclose(st_load(result.path).encode(TEXTS), ragcun.load(run).encode(TEXTS), atol=1e-5)


# -- the protocol for other components ------------------------------------------------------------------------
class AffineHead(torch.nn.Module):
    """A head ragcun does not know, exporting through ``affine()``: ``2 x - 1`` (a scaled, shifted copy)."""

    provides = frozenset({"mean"})

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = in_dim

    def forward(self, x):
        return Embedding(2 * x - 1)

    def affine(self):
        return 2 * torch.eye(self.in_dim), -torch.ones(self.in_dim)

    def get_config(self):
        return {"in_dim": self.in_dim}


class WrongHead(AffineHead):
    """Declares modules that do not compute its output: the export must fail, not write a wrong folder."""

    def sentence_transformers_modules(self):
        from ragcun.exporters.st_modules import Dense

        return [Dense(torch.eye(self.in_dim))]


def _custom_model(tiny_model_dir, head_cls):
    from ragcun.distances.euclidean import EuclideanDistance
    from ragcun.encoders.hf import HFEncoder

    encoder = HFEncoder(str(tiny_model_dir))
    return EmbeddingModel(encoder, head_cls(encoder.dim), EuclideanDistance())


def test_affine_protocol(tiny_model_dir, tmp_path):
    model = _custom_model(tiny_model_dir, AffineHead)
    result = ragcun.export(model, tmp_path / "out")
    assert result.pipeline.endswith("Dense(32->32, Identity)")
    np.testing.assert_allclose(st_load(result.path).encode(TEXTS), model.encode(TEXTS), atol=1e-5)


def test_wrong_declaration_fails_and_writes_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="do not reproduce the head"):
        ragcun.export(_custom_model(tiny_model_dir, WrongHead), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_activation_that_would_not_survive_is_refused():
    from ragcun.exporters.st_modules import activation_path

    assert activation_path(torch.nn.GELU()) == "torch.nn.modules.activation.GELU"
    with pytest.raises(ValueError, match="non-default arguments"):
        activation_path(torch.nn.GELU(approximate="tanh"))


# -- the output folder and the command line -------------------------------------------------------------------
def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "identity", "cosine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    result = invoke("export", run, out)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output and (out / "keep.txt").exists()
    result = invoke("export", run, out, "--overwrite")  # someone's folder: not replaced even then (issue 28)
    assert result.exit_code == 1 and "no export wrote it" in result.output, result.output
    assert (out / "keep.txt").read_text() == "someone's file" and not (out / "modules.json").exists()
    (tmp_path / "empty").mkdir()  # an empty folder is fine without --overwrite
    assert invoke("export", run, tmp_path / "empty").exit_code == 0
    (tmp_path / "empty" / "stale.txt").write_text("left by the earlier export's user")
    result = invoke("export", run, tmp_path / "empty", "--overwrite")  # an earlier export: replaced
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "empty" / "stale.txt").exists() and (tmp_path / "empty" / "modules.json").is_file()
    assert leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_model(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "identity", "cosine")
    other = saved(tmp_path, f"hf:{tiny_model_dir}", "identity", "cosine", name="other")
    result = invoke("export", run, run, "--overwrite")
    assert result.exit_code == 1 and "holds the model being exported" in result.output
    result = invoke("export", run, other, "--overwrite")
    assert result.exit_code == 1 and "ragcun checkpoint" in result.output
    assert (other / "ragcun.json").is_file()


def test_bad_input_is_a_clean_error(tmp_path):
    for args, message in [((tmp_path / "missing", tmp_path / "out"), "no such folder"),
                          ((tmp_path, tmp_path / "out"), "neither a ragcun checkpoint"),
                          (("no-such-encoder", tmp_path / "out"), "ragcun list encoders"),
                          (("all-minilm-l6-v2", tmp_path / "out", "--to", "onnx"), "Invalid value for '--to'")]:
        result = invoke("export", *args)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    result = invoke("export", tmp_path / "run", tmp_path / "out")
    assert result.exit_code == 1 and "no final model yet" in result.output


def test_export_help_does_not_import_torch():
    code = ("import sys; sys.argv = ['ragcun', 'export', '--help']\nfrom ragcun.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nimport json; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "RUN_OR_MODEL" in out.stdout
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "torch" not in modules and "transformers" not in modules


# -- the model card -----------------------------------------------------------------------------------------
def _fake_run(tiny_model_dir, tmp_path) -> Path:
    """A quickstart-shaped run: RUN/model (checkpoint + train_config.json), RUN/eval.json, RUN/isotropy/."""
    from ragcun.training.config import TrainConfig

    model_dir = saved(tmp_path / "run", f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                      {"head": {"gaussian": {"out_dim": 16}}}, name="model")
    TrainConfig(output_dir="run/model", train_data="beir:scifact:train", encoder=f"hf:{tiny_model_dir}",
                data_dir="/data/beir", steps=4, batch_size=8, lr=5e-5, dtype="bfloat16", show_progress=False,
                max_grad_norm=None, settings={"head": {"gaussian": {"out_dim": 16}}}).save(model_dir)
    metrics = {"NDCG@10": 0.61234, "MRR@10": 0.5, "Recall@10": 0.7, "Recall@100": 0.9, "MAP@10": 0.55, "P@10": 0.1}
    report = {"model": "run/model", "datasets": {"scifact": metrics},
              "settings": {"k_values": [1, 10, 100], "split": "test", "distance": "euclidean", "dtype": "bfloat16"}}
    (tmp_path / "run" / "eval.json").write_text(json.dumps(report))
    other = {**report, "model": "all-minilm-l6-v2", "datasets": {"nfcorpus": metrics}}  # another model's report
    (tmp_path / "run" / "base-eval.json").write_text(json.dumps(other))
    metric = {"key": "isoscore", "label": "IsoScore", "value": 0.123, "n": 500, "vectors": "raw"}
    iso = {"dataset": {"dataset": "scifact"}, "settings": {},
           "models": [{"label": "all-minilm-l6-v2", "spec": "all-minilm-l6-v2",
                       "metrics": {"documents": {"isoscore": {**metric, "value": 0.05}}}},
                      {"label": "run/model", "spec": "run/model", "metrics": {"documents": {"isoscore": metric}}}]}
    (tmp_path / "run" / "isotropy").mkdir()
    (tmp_path / "run" / "isotropy" / "report.json").write_text(json.dumps(iso))
    return model_dir


def test_model_card(tiny_model_dir, tmp_path, monkeypatch):
    import yaml

    model_dir = _fake_run(tiny_model_dir, tmp_path)
    result = ragcun.export(model_dir, tmp_path / "exported")
    assert [p.name for p, _ in result.run.evals] == ["eval.json"]  # not the base model's report
    card = (result.path / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["datasets"] == ["BeIR/scifact"] and "ndcg_at_10" in meta["metrics"]
    assert "sentence-transformers" in meta["tags"] and "base_model" not in meta  # a local tiny model
    [entry] = meta["model-index"][0]["results"]
    assert entry["dataset"]["type"] == "BeIR/scifact" and entry["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in entry["metrics"]}
    assert values["ndcg_at_10"] == pytest.approx(0.61234)
    assert "0.6123" in body and "| IsoScore [raw, n=500] | 0.05 | 0.123 |" in body and "(this model)" in body
    assert (result.path / "ragcun_train_config.json").is_file()
    assert "ragcun train --config ragcun_train_config.json" in body

    # the command in the card gives back the run's settings
    from ragcun.cli.train_cmd import resolve_config, train_command
    from ragcun.training.config import TrainConfig

    command = next(line for line in body.splitlines() if line.startswith("ragcun train "))
    monkeypatch.delenv("RAGCUN_DATA", raising=False)
    ctx = train_command.make_context("train", shlex.split(command)[2:])
    assert resolve_config(ctx).to_dict() == TrainConfig.load(model_dir).to_dict()


def test_reports_and_settings_are_matched_to_the_model(tmp_path):
    from ragcun.exporters.run_reports import refers_to, run_folder

    checkpoint = tmp_path / "runs" / "a" / "checkpoints" / "step-40" / "model"
    checkpoint.mkdir(parents=True)
    assert run_folder(checkpoint) == (tmp_path / "runs" / "a").resolve()  # its train_config.json lives there
    run = tmp_path / "runs" / "a"
    assert refers_to("runs/a", run) and refers_to(str(run), run) and refers_to("./runs/a", run)
    assert not refers_to("runs/b", run) and not refers_to("all-minilm-l6-v2", run) and not refers_to("hf:runs/a", run)


def test_model_card_says_what_is_missing(tiny_model_dir, tmp_path):
    run = saved(tmp_path, f"hf:{tiny_model_dir}", "identity", "cosine")
    card = (ragcun.export(run, tmp_path / "out").path / "README.md").read_text()
    assert "No `ragcun eval beir` report" in card and "No `train_config.json`" in card
    assert "No `ragcun isotropy report`" in card


# -- the real embedded model (slow) -------------------------------------------------------------------------
def real_texts(data_dir, n=64):
    texts = []
    with open(data_dir / "nq-utd" / "corpus.jsonl") as fh:
        for line, _ in zip(fh, range(n)):
            row = json.loads(line)
            texts.append(((row.get("title") or "") + " " + row["text"]).strip())
    with open(data_dir / "nq-utd" / "queries.jsonl") as fh:
        texts += [json.loads(line)["text"] for line, _ in zip(fh, range(16))]
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("head, distance", [("identity", "cosine"), ("linear", "dot"), ("gaussian", "euclidean")])
def test_real_model_export_matches(data_dir, tmp_path, head, distance):
    texts = real_texts(data_dir)
    run = saved(tmp_path, "all-minilm-l6-v2", head, distance)
    result = ragcun.export(run, tmp_path / "out")
    ours = ragcun.load(run).encode(texts, batch_size=16)
    theirs = st_load(result.path).encode(texts, batch_size=16, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    meta = (result.path / "README.md").read_text().split("---\n")[1]
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in meta
    assert "Normalize" in result.pipeline  # MiniLM's own Normalize, before the head


@pytest.mark.slow
def test_nq_utd_ragcun_equals_sentence_transformers_and_beir(data_dir, tmp_path):
    """NDCG@10 (and every other metric) of ``ragcun eval beir`` on the run equals sentence-transformers +
    beir's exact search on the export, scored with the folder's own similarity; ``hf:OUT`` reproduces it.

    beir's DenseRetrievalExactSearch knows only ``cos_sim`` and ``dot``; for the euclidean folder we register
    the loaded model's own ``similarity`` (what ``similarity_fn_name`` selects: negative L2 distance) as
    its score function, so beir's search loop, top-k and metrics run unchanged."""
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from ragcun.evaluation.beir_eval import evaluate_beir

    k_values = [1, 3, 5, 10, 100]
    model = ragcun.build_model("all-minilm-l6-v2", head="gaussian", distance="euclidean")
    run = model.save_pretrained(tmp_path / "run")
    out = ragcun.export(run, tmp_path / "out").path
    kwargs = dict(data_dir=data_dir, k=100, batch_size=32, download=False, device="cpu", show_progress=False)
    ours = evaluate_beir(str(run), "nq-utd", **kwargs)["datasets"]["nq-utd"]

    corpus, queries, qrels = GenericDataLoader(str(data_dir / "nq-utd")).load("test")
    st = SentenceBERT(str(out), device="cpu", local_files_only=True)
    similarity = st.q_model.similarity_fn_name
    assert similarity == "euclidean"
    search = DenseRetrievalExactSearch(st, batch_size=32, show_progress_bar=False)
    search.score_functions[similarity] = st.q_model.similarity
    search.score_function_desc[similarity] = f"sentence-transformers {similarity}"
    retriever = EvaluateRetrieval(search, k_values=k_values, score_function=similarity)
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, precision = retriever.evaluate(qrels, results, k_values)
    theirs = {**ndcg, **_map, **recall, **precision}
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-4), name

    back = evaluate_beir(f"hf:{out}", "nq-utd", **kwargs)["datasets"]["nq-utd"]
    for name, value in ours.items():
        assert back[name] == pytest.approx(value, abs=1e-4), name
    print(f"\nnq-utd NDCG@10: ragcun {ours['NDCG@10']:.5f}, sentence-transformers + beir {theirs['NDCG@10']:.5f}, "
          f"hf:OUT {back['NDCG@10']:.5f}")
