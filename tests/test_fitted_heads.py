"""Training-free heads fitted from data (center, whiten), and SIGReg on a projector (a loss with parameters)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragcun.embedding import Embedding
from ragcun.heads.fitted import CenterHead, WhitenHead
from ragcun.losses.base import LossInputs
from ragcun.losses.isotropy import IsotropyLoss

pytestmark = pytest.mark.usefixtures("single_thread")


def _cloud(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return torch.randn(n, d, generator=g) @ mix + 3.0 * torch.randn(d, generator=g)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 12), seed=st.integers(0, 1000), k=st.one_of(st.none(), st.integers(1, 12)))
def test_whitening_gives_zero_mean_and_identity_covariance(d, seed, k):
    k = None if k is None else min(k, d)
    x = _cloud(40 * d, d, seed)
    head = WhitenHead(in_dim=d, dim=k, eps=0.0)
    head.fit(x)
    y = head(x).mean.double()
    assert y.shape == (x.shape[0], k or d)
    # the fitted statistics are stored in float32: on an ill-conditioned cloud (hypothesis found d=5, seed=187) the
    # stored transform alone moves the mean by ~3e-4, as it moves the covariance by up to the 2e-3 allowed below
    torch.testing.assert_close(y.mean(0), torch.zeros(k or d, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(y.T, correction=0).reshape(k or d, k or d),
                               torch.eye(k or d, dtype=torch.float64), atol=2e-3, rtol=0)


def test_zca_stays_closest_to_the_input_and_the_affine_form_matches():
    x = _cloud(500, 5, 0)
    zca = WhitenHead(in_dim=5)
    zca.fit(x)
    w = zca.transform
    torch.testing.assert_close(w, w.T, atol=1e-5, rtol=0)  # ZCA's matrix is symmetric (PCA whitening's is not)
    weight, bias = zca.affine()
    torch.testing.assert_close(x @ weight.T + bias, zca(x).mean, atol=1e-4, rtol=1e-4)


def test_center_subtracts_the_fitted_mean_and_is_identity_before_fitting():
    x = _cloud(200, 4, 1)
    head = CenterHead(in_dim=4)
    torch.testing.assert_close(head(x).mean, x)
    head.fit(x)
    torch.testing.assert_close(head(x).mean.mean(0), torch.zeros(4), atol=1e-4, rtol=0)


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="head.whiten.dim"):
        WhitenHead(in_dim=4, dim=5)
    with pytest.raises(ValueError, match="head.whiten.fit"):
        WhitenHead(in_dim=4).fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="head.center.fit"):
        CenterHead(in_dim=4).fit(torch.randn(1, 4))


def test_a_fitted_head_saves_and_loads_like_any_checkpoint(tiny_model_dir, tmp_path):
    import ragcun
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "whiten", "cosine", {"head": {"whiten": {"dim": 8}}})
    model.eval()
    texts = [f"document number {i} about topic {i % 3}" for i in range(40)]
    with torch.no_grad():
        model.head.fit(model.encoder(model.tokenize(texts)))
    before = model.encode(texts[:5])
    model.save_pretrained(tmp_path / "whitened")
    loaded = ragcun.load(tmp_path / "whitened")
    assert before.shape == (5, 8)
    torch.testing.assert_close(torch.as_tensor(loaded.encode(texts[:5])), torch.as_tensor(before))


def test_sigreg_on_a_projector_trains_the_projector_and_reaches_the_embeddings():
    torch.manual_seed(0)
    loss = IsotropyLoss(num_slices=32, projector_dim=4, projector_hidden=8, dim=6)
    x = torch.randn(16, 6, requires_grad=True)
    value = loss(LossInputs(Embedding(x), Embedding(torch.randn(16, 6)), step=1))
    value.backward()
    assert torch.isfinite(value) and x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in loss.parameters())
    assert loss.get_config()["projector_dim"] == 4
    with pytest.raises(ValueError, match="projector_dim needs the embedding width"):
        IsotropyLoss(projector_dim=4)
    with pytest.raises(ValueError, match="projector_dim"):
        IsotropyLoss(projector_dim=-1, dim=6)


def test_the_training_loop_builds_the_projector_with_the_model_width(tiny_model_dir, tmp_path):
    from _training_helpers import tiny_config, write_pairs

    from ragcun.training import checkpoint as ckpt
    from ragcun.training.loop import train

    data = write_pairs(tmp_path / "train.jsonl", n=24)
    settings_ = {"head": {"gaussian": {"out_dim": 16}},
                 "loss": {"isotropy": {"num_slices": 32, "projector_dim": 4, "projector_hidden": 8}}}
    result = train(tiny_config(tiny_model_dir, tmp_path / "run", data, steps=2, save_every=2, settings=settings_))
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "run"))
    assert state["loss"]["losses.isotropy.projector.0.weight"].shape == (8, 16)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses)
