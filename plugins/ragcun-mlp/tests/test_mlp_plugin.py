"""The example plugin, tested the way a plugin author would: through its real installed entry point."""

import json

import pytest
import torch
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.model import EmbeddingModel
from ragcun.plugins import get_registry
from ragcun.testing.contracts import check_head


def test_head_is_registered_by_its_distribution():
    entry = get_registry().get("head", "mlp")
    assert entry.provider == "ragcun-mlp"
    assert get_registry().get("head", "MLP_Head").name == "mlp"


def test_head_contract():
    from ragcun_mlp.head import MLPHead

    check_head(MLPHead, in_dim=24, out_dim=8, hidden_dim=16)


def test_model_with_mlp_head_round_trips(tiny_model_dir, tmp_path):
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "mlp", "euclidean",
                                 {"head": {"mlp": {"out_dim": 8, "hidden_dim": 16}}})
    texts = ["plugins extend ragcun", "without forking it"]
    before = model.encode(texts)
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "ragcun.json").read_text())
    assert saved["head"]["provider"] == "ragcun-mlp"
    again = EmbeddingModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(torch.from_numpy(before), torch.from_numpy(again.encode(texts)))


def test_params_command(tiny_model_dir):
    result = CliRunner().invoke(build_cli(), ["params", f"hf:{tiny_model_dir}", "--head", "mlp",
                                              "--set", "head.mlp.hidden_dim=16", "--set", "head.mlp.out_dim=8"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.strip().splitlines())
    head = int(lines["head"].replace(",", ""))
    assert head == 32 * 16 + 16 + 16 * 8 + 8 + 32 * 8


@pytest.mark.parametrize("residual", [True, False])
def test_head_exports_to_sentence_transformers(tiny_model_dir, tmp_path, residual):
    """The head's ``sentence_transformers_modules()`` (the export protocol): two Dense modules, GELU then
    identity, that SentenceTransformer loads and that reproduce the head, residual included."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import ragcun

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "mlp", "euclidean",
                                 {"head": {"mlp": {"out_dim": 8, "hidden_dim": 16, "residual": residual}}})
    run = model.save_pretrained(tmp_path / "run")
    result = ragcun.export(run, tmp_path / "out")
    dense = [json.loads((tmp_path / "out" / e["path"] / "config.json").read_text())
             for e in result.modules if e["type"].endswith("Dense")]
    assert [d["activation_function"].rsplit(".", 1)[-1] for d in dense] == ["GELU", "Identity"]
    assert dense[0]["out_features"] == 16 + (2 * 32 if residual else 0) and dense[1]["out_features"] == 8
    texts = ["plugins extend ragcun", "without forking it", "", "a longer sentence " * 30]
    st = SentenceTransformer(str(result.path), device="cpu", local_files_only=True)
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), model.encode(texts), atol=1e-5)


def test_the_plugin_evaluator_runs_as_ragcun_eval_and_agrees_with_beir(tiny_model_dir, data_dir):
    """`ragcun eval recall-at-k` is built from the registered evaluator; its Recall@10, computed without beir,
    equals beir's on the same model and data."""
    from ragcun.evaluation.beir_eval import evaluate_beir

    assert get_registry().get("evaluator", "recall-at-k").provider == "ragcun-mlp"
    result = CliRunner().invoke(build_cli(), ["eval", "recall-at-k", "--model", f"hf:{tiny_model_dir}", "--k", "10",
                                              "--dataset", "nq-utd", "--data-dir", str(data_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.output)
    beir = evaluate_beir(f"hf:{tiny_model_dir}", "nq-utd", data_dir, k=10, show_progress=False)
    assert ours["Recall@10"] == pytest.approx(beir["datasets"]["nq-utd"]["Recall@10"], abs=1e-5)  # beir rounds to 5
    assert ours["queries"] == beir["counts"]["nq-utd"]["queries"]
    bad = CliRunner().invoke(build_cli(), ["eval", "recall-at-k", "--k", "0", "--data-dir", str(data_dir)])
    assert bad.exit_code == 1 and "positive integer" in bad.output
