"""Every registered component meets its kind's contract (ragcun.testing.contracts, documented in
ragcun.protocols): the checks a plugin author runs in their own tests, run here on whatever the registry holds,
built-ins and installed plugins alike (issue 26, section 5)."""

from __future__ import annotations

import inspect

import pytest
import torch

import ragcun
from ragcun import protocols
from ragcun.components import build, entry_of
from ragcun.losses.composite import build_loss
from ragcun.testing.contracts import check_distance, check_encoder, check_head, check_loss

pytestmark = pytest.mark.usefixtures("single_thread")

D = 8  # embedding width the losses are built for


def entries(kind: str):
    """Every component of ``kind`` the registry holds when the tests are collected: the built-ins and the installed
    plugins' (each of those runs with its plugin loaded: tests/conftest.py loads only the built-ins otherwise)."""
    return [pytest.param(entry.name, id=entry.name,
                         marks=[pytest.mark.needs_plugins(entry.provider)] if entry.provider != "ragcun" else [])
            for entry in ragcun.get_registry().entries(kind)]


@pytest.mark.parametrize("name", entries("distance"))
def test_every_registered_distance_meets_the_contract(name):
    distance = build("distance", name)
    assert isinstance(distance, protocols.Distance)
    check_distance(distance, logvar="logvar" in set(getattr(distance, "needs", {"mean"})))


@pytest.mark.parametrize("name", entries("head"))
def test_every_registered_head_meets_the_contract(name):
    check_head(ragcun.get_registry().get("head", name).load())
    head = build("head", name, in_dim=12)
    assert isinstance(head, protocols.Head)
    if getattr(head, "calibrates", False):
        assert isinstance(head, protocols.CalibratingHead)
    if callable(getattr(head, "fit", None)):
        assert isinstance(head, protocols.FittedHead)


@pytest.mark.parametrize("name", entries("loss"))
@pytest.mark.filterwarnings("ignore:loss.distill-kl. the teacher's scores spread")  # random teacher scores
def test_every_registered_loss_meets_the_contract(name):
    entry = ragcun.get_registry().get("loss", name)
    spec = f"{name}:contrastive" if entry.extra.get("wraps") else name  # a wrapper takes a loss
    composite = build_loss(spec, dim=D)
    [(term, weight, loss)] = list(composite.terms())
    assert (term, weight) == (name, 1.0) and entry_of(loss) is entry
    assert isinstance(loss, protocols.Loss)
    check_loss(loss, dim=D)
    check_loss(composite, dim=D)


@pytest.mark.parametrize("name", entries("encoder"))
def test_every_registered_encoder_meets_the_contract(name, tiny_model_dir):
    """An encoder that takes a ``path`` (``hf:PATH``) is checked on the tiny offline model, so no weights are
    downloaded or assembled; the contract is about the class's code."""
    takes_path = "path" in inspect.signature(ragcun.get_registry().get("encoder", name).load()).parameters
    encoder = build("encoder", f"{name}:{tiny_model_dir}" if takes_path else name)
    assert isinstance(encoder, protocols.Encoder)
    check_encoder(encoder)


def test_the_checks_catch_what_they_promise():
    from torch import nn

    from ragcun.embedding import Embedding
    from ragcun.heads.gaussian import GaussianHead

    class Unseeded(nn.Module):  # fresh randomness at every call: ranks would disagree
        def forward(self, inputs):
            return (inputs.queries.mean * torch.randn(inputs.queries.mean.shape)).sum()

    with pytest.raises(AssertionError, match="seed randomness from inputs.step"):
        check_loss(Unseeded())

    class NotScalar(nn.Module):
        def forward(self, inputs):
            return inputs.queries.mean.sum(dim=1)

    with pytest.raises(AssertionError, match="scalar"):
        check_loss(NotScalar())

    class OldCalibration(GaussianHead):  # a calibrating head that cannot agree with the other ranks
        def calibrate(self, features, *, center=None):
            return super().calibrate(features, center=center)

    with pytest.raises(AssertionError, match="ctx="):
        check_head(OldCalibration, out_dim=6)

    class PaddingLeaks(nn.Module):
        dim = 2

        def tokenize(self, texts):
            width = max(len(t) for t in texts)
            return {"x": torch.tensor([[float(len(t)), float(width)] for t in texts])}

        def forward(self, features):
            return features["x"]

        def get_config(self):
            return {}

    with pytest.raises(AssertionError, match="depends on the other texts"):
        check_encoder(PaddingLeaks())
    assert isinstance(Embedding(torch.zeros(1, 1)), Embedding)
