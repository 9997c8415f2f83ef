"""Issue 28, class 5: settings that make training meaningless are refused, or made meaningful.

A batch too small for the loss to learn from; heads fitted from data (center, whiten) that were never fitted; a
resume on another number of processes; a damaged or hand-edited train_config.json."""

from __future__ import annotations

import json

import pytest
import torch
from _training_helpers import tiny_config, write_beir, write_pairs
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.losses.composite import build_loss
from ragcun.training import checkpoint as ckpt
from ragcun.training.config import TrainConfig
from ragcun.training.loop import train
from ragcun.training.setup import check_batch_can_teach

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24)


def invoke(*args):
    result = CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


def tiny_cli(model_dir, pairs, out, *extra):
    return ["train", "--encoder", f"hf:{model_dir}", "--set", "head.gaussian.out_dim=16",
            "--train-data", pairs, "--output-dir", out, "--no-progress", "--lr", "1e-3", "--log-every", "1", *extra]


# -- a batch the loss cannot learn from ------------------------------------------------------------------------
@pytest.mark.parametrize("loss, batch, negatives, world, refused", [
    ("contrastive", 1, 0, 1, True),          # no negative at all: loss 0, gradient 0
    ("contrastive", 2, 0, 1, False),
    ("contrastive", 1, 1, 1, False),         # its hard negative is a candidate
    ("contrastive", 1, 0, 2, False),         # gathered over 2 processes: the other's positive
    ("contrastive+isotropy", 1, 1, 1, True),  # SIGReg tests a distribution of one point
    ("uniformity", 1, 3, 1, True),
    ("variance-covariance", 1, 0, 1, True),
    ("matryoshka:contrastive", 1, 0, 1, True),
    ("matryoshka:contrastive", 1, 2, 1, False),
])
def test_a_batch_the_loss_cannot_learn_from_is_refused(loss, batch, negatives, world, refused):
    config = TrainConfig(train_data="x.jsonl", output_dir="out", steps=1, loss=loss, batch_size=batch,
                         negatives=negatives)
    module = build_loss(loss, dim=8)
    if not refused:
        check_batch_can_teach(config, module, world)
        return
    with pytest.raises(ValueError, match=r"--batch-size 1.*nothing to learn from.*--grad-accum does not"):
        check_batch_can_teach(config, module, world)


def test_batch_size_one_stops_before_any_data_is_read_with_the_fix(tiny_model_dir, pairs, tmp_path):
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, tmp_path / "run", "--loss", "contrastive",
                                    "--batch-size", "1", "--grad-accum", "4", "--steps", "2"))
    assert code == 1, output
    assert "--batch-size 1" in output and "other queries' positives" in output and "--negatives 1" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "checkpoints").exists()
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, tmp_path / "run2", "--loss", "contrastive",
                                    "--batch-size", "1", "--negatives", "1", "--steps", "1"))
    assert code == 0, output  # with a hard negative a query alone has something to learn


# -- heads fitted from data ------------------------------------------------------------------------------------
def test_an_unfitted_head_refuses_to_encode_and_fit_head_fits_it(tiny_model_dir):
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "whiten", "euclidean")
    with pytest.raises(ValueError, match=r"whiten head is not fitted.*fit_head"):
        model.encode(["a query"])
    docs = [f"document {i} about {'gaussian ' * (i % 5)}retrieval" for i in range(40)]
    assert model.fit_head(docs, 8) == 40 and model.head.is_fitted
    vectors = torch.from_numpy(model.encode(docs, 8)).double()
    torch.testing.assert_close(vectors.mean(0), torch.zeros(vectors.shape[1], dtype=torch.float64), atol=1e-3,
                               rtol=0)  # whitened on exactly these documents: zero mean
    with pytest.raises(ValueError, match="trained, not fitted"):
        EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean").fit_head(docs)


def test_train_fits_a_center_head_on_the_training_documents(tiny_model_dir, pairs, tmp_path):
    from ragcun.model import load as load_model

    run = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, run, pairs, head="center", loss="contrastive", settings={},
                               steps=2, save_every=1))
    assert result.model_dir is not None
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fitted_on = next(r["head_fit"]["documents"] for r in records if "head_fit" in r)
    assert fitted_on == 24  # the distinct positives of the 24 training pairs
    model = load_model(run)
    assert model.head.is_fitted
    assert load_model(ckpt.latest_checkpoint(run).folder / ckpt.MODEL_FOLDER).head.is_fitted


def test_eval_fits_an_unfitted_head_on_each_corpus_and_leaves_the_callers_model_alone(tiny_model_dir, tmp_path):
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.model import EmbeddingModel, corpus_texts
    from ragcun.data.beir import load_beir

    write_beir(tmp_path / "data" / "toy")
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "whiten", "euclidean")
    report = evaluate_beir(model, ["toy"], data_dir=tmp_path / "data", k=10, batch_size=8, show_progress=False)
    assert not model.head.is_fitted  # the caller's model is not changed behind its back
    assert report["counts"]["toy"]["head_fitted_on"] == 37
    by_hand = EmbeddingModel.build(f"hf:{tiny_model_dir}", "whiten", "euclidean")
    by_hand.load_state_dict(model.state_dict())
    by_hand.fit_head(corpus_texts(list(load_beir(tmp_path / "data" / "toy", "test").corpus.values())), 8)
    expected = evaluate_beir(by_hand, ["toy"], data_dir=tmp_path / "data", k=10, batch_size=8, show_progress=False)
    assert report["datasets"]["toy"] == expected["datasets"]["toy"]
    assert "head_fitted_on" not in expected["counts"]["toy"]  # a fitted head keeps its statistics


def test_the_isotropy_reports_whiten_column_is_whitened(tiny_model_dir, tmp_path):
    from ragcun.diagnostics.report import isotropy_report

    write_beir(tmp_path / "data" / "toy", n_docs=60)
    report = isotropy_report([f"hf:{tiny_model_dir}+identity", f"hf:{tiny_model_dir}+whiten"], "toy",
                             tmp_path / "data", sample=60, output_dir=tmp_path / "report", progress=False,
                             batch_size=16)
    bare, whitened = report["models"]
    assert bare["head_fitted_on"] is None and whitened["head_fitted_on"] == 60
    assert bare["metrics"]["documents"] != whitened["metrics"]["documents"]


# -- resuming with another number of processes -----------------------------------------------------------------
def test_a_resume_on_another_number_of_processes_is_refused_naming_both(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2), stop_after=2)
    history = json.loads((run / "config_history.json").read_text())
    assert history[0]["world_size"] == 1 and history[0]["global_batch"] == 4
    state_file = ckpt.latest_checkpoint(run).folder / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1 and state["global_batch"] == 4
    state["world_size"] = 2  # as if the run had trained on 2 processes
    state_file.write_text(json.dumps(state))
    code, output = invoke("train", "--output-dir", run, "--resume", "--no-progress")
    assert code == 1 and "trained with 2 process(es) (a global batch of 8 pairs)" in output, output
    assert "this resume has 1 (4 pairs)" in output and "Traceback" not in output


# -- a damaged or hand-edited train_config.json ----------------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    (lambda c: c.update(batch_size=4.5), "batch_size must be an integer"),
    (lambda c: c.update(batch_size="4"), "batch_size must be an integer"),
    (lambda c: c.pop("lr") and None, "missing lr"),
    (lambda c: c.update(lr=-1.0), "--lr must be positive"),
    (lambda c: [c], "expected a JSON object"),
    (lambda c: c["settings"]["head"]["gaussian"].update(out_dim=8), "the run's settings were edited after it started"),
])
def test_a_damaged_train_config_is_read_with_the_checks_of_config(tiny_model_dir, pairs, tmp_path, damage, message):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2), stop_after=2)
    path = run / "train_config.json"
    config = json.loads(path.read_text())
    damaged = damage(config)
    path.write_text(json.dumps(config if damaged is None else damaged))
    code, output = invoke("train", "--output-dir", run, "--resume", "--no-progress")
    assert code == 1 and message in output, output
    assert "train_config.json" in output and "Traceback" not in output
