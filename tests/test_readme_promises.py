"""Promises of the README (and of the ``--help`` texts it points to) that no other test asserted: each test below
checks exactly what is promised, on a tiny random model where the promise does not depend on the real one, so
breaking the feature breaks the test.

Already covered elsewhere, and not repeated here: ``--max-grad-norm 0`` *parsing* to "no clipping"
(test_config_precedence.py::test_max_grad_norm_zero_is_no_clipping; here: the gradients really are not clipped),
``encode_queries``/``encode_corpus`` ranking like the distance
(test_model.py::test_beir_interface_ranks_like_the_distance; here: inside beir's own DenseRetrievalExactSearch)
and a plugin calling ``sys.exit`` on import listed by ``ragcun plugins --format json``
(test_plugins.py::test_help_survives_a_plugin_that_exits; here: one raising ImportError, in the table and the JSON,
with the rest of the CLI still working).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import write_beir, write_distribution, write_pairs
from click.testing import CliRunner

import ragcun
from ragcun.cli.root import build_cli

pytestmark = pytest.mark.usefixtures("single_thread")  # one torch thread, restored after the module

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "head.gaussian.out_dim=16", "--set", "loss.isotropy.num_slices=16"]


def invoke(*args):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def train_cli(model_dir, data, out, *extra):
    """``ragcun train`` on the tiny model, in this process (CliRunner), as tests/test_train_cli.py does."""
    result = invoke("train", "--encoder", f"hf:{model_dir}", *TINY, "--train-data", data, "--output-dir", out,
                    "--batch-size", "4", "--no-progress", "--seed", "0", *extra)
    assert result.exit_code == 0, result.output
    return result


def step_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# -- 1. --epochs ------------------------------------------------------------------------------------------
def test_epochs_run_whole_passes_over_the_data(tiny_model_dir, tmp_path):
    """``--epochs 2`` ("passes over the data, instead of --steps") on 26 pairs with batch 4: an epoch is the
    6 full batches (BatchStream drops an epoch's incomplete last batch, so every step has the same size), so
    the run takes 2 x 6 = 12 steps, 6 in each epoch, and ends having read 24 pairs of the second epoch."""
    from ragcun.training import checkpoint as ckpt

    pairs = write_pairs(tmp_path / "pairs.jsonl", 26)
    run = tmp_path / "run"
    result = train_cli(tiny_model_dir, pairs, run, "--epochs", "2", "--log-every", "1", "--save-every", "1000")
    assert "done: 12 steps" in result.output
    records = step_records(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["epoch"] for r in records] == [0] * 6 + [1] * 6
    state = json.loads((ckpt.latest_checkpoint(run).folder / "state.json").read_text())
    assert state["step"] == 12 and state["data"] == {"epoch": 1, "position": 24}


def test_fractional_epochs_round_up_to_whole_steps(tiny_model_dir, tmp_path):
    """``--epochs 1.5`` of 6 batches is ceil(9) = 9 steps, ``--epochs 0.4`` is ceil(2.4) = 3 (never 0)."""
    from ragcun.data.training import BatchStream, open_source
    from ragcun.training.config import TrainConfig
    from ragcun.training.loop import _total_steps

    pairs = write_pairs(tmp_path / "pairs.jsonl", 26)
    source = open_source(str(pairs))
    stream = BatchStream(source, 4)
    ctx = type("Ctx", (), {"world_size": 1})()
    for epochs, steps in [(1.5, 9), (0.4, 3), (1.0, 6)]:
        config = TrainConfig(output_dir=str(tmp_path / "x"), train_data=str(pairs), batch_size=4, epochs=epochs)
        assert _total_steps(config, stream, source, ctx) == steps, epochs


# -- 2. warmup and schedule -------------------------------------------------------------------------------
def expected_lrs(lr: float, total: int, warmup: int, schedule: str) -> list[float]:
    """The documented schedule: ``--warmup`` W steps rising linearly to the peak ``--lr`` (reached at step W),
    then ``--schedule`` over the remaining steps: constant, linear to 0, or a half cosine to 0."""
    out = []
    for step in range(1, total + 1):
        if step <= warmup:
            out.append(lr * step / warmup)
            continue
        progress = (step - 1 - warmup) / (total - warmup)
        out.append(lr * {"constant": 1.0, "linear": 1.0 - progress,
                         "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule])
    return out


@pytest.mark.parametrize("schedule, warmup_flag, warmup_steps", [
    ("linear", "0.3", 3),     # a fraction of the 10 steps
    ("cosine", "2", 2),       # a number of steps
    ("constant", "0.25", 2),  # round(0.25 x 10) = 2 (Python rounds half to even: 2.5 -> 2)
])
def test_learning_rate_follows_the_warmup_and_schedule(tiny_model_dir, tmp_path, schedule, warmup_flag, warmup_steps):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    run = tmp_path / "run"
    lr = 1e-3
    train_cli(tiny_model_dir, pairs, run, "--steps", "10", "--lr", str(lr), "--warmup", warmup_flag,
              "--schedule", schedule, "--log-every", "1", "--save-every", "1000")
    got = [r["lr"] for r in step_records(run)]
    assert got == pytest.approx(expected_lrs(lr, 10, warmup_steps, schedule), rel=1e-9, abs=1e-15)
    assert max(got) == pytest.approx(lr) and got[warmup_steps - 1] == pytest.approx(lr)  # the peak, at the warmup's end
    assert all(a < b for a, b in zip(got[:warmup_steps], got[1:warmup_steps]))  # rising through the warmup


def test_default_warmup_is_a_tenth_of_the_steps_then_linear():
    """Without --warmup / --schedule: 10% of the steps of warmup, then linear decay (TrainConfig's defaults)."""
    from ragcun.training.config import TrainConfig
    from ragcun.training.optim import lr_lambda

    config = TrainConfig(train_data="x.jsonl", steps=20)
    factors = [lr_lambda(config, 20)(s) for s in range(20)]
    assert factors == pytest.approx(expected_lrs(1.0, 20, 2, "linear"))


# -- 3. --head-lr ---------------------------------------------------------------------------------------------
def test_head_lr_is_the_heads_rate_and_lr_the_encoders(tiny_model_dir, tmp_path):
    """``--lr 1e-6 --head-lr 1e-2`` (constant, no warmup): between the checkpoints of steps 1 and 2 the head's
    weights move by about 1e-2 (AdamW moves each weight by about its lr), the encoder's by about 1e-6."""
    from ragcun.training import checkpoint as ckpt

    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    run = tmp_path / "run"
    lr, head_lr = 1e-6, 1e-2
    train_cli(tiny_model_dir, pairs, run, "--steps", "2", "--lr", str(lr), "--head-lr", str(head_lr),
              "--schedule", "constant", "--warmup", "0", "--save-every", "1", "--keep-checkpoints", "2",
              "--log-every", "1")
    first, second = (weights(c.folder / ckpt.MODEL_FOLDER) for c in ckpt.list_checkpoints(run))
    moved = {name: float((second[name] - first[name]).abs().max()) for name in first}
    head = {n: m for n, m in moved.items() if n.startswith("head.")}
    encoder = {n: m for n, m in moved.items() if n.startswith("encoder.")}
    assert head and encoder
    assert 0.2 * head_lr < max(head.values()) < 3 * head_lr, head
    assert max(encoder.values()) < 3 * lr, max(encoder.items(), key=lambda kv: kv[1])
    assert max(encoder.values()) > 0  # the encoder does train, at its own (small) rate
    # the optimizer's parameter groups carry exactly these two rates
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(run))
    assert sorted(set(state["scheduler"]["base_lrs"])) == pytest.approx([lr, head_lr])
    assert {r["lr"] for r in step_records(run)} == {lr}  # metrics.jsonl logs the encoder's rate


def test_head_lr_defaults_to_lr(tiny_model):
    from ragcun.training.config import TrainConfig
    from ragcun.training.optim import make_optimizer

    optimizer = make_optimizer(tiny_model, TrainConfig(train_data="x.jsonl", steps=1, lr=3e-4), torch.device("cpu"))
    assert {g["lr"] for g in optimizer.param_groups} == {3e-4}


# -- 4. --max-grad-norm 0 -----------------------------------------------------------------------------------
def test_max_grad_norm_zero_does_not_clip(tiny_model_dir, tmp_path):
    """``--max-grad-norm 0`` ("0 disables" clipping): the weights are bit for bit those of a run whose bound
    (1e9) is never reached, and not those of a run whose bound (1e-3) clips every step."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    common = ["--steps", "3", "--lr", "1e-3", "--warmup", "0", "--save-every", "1000", "--log-every", "1"]
    runs = {}
    for name, bound in [("off", "0"), ("never-reached", "1e9"), ("tight", "1e-3")]:
        runs[name] = tmp_path / name
        train_cli(tiny_model_dir, pairs, runs[name], *common, "--max-grad-norm", bound)
    assert json.loads((runs["off"] / "train_config.json").read_text())["max_grad_norm"] is None
    norms = [r["grad_norm"] for r in step_records(runs["never-reached"])]
    assert len(norms) == 3 and min(norms) > 1e-3  # so the tight bound really clips
    off, loose, tight = (weights(runs[n]) for n in ("off", "never-reached", "tight"))
    assert off.keys() == loose.keys() == tight.keys()
    for name in off:
        assert torch.equal(off[name], loose[name]), name
    assert any(not torch.equal(off[name], tight[name]) for name in off)


# -- 5. ragcun.build_model as the README shows it -----------------------------------------------------------
@pytest.mark.slow  # loads the real all-MiniLM-L6-v2
def test_build_model_as_in_the_readme(tmp_path):
    model = ragcun.build_model("all-minilm-l6-v2", head="gaussian", distance="euclidean")  # 512-d, unnormalized
    vectors = model.encode(["a query", "a document"])  # float32 (2, 512)
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (2, 512)
    assert type(model.distance).__name__ == "EuclideanDistance"
    # unnormalized: nothing rescales the head's output to unit length (a head 3x larger gives norms 3x larger)
    with torch.no_grad():
        model.head.mean.weight.mul_(3.0)
    tripled = model.encode(["a query", "a document"])
    np.testing.assert_allclose(np.linalg.norm(tripled, axis=1), 3 * np.linalg.norm(vectors, axis=1), rtol=1e-4)
    folder = model.save_pretrained(tmp_path / "runs" / "mine")  # model.safetensors + ragcun.json + encoder/
    assert (folder / "model.safetensors").is_file() and (folder / "ragcun.json").is_file()
    assert (folder / "encoder").is_dir()
    back = ragcun.load(tmp_path / "runs" / "mine")
    np.testing.assert_array_equal(back.encode(["a query", "a document"]), tripled)


# -- 6. examples/rank_with_euclidean.py -----------------------------------------------------------------------
@pytest.mark.slow  # a subprocess loading the real all-MiniLM-L6-v2 three times: ~6-9 s
def test_rank_with_euclidean_example_runs():
    """The example's promise: a fresh gaussian head ranks exactly like the encoder under Euclidean distance, and
    cosine agrees with Euclidean because all-MiniLM-L6-v2 outputs unit vectors; the vaccine texts come first."""
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "rank_with_euclidean.py")], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {}
    for line in proc.stdout.splitlines():
        if "ranking:" not in line:
            continue
        label, rest = line.split("ranking:")
        order, scores = rest.split("scores:")
        rows[" ".join(label.split())] = (json.loads(order), json.loads(scores))
    assert set(rows) == {"identity + cosine", "identity + euclidean", "gaussian + euclidean"}, proc.stdout
    orders = {order == rows["identity + cosine"][0] for order, _ in rows.values()}
    assert orders == {True}, rows
    assert set(rows["gaussian + euclidean"][0][:2]) == {0, 2}  # the two vaccine documents
    assert rows["gaussian + euclidean"][1] == pytest.approx(rows["identity + euclidean"][1], abs=1.5e-3)
    # unit vectors: -||q - d|| = -sqrt(2 - 2 cos)
    cosine = rows["identity + cosine"][1]
    assert rows["identity + euclidean"][1] == pytest.approx([-math.sqrt(2 - 2 * c) for c in cosine], abs=3e-3)


# -- 7. a ragcun model inside beir's DenseRetrievalExactSearch(model, score_function="dot") -------------------
@pytest.fixture()
def tiny_beir(tmp_path):
    return write_beir(tmp_path / "beir" / "tiny")


def assert_same_ranking(ours: dict[str, float], theirs: dict[str, float], tol: float = 1e-4) -> None:
    """The same documents, and beir's order is ragcun's order (up to ties within ``tol`` of ragcun's score)."""
    assert set(ours) == set(theirs)
    beir_order = sorted(theirs, key=theirs.get, reverse=True)
    ours_along = [ours[d] for d in beir_order]
    assert all(a >= b - tol for a, b in zip(ours_along, ours_along[1:])), (beir_order, ours)


def test_ragcun_model_in_beirs_dense_exact_search(tiny_model, tiny_beir):
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from ragcun.evaluation.beir_eval import evaluate_beir

    with torch.no_grad():  # a head that moves the vectors off the encoder's geometry (nonzero bias, scaled)
        tiny_model.head.mean.weight.mul_(2.5)
        tiny_model.head.mean.bias.uniform_(-1, 1)
    corpus, queries, qrels = GenericDataLoader(str(tiny_beir)).load("test")
    k = len(corpus)  # every document, so both sides return whole rankings
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(tiny_model, batch_size=8, show_progress_bar=False),
                                  k_values=[1, 3, 5, 10, k], score_function="dot")
    theirs = retriever.retrieve(corpus, queries)
    report = evaluate_beir(tiny_model, str(tiny_beir), k=k, batch_size=8, download=False, device="cpu",
                           show_progress=False, return_results=True)
    assert report["settings"]["distance"] == "euclidean"
    ours = report["runs"]["tiny"]
    assert set(ours) == set(theirs)
    for qid in ours:
        assert_same_ranking(ours[qid], theirs[qid])
    assert "d5" not in theirs["d5"] and "d5" not in ours["d5"]  # both skip the document with the query's id
    ndcg, _map, recall, precision = retriever.evaluate(qrels, theirs, [1, 3, 5, 10])
    for name, value in {**ndcg, **recall}.items():
        assert report["datasets"]["tiny"][name] == pytest.approx(value, abs=1e-6), name


# -- 8. ragcun eval beir --dtype bfloat16-weights (the whole encoder in bfloat16) -----------------------
def test_eval_beir_bfloat16_is_close_to_float32(tiny_model_dir, tiny_beir, tmp_path):
    from ragcun.evaluation.run_files import read_trec_run
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16}}})
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    reports, runs = {}, {}
    for dtype in ("float32", "bfloat16-weights", "bfloat16"):  # bfloat16: the older spelling, the same mode here
        result = invoke("eval", "beir", "--model", checkpoint, "--datasets", "tiny", "--data-dir", tiny_beir.parent,
                        "--no-download", "--device", "cpu", "--dtype", dtype, "--batch-size", "8",
                        "--save-run", tmp_path / dtype, "--output", tmp_path / f"{dtype}.json")
        assert result.exit_code == 0, result.output
        reports[dtype] = json.loads((tmp_path / f"{dtype}.json").read_text())
        runs[dtype] = read_trec_run(tmp_path / dtype / "tiny.trec")
    assert reports["bfloat16"]["settings"]["dtype"] == "bfloat16"
    assert reports["bfloat16"]["settings"]["precision"] == reports["bfloat16-weights"]["settings"]["precision"]
    assert runs["bfloat16"] == runs["bfloat16-weights"]
    f32, b16 = reports["float32"]["datasets"]["tiny"], reports["bfloat16-weights"]["datasets"]["tiny"]
    for name in ("NDCG@10", "Recall@10", "MAP@10"):
        assert b16[name] == pytest.approx(f32[name], abs=0.05), name
    # the scores were computed in bfloat16 (not the float32 numbers again), and are close to them
    diffs = [abs(runs["bfloat16-weights"][q][d] - s) for q, docs in runs["float32"].items()
             for d, s in docs.items() if d in runs["bfloat16-weights"][q]]
    scale = max(abs(s) for docs in runs["float32"].values() for s in docs.values())
    assert max(diffs) > 0
    assert max(diffs) < 0.05 * scale


# -- 9. the base model's similarity: dot when the model says so ---------------------------------------------
def test_base_model_uses_dot_when_its_config_says_so(tiny_model_dir, tiny_beir, tmp_path):
    """A transformers folder is evaluated the way its authors do: cosine, or dot when it does not normalize and
    says so (``similarity_fn_name`` in config_sentence_transformers.json): then the scores are raw inner products
    of the unnormalized mean-pooled vectors."""
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.resolve import resolve_model

    plain = resolve_model(f"hf:{tiny_model_dir}")
    assert type(plain.distance).__name__ == "CosineDistance"
    dot_dir = shutil.copytree(tiny_model_dir, tmp_path / "dot-model")
    (dot_dir / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "dot"}))
    model = resolve_model(f"hf:{dot_dir}")
    assert type(model.distance).__name__ == "DotProductDistance"
    assert type(model.head).__name__ == "IdentityHead"

    report = evaluate_beir(f"hf:{dot_dir}", str(tiny_beir), k=5, batch_size=8, download=False, device="cpu",
                           show_progress=False, return_results=True)
    assert report["settings"]["distance"] == "dot"
    corpus = [json.loads(x) for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (tiny_beir / "queries.jsonl").read_text().splitlines())}
    doc_vectors = plain.encode([(d["title"] + " " + d["text"]).strip() for d in corpus])
    assert not np.allclose(np.linalg.norm(doc_vectors, axis=1), 1.0, atol=1e-3)  # really unnormalized
    doc_index = {d["_id"]: i for i, d in enumerate(corpus)}
    for qid, docs in report["runs"]["tiny"].items():
        q = plain.encode(queries[qid])
        for did, score in docs.items():
            assert score == pytest.approx(float(q @ doc_vectors[doc_index[did]]), rel=1e-4, abs=1e-4), (qid, did)
    # and cosine scores would have been other numbers (bounded by 1)
    cosine = evaluate_beir(f"hf:{tiny_model_dir}", str(tiny_beir), k=5, batch_size=8, download=False, device="cpu",
                           show_progress=False, return_results=True)
    assert cosine["settings"]["distance"] == "cosine"
    assert max(abs(s) for docs in cosine["runs"]["tiny"].values() for s in docs.values()) <= 1.0 + 1e-5
    assert max(abs(s) for docs in report["runs"]["tiny"].values() for s in docs.values()) > 1.0 + 1e-3


# -- 10. --mine-negatives model through ragcun train ---------------------------------------------------------
def test_mine_negatives_model_through_the_cli(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    """``--negatives 2 --mine-negatives model``: the run's own model mines hard negatives, never a judged-relevant
    document (nor the query's own id), cached on disk; a second run reads the cache (it is not mined again), and
    training uses what the cache holds (emptied, the run stops asking to re-mine)."""
    from ragcun.data.beir import load_beir
    from ragcun.data.negatives import judged_relevant
    from ragcun.training.config import TrainConfig
    from ragcun.training.negatives import mine_with_model
    from ragcun.training.optim import seed_everything
    from ragcun.training.setup import build_training_model

    cache = tmp_path / "cache"
    monkeypatch.setenv("RAGCUN_CACHE", str(cache))
    args = ["--train-data", "beir:tiny:test", "--data-dir", tiny_beir.parent, "--negatives", "2",
            "--mine-negatives", "model", "--steps", "2", "--save-every", "1000"]
    train_cli(tiny_model_dir, "beir:tiny:test", tmp_path / "first", *args[2:])
    files = list((cache / "negatives").glob("tiny-test-model-*.json"))
    assert len(files) == 1, list(cache.rglob("*"))
    mined = json.loads(files[0].read_text())
    dataset = load_beir(tiny_beir, "test", name="tiny")
    relevant = judged_relevant(tiny_beir)
    assert set(mined) == set(dataset.queries)
    for qid, docs in mined.items():
        assert len(docs) >= 2 and qid not in docs
        assert not set(docs) & relevant.get(qid, set()), qid
        assert set(docs) <= set(dataset.corpus)
    # mined with the run's own model: its exact top documents, judged ones left out
    config = TrainConfig.load(tmp_path / "first")
    seed_everything(config.seed)
    model = build_training_model(config)
    assert mine_with_model(model, dataset, 30) == mined

    before = (files[0].stat().st_mtime_ns, files[0].read_text())
    train_cli(tiny_model_dir, "beir:tiny:test", tmp_path / "second", *args[2:])
    assert (files[0].stat().st_mtime_ns, files[0].read_text()) == before  # read, not mined again

    files[0].write_text(json.dumps({qid: [] for qid in mined}))
    result = invoke("train", "--encoder", f"hf:{tiny_model_dir}", *TINY, *args, "--output-dir", tmp_path / "third",
                    "--batch-size", "4", "--no-progress", "--seed", "0")
    assert result.exit_code == 1 and "has no mined negatives" in result.output, result.output


# -- 11. ragcun plugins shows a failed plugin -----------------------------------------------------------------
GOOD_PLUGIN = """
    import ragcun

    @ragcun.hookimpl
    def register_distances(register):
        register("readme-manhattan", "ragcun_readme_good:Manhattan", summary="L1")

    class Manhattan:
        pass
"""


def test_plugins_command_shows_a_plugin_that_fails_to_import(tmp_path, monkeypatch):
    """"`ragcun plugins` shows what loaded and what failed: a plugin that fails to import ... is reported there and
    left out; everything else keeps working." """
    from ragcun.plugins import reset_host

    write_distribution(tmp_path, "ragcun-readme-broken", "ragcun_readme_broken",
                       "raise ImportError('needs libfoo 9')\n", entry_name="readme-broken")
    write_distribution(tmp_path, "ragcun-readme-good", "ragcun_readme_good", GOOD_PLUGIN, entry_name="readme-good")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RAGCUN_LOAD_PLUGINS", raising=False)  # every installed plugin (conftest allows none)
    monkeypatch.delenv("RAGCUN_DISABLE_PLUGINS", raising=False)
    reset_host()

    result = invoke("plugins", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    broken = rows["readme-broken"]
    assert broken["status"] == "error" and broken["distribution"] == "ragcun-readme-broken"
    assert broken["error"] == "import failed: ImportError: needs libfoo 9"
    assert broken["components"] == [] and broken["hooks"] == []
    assert rows["readme-good"]["status"] == "ok" and rows["readme-good"]["error"] is None
    assert rows["readme-good"]["components"] == ["distance:readme-manhattan"]

    from ragcun import console

    monkeypatch.setattr(console.stdout, "width", 250)  # rich fixes its width when created: no wrapped cells
    table = CliRunner().invoke(build_cli(), ["plugins"], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    line = next(x for x in table.output.splitlines() if "readme-broken" in x)
    assert "error" in line and "needs libfoo 9" in line
    assert "ok" in next(x for x in table.output.splitlines() if "readme-good" in x)

    # everything else keeps working: the built-ins and the healthy plugin's component are listed
    listed = invoke("list", "distances", "--format", "json")
    assert listed.exit_code == 0, listed.output
    names = {r["name"] for r in json.loads(listed.output)}
    assert {"euclidean", "readme-manhattan"} <= names
