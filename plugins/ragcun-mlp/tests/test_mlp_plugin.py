"""The example plugin, tested the way a plugin author would: through its real installed entry point."""

import json

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
