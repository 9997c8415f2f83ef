"""The matryoshka loss wrapper (ragcun/losses/matryoshka.py) in the loss grammar, for every distance, and the
truncated model it trains for (ragcun/truncation.py: eval, isotropy report and export at --truncate-dim)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragcun.components import build, components_in_use
from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs
from ragcun.losses.composite import build_loss
from ragcun.losses.matryoshka import MatryoshkaLoss, default_dims, truncate_embedding

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = settings(max_examples=20, deadline=None)
DISTANCES = ["euclidean", "sqeuclidean", "cosine", "dot", "wasserstein", "expected-sqeuclidean"]
D = 8


def inputs_for(seed: int, b: int = 4, k: int = 2, dim: int = D, ids: bool = True) -> LossInputs:
    g = torch.Generator().manual_seed(seed)

    def emb(n):
        return Embedding(torch.randn(n, dim, generator=g, dtype=torch.float64),
                         torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.5)

    return LossInputs(emb(b), emb(b), emb(b * k) if k else None,
                      positive_ids=[f"p{i % 3}" for i in range(b)] if ids else None,
                      negative_ids=[f"n{i}" for i in range(b * k)] if ids and k else None, step=3,
                      teacher_scores=torch.randn(b, 1 + k, generator=g, dtype=torch.float64) if k else None)


def test_the_grammar_builds_the_wrapper_around_its_inner_loss_with_its_own_settings():
    settings_ = {"loss": {"matryoshka": {"dims": [8, 4, 2]}, "contrastive": {"temperature": 0.2},
                          "isotropy": {"num_slices": 8}}}
    loss = build_loss("matryoshka:infonce+0.2*isotropy", settings_, distance=build("distance", "euclidean"), dim=D)
    assert loss.spec == "matryoshka:contrastive+0.2*isotropy"
    wrapper = loss.losses["matryoshka"]
    assert isinstance(wrapper, MatryoshkaLoss) and wrapper.dims == [8, 4, 2]
    assert wrapper.inner.temperature == pytest.approx(0.2)
    assert components_in_use({"loss": "matryoshka:contrastive+0.2*isotropy"}) == {
        "loss": ["matryoshka", "contrastive", "isotropy"]}
    assert loss.get_config()["terms"]["matryoshka"]["inner"]["temperature"] == pytest.approx(0.2)
    # a weighted wrapper: its weight multiplies the whole average
    weighted = build_loss("0.5*matryoshka:contrastive", settings_, dim=D)
    x = inputs_for(0)
    torch.testing.assert_close(weighted(x).total, 0.5 * wrapper(x))


def test_settings_of_the_wrapped_loss_are_accepted_by_a_training_config(tmp_path):
    from ragcun.training.config import build_config

    config = build_config(flags={"train_data": "x.jsonl", "steps": 1, "loss": "matryoshka:contrastive+0.2*isotropy",
                                 "output_dir": str(tmp_path / "run")},
                          settings=["loss.contrastive.temperature=0.1", "loss.matryoshka.dims=[16,8]"])
    assert config.settings["loss"]["matryoshka"]["dims"] == [16, 8]
    with pytest.raises(ValueError, match="does not use loss 'margin-mse'"):
        build_config(flags={"train_data": "x.jsonl", "steps": 1, "loss": "matryoshka:contrastive",
                            "output_dir": str(tmp_path / "run")}, settings=["loss.margin-mse.teacher_scale=0.1"])


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("inner,inner_settings", [("contrastive", {"temperature": 0.3}), ("margin-mse", {}),
                                                  ("distill-kl", {"temperature": 0.5})])
def test_the_weighted_mean_of_the_inner_loss_on_prefixes(distance, inner, inner_settings):
    dist = build("distance", distance)
    inner_settings = {**inner_settings, **({"check_scale": False} if inner != "contrastive" else {})}
    settings_ = {"loss": {"matryoshka": {"dims": [8, 5, 2], "weights": [1.0, 2.0, 0.5]}, inner: inner_settings}}
    wrapper = build_loss(f"matryoshka:{inner}", settings_, distance=dist, dim=D).losses["matryoshka"]
    alone = build("loss", inner, {"loss": {inner: inner_settings}}, distance=dist)
    x = inputs_for(1)
    expected = sum(w * alone(LossInputs(truncate_embedding(x.queries, d), truncate_embedding(x.positives, d),
                                        truncate_embedding(x.negatives, d), x.positive_ids, x.negative_ids, x.step,
                                        x.relevant_ids, x.teacher_scores))
                   for d, w in zip([8, 5, 2], [1.0, 2.0, 0.5])) / 3.5
    torch.testing.assert_close(wrapper(x), expected)


@pytest.mark.parametrize("distance", DISTANCES)
@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 5), k=st.integers(0, 2))
def test_finite_and_equal_to_the_inner_loss_at_full_width(distance, seed, b, k):
    dist = build("distance", distance)
    x = inputs_for(seed, b, k)
    leaves = [e.mean.requires_grad_(True) for e in (x.queries, x.positives, x.negatives) if e is not None]
    full = build_loss("matryoshka:contrastive", {"loss": {"matryoshka": {"dims": [D]}}}, distance=dist, dim=D)
    alone = build("loss", "contrastive", distance=dist)
    value = full(x).total
    torch.testing.assert_close(value, alone(x))
    nested = build_loss("matryoshka:contrastive", {"loss": {"matryoshka": {"dims": [D, 3, 1]}}}, distance=dist, dim=D)
    total = nested(x).total
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    # the coordinates past the smallest prefix get gradient only from the wider prefixes
    assert leaves[0].grad[:, 3:].abs().sum() > 0 or b == 1


def test_default_dims_are_the_width_and_its_halvings():
    assert default_dims(512) == [512, 256, 128, 64]
    assert default_dims(384) == [384, 192, 96, 48]
    assert default_dims(6) == [6, 3]
    assert build_loss("matryoshka:contrastive", dim=16).losses["matryoshka"].dims == [16, 8, 4, 2]


@pytest.mark.parametrize("spec,settings_,dim,match", [
    ("matryoshka", {}, D, "matryoshka:contrastive"),
    ("matryoshka:0.5*contrastive", {}, D, "takes no weight"),
    ("matryoshka:contrastve", {}, D, "did you mean 'contrastive'"),
    ("matryoshka:contrastive", {"dims": [16]}, D, "asks for 16 coordinates"),
    ("matryoshka:contrastive", {"dims": []}, D, "non-empty list"),
    ("matryoshka:contrastive", {"dims": [4, 4]}, D, "twice"),
    ("matryoshka:contrastive", {"dims": [4, 2], "weights": [1.0]}, D, "2 numbers"),
    ("matryoshka:contrastive", {"dims": [4, 2], "weights": [1.0, -1.0]}, D, "positive"),
    ("matryoshka:contrastive", {}, None, "dims is required"),
    ("contrastive:x", {}, D, "losses take none"),
])
def test_errors_say_what_to_type(spec, settings_, dim, match):
    with pytest.raises(ValueError, match=match):
        build_loss(spec, {"loss": {"matryoshka": settings_}}, dim=dim)


def test_a_prefix_wider_than_the_embeddings_fails_at_the_forward():
    loss = build_loss("matryoshka:contrastive", {"loss": {"matryoshka": {"dims": [8, 4]}}})
    with pytest.raises(ValueError, match="embeddings have 6"):
        loss(inputs_for(0, dim=6))


def test_calibration_rescales_the_inner_temperature():
    loss = build_loss("matryoshka:contrastive+isotropy", {"loss": {"contrastive": {"temperature": 0.1}}}, dim=D)
    from ragcun.training.calibration import _contrastive_terms

    terms = _contrastive_terms(loss)
    assert [type(t).__name__ for t in terms] == ["MatryoshkaLoss"]
    terms[0].rescale_temperature(3.0)
    assert loss.losses["matryoshka"].inner.temperature == pytest.approx(0.3)


def test_isotropy_composes_on_the_full_embedding():
    x = inputs_for(2, b=16, k=0)
    settings_ = {"loss": {"matryoshka": {"dims": [8, 2]}, "isotropy": {"num_slices": 8}}}
    out = build_loss("matryoshka:contrastive+0.2*isotropy", settings_, dim=D)(x)
    alone = build("loss", "isotropy", settings_)
    torch.testing.assert_close(out.terms["isotropy"], 0.2 * alone(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(out.total, out.terms["matryoshka"] + out.terms["isotropy"])


# -- the truncated model: eval, isotropy report, export ------------------------------------------------------------

def test_truncate_model_shares_the_weights_and_leaves_the_model_alone(tiny_model):
    from ragcun.truncation import TruncatedHead, truncate_model

    texts = ["a query", "a longer document about things"]
    full = tiny_model.encode(texts)
    cut = truncate_model(tiny_model, 5)
    assert isinstance(cut.head, TruncatedHead) and cut.dim == 5 and tiny_model.dim == 16
    assert cut.head.inner is tiny_model.head and cut.encoder is tiny_model.encoder
    assert (cut.encode(texts) == full[:, :5]).all()
    assert truncate_model(tiny_model, None) is tiny_model and truncate_model(tiny_model, 16) is tiny_model
    assert cut.head.get_config()["truncate_dim"] == 5 and cut.head.get_config()["full_dim"] == 16
    for bad, match in [(0, "positive"), (17, "16 dimensions"), (2.5, "positive integer")]:
        with pytest.raises(ValueError, match=match):
            truncate_model(tiny_model, bad)


def test_the_truncated_distance_is_the_distance_of_the_prefixes(tiny_model_dir):
    from ragcun.model import EmbeddingModel
    from ragcun.truncation import truncate_model

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "wasserstein",
                                 {"head": {"gaussian": {"out_dim": 12, "logvar": True}}})
    cut = truncate_model(model, 4)
    q, d = model.encode_embeddings(["query"]), model.encode_embeddings(["doc one", "doc two"])
    expected = model.distance.similarity(q.truncate(4), d.truncate(4))
    got = cut.distance.similarity(cut.encode_embeddings(["query"]), cut.encode_embeddings(["doc one", "doc two"]))
    torch.testing.assert_close(got, expected)


def test_eval_beir_at_a_truncated_width(data_dir, tiny_model_dir):
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.model import EmbeddingModel

    torch.manual_seed(0)
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16}}})
    args = dict(datasets="nq-utd", data_dir=data_dir, k=10, download=False, show_progress=False)
    full = evaluate_beir(model, **args)
    same = evaluate_beir(model, truncate_dim=16, **args)
    cut = evaluate_beir(model, truncate_dim=4, **args)
    assert same["datasets"] == full["datasets"] and full["settings"]["dim"] == 16
    assert cut["settings"]["dim"] == 4 and cut["settings"]["truncate_dim"] == 4 and "first 4 of 16" in cut["model"]
    assert cut["datasets"]["nq-utd"] != full["datasets"]["nq-utd"]
    assert model.dim == 16  # the caller's model is not changed


def test_isotropy_report_on_prefixes(data_dir, tiny_model_dir, tmp_path):
    from ragcun.diagnostics.report import isotropy_report

    report = isotropy_report([f"{tiny_model_dir}+gaussian"], "nq-utd", data_dir, sample=40, output_dir=tmp_path,
                             plots=False, html_page=False, progress=False, truncate_dim=6,
                             settings={"head": {"gaussian": {"out_dim": 16}}})
    assert report["models"][0]["dim"] == 6 and report["settings"]["truncate_dim"] == 6


@pytest.mark.parametrize("head", ["gaussian", "identity"])
def test_export_at_a_truncated_width_loads_in_sentence_transformers(tiny_model_dir, tmp_path, head):
    pytest.importorskip("sentence_transformers")
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from ragcun.exporters import export
    from ragcun.model import EmbeddingModel
    from ragcun.truncation import truncate_model

    torch.manual_seed(0)
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", head, "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16}}} if head == "gaussian" else None)
    model.save_pretrained(tmp_path / "ckpt")
    result = export(str(tmp_path / "ckpt"), tmp_path / "st", truncate_dim=8)
    # the gaussian head's Dense keeps its first 8 rows; the identity head gets a selecting Dense: one Dense either way
    assert result.dim == 8 and result.pipeline.endswith("Pooling(mean) -> Dense(32->8, Identity)"), result.pipeline
    texts = ["what is a word", "a word is a unit of language"]
    ours = truncate_model(model, 8).encode(texts)
    theirs = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts)
    assert theirs.shape == (2, 8)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)


def test_the_commands_take_truncate_dim():
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    for command in (["eval", "beir"], ["isotropy", "report"], ["export"]):
        result = CliRunner().invoke(build_cli(), [*command, "--help"])
        assert "--truncate-dim D" in result.output, command
    bad = CliRunner().invoke(build_cli(), ["eval", "beir", "--truncate-dim", "0"])
    assert bad.exit_code == 2 and "--truncate-dim" in bad.output
