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
