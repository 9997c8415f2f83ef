import json

import numpy as np
import pytest
import torch

import ragcun
from ragcun.components import check_compatible
from ragcun.heads.gaussian import GaussianHead
from ragcun.heads.identity import IdentityHead
from ragcun.heads.linear import LinearHead
from ragcun.model import EmbeddingModel
from ragcun.plugins import get_registry
from ragcun.testing.contracts import check_distance, check_head

TEXTS = ["Gaussian embeddings are not normalized.", "short", "Euclidean distance ranks documents.",
         "a much longer text " * 20, "SIGReg pushes toward an isotropic Gaussian."]


@pytest.mark.parametrize("head_cls, config", [(IdentityHead, {}), (LinearHead, {"out_dim": 7}),
                                              (LinearHead, {"normalize": True}), (GaussianHead, {"out_dim": 6}),
                                              (GaussianHead, {"out_dim": 6, "logvar": True})])
def test_builtin_heads_meet_the_contract(head_cls, config):
    check_head(head_cls, **config)


def test_gaussian_head_is_unnormalized_and_defaults_to_512():
    head = GaussianHead(in_dim=384)
    out = head(torch.randn(10, 384) * 3)
    assert out.mean.shape == (10, 512)
    assert not torch.allclose(out.mean.norm(dim=1), torch.ones(10))


def test_gaussian_head_orthogonal_init_preserves_distances():
    head = GaussianHead(in_dim=32, out_dim=64)
    x = torch.randn(6, 32)
    assert torch.allclose(torch.cdist(head(x).mean, head(x).mean), torch.cdist(x, x), atol=1e-4)


@pytest.mark.parametrize("name", ["euclidean", "sqeuclidean", "cosine", "dot"])
def test_builtin_distances_meet_the_contract(name):
    check_distance(get_registry().get("distance", name).load()())


def test_save_load_round_trip_is_bit_identical(tiny_model_dir, tmp_path):
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16, "logvar": True}}},
                                 query_prefix="query: ", document_prefix="passage: ")
    with torch.no_grad():  # make the weights distinct from any fresh init
        model.head.logvar.bias.uniform_(-1, 1)
    before = model.encode_embeddings(TEXTS)
    folder = model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((folder / "ragcun.json").read_text())
    assert config["head"]["name"] == "gaussian" and config["head"]["provider"] == "ragcun"
    assert config["encoder"]["config"]["path"] == "encoder"  # self-contained, relocatable
    assert not list(folder.glob("*.tmp"))
    loaded = ragcun.load(folder)
    after = loaded.encode_embeddings(TEXTS)
    assert torch.equal(before.mean, after.mean) and torch.equal(before.logvar, after.logvar)
    assert loaded.query_prefix == "query: " and loaded.document_prefix == "passage: "
    # relocating the folder still loads
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert torch.equal(ragcun.load(moved).encode_embeddings(TEXTS).mean, before.mean)


def test_encode_returns_float32_in_input_order(tiny_model):
    batch = tiny_model.encode(TEXTS, batch_size=2)
    assert batch.dtype == np.float32 and batch.shape == (len(TEXTS), 16)
    one_by_one = np.stack([tiny_model.encode(t) for t in TEXTS])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    assert tiny_model.encode([]).shape == (0, 16)


def test_beir_interface_ranks_like_the_distance(tiny_model):
    queries = ["what is sigreg", "gaussian head"]
    corpus = [{"title": "t", "text": t} for t in TEXTS]
    qv = tiny_model.encode_queries(queries)
    dv = tiny_model.encode_corpus(corpus)
    q = tiny_model.encode_embeddings(queries)
    d = tiny_model.encode_embeddings([("t " + t).strip() for t in TEXTS])
    sim = tiny_model.distance.similarity(q, d).numpy()
    np.testing.assert_array_equal(np.argsort(-(qv @ dv.T), axis=1, kind="stable"),
                                  np.argsort(-sim, axis=1, kind="stable"))


def _saved(tiny_model, tmp_path):
    return tiny_model.save_pretrained(tmp_path / "ckpt")


def _edit_config(folder, edit):
    path = folder / "ragcun.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_missing_plugin_names_the_package(tiny_model, tmp_path):
    folder = _saved(tiny_model, tmp_path)
    _edit_config(folder, lambda c: c["head"].update(name="fancy-head", provider="ragcun-fancy"))
    with pytest.raises(ValueError, match="pip install ragcun-fancy"):
        ragcun.load(folder)


def test_truncated_weights_are_detected(tiny_model, tmp_path):
    folder = _saved(tiny_model, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        ragcun.load(folder)
    _edit_config(folder, lambda c: c["weights"].pop("sha256"))  # without the checksum: refused (issue 28)
    with pytest.raises(ValueError, match="has no checksum for model.safetensors"):
        ragcun.load(folder)


def test_config_weights_mismatch(tiny_model, tmp_path):
    folder = _saved(tiny_model, tmp_path)
    _edit_config(folder, lambda c: c["head"]["config"].update(out_dim=17))  # the weights still verify
    with pytest.raises(ValueError, match="does not match ragcun.json.*shape"):
        ragcun.load(folder)
    _edit_config(folder, lambda c: c["head"]["config"].update(out_dim=16, logvar=True))
    with pytest.raises(ValueError, match="missing"):
        ragcun.load(folder)


@pytest.mark.parametrize("problem", ["no-folder", "no-config", "bad-json", "future-format"])
def test_not_a_checkpoint(tiny_model, tmp_path, problem):
    folder = _saved(tiny_model, tmp_path)
    if problem == "no-folder":
        folder = tmp_path / "nope"
    elif problem == "no-config":
        (folder / "ragcun.json").unlink()
    elif problem == "bad-json":
        (folder / "ragcun.json").write_text("{not json")
    else:
        _edit_config(folder, lambda c: c.update(format_version=99))
    with pytest.raises(ValueError, match="checkpoint|JSON|folder"):
        ragcun.load(folder)


def test_distance_needing_logvar_fails_before_training_with_the_fix():
    class NeedsLogvar:
        needs = {"mean", "logvar"}

    with pytest.raises(ValueError, match="head.gaussian.logvar=true"):
        check_compatible(GaussianHead(8, 4), NeedsLogvar(), head_name="gaussian", distance_name="wasserstein")
    check_compatible(GaussianHead(8, 4, logvar=True), NeedsLogvar(), head_name="gaussian", distance_name="w")


def test_unknown_settings_fail_before_building(tiny_model_dir):
    with pytest.raises(ValueError, match="did you mean head.gaussian.out_dim"):
        EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean", {"head": {"gaussian": {"outdim": 3}}})


def test_hf_encoder_rejects_non_model_folders(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        EmbeddingModel.build(f"hf:{tmp_path}", "identity", "cosine")
    with pytest.raises(ValueError, match="not a folder"):
        EmbeddingModel.build(f"hf:{tmp_path / 'missing'}", "identity", "cosine")


@pytest.mark.needs_plugins("ragcun-mlp")  # the example plugin, installed (then disabled below)
def test_missing_component_messages_say_what_is_true(tiny_model, tmp_path, monkeypatch):
    """Issue 14 point 10: no `pip install ragcun` for a head ragcun lacks; installed-but-disabled plugins are
    not called "not installed"."""
    from ragcun.plugins import reset_host

    folder = _saved(tiny_model, tmp_path)
    _edit_config(folder, lambda c: c["head"].update(name="no-such-head", provider="ragcun"))
    with pytest.raises(ValueError, match="has no built-in head 'no-such-head'") as info:
        ragcun.load(folder)
    assert "pip install" not in str(info.value)
    _edit_config(folder, lambda c: c["head"].update(name="mlp", provider="ragcun-mlp"))
    monkeypatch.setenv("RAGCUN_DISABLE_PLUGINS", "ragcun-mlp")  # the example plugin, installed by setup.sh
    reset_host()
    try:
        with pytest.raises(ValueError, match="installed but its plugin is not loaded") as info:
            ragcun.load(folder)
        assert "pip install" not in str(info.value)
    finally:
        monkeypatch.delenv("RAGCUN_DISABLE_PLUGINS")
        reset_host()
