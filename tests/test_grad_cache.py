"""GradCache gives the uncached step's gradients, with SIGReg and a regularizer inside the loss."""

from __future__ import annotations

import pytest
import torch

from ragcun.data.training import TrainingBatch
from ragcun.losses.base import LossInputs
from ragcun.training.grad_cache import GradCache, forward_texts

pytestmark = pytest.mark.usefixtures("single_thread")  # one torch thread, restored after the module

TEXTS = ["what causes rain", "how do vaccines work", "tallest mountain on earth", "who wrote hamlet",
         "speed of light in vacuum", "boiling point of water", "largest ocean", "capital of australia"]


def make_batch(k: int = 1) -> TrainingBatch:
    docs = [f"{t} : an answer passage about {t.split()[-1]} with several extra words" for t in TEXTS]
    negs = [f"unrelated passage {i} {j} about something else entirely" for i in range(len(TEXTS)) for j in range(k)]
    return TrainingBatch(list(TEXTS), docs, negs, [f"d{i}" for i in range(len(TEXTS))],
                         [f"n{i}" for i in range(len(negs))])


def uncached_grads(model, loss, batch, step=3):
    model.zero_grad(set_to_none=True)
    dev = model.device
    q = forward_texts(model, model.tokenize, batch.queries, dev)
    p = forward_texts(model, model.tokenize, batch.positives, dev)
    n = forward_texts(model, model.tokenize, batch.negatives, dev)
    out = loss(LossInputs(q, p, n, batch.positive_ids, batch.negative_ids, step))
    out.total.backward()
    return out.total.detach(), {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}


def cached_grads(model, loss, batch, chunk, step=3):
    model.zero_grad(set_to_none=True)
    out = GradCache(model, model, chunk).step(batch, loss, step)
    return out.total, {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}


@pytest.fixture()
def setup(tiny_model):
    from ragcun.losses.composite import build_loss

    loss = build_loss("contrastive+0.5*isotropy+0.1*norm", {"loss": {"isotropy": {"num_slices": 64}}},
                      distance=tiny_model.distance)
    return tiny_model, loss


def assert_same(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:  # relative to the tensor's scale (chunked padding changes float round-off only)
        # (attention key biases have a gradient that is exactly 0 in theory: only round-off, hence atol)
        err = (a[key] - b[key]).abs().max()
        assert err <= 1e-4 * b[key].abs().max() + 1e-6, (key, float(err))


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_grad_cache_equals_uncached_step(setup, chunk):
    model, loss = setup
    model.eval()  # no dropout: chunked forwards see the same function
    batch = make_batch(k=2)
    ref_loss, ref = uncached_grads(model, loss, batch)
    got_loss, got = cached_grads(model, loss, batch, chunk)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same(got, ref)


def test_dropout_masks_are_replayed(setup):
    """In train mode the re-forward must draw pass 1's dropout masks: with one chunk per role, GradCache
    consumes the RNG exactly like the uncached step, so the gradients match with dropout on."""
    model, loss = setup
    model.train()
    batch = make_batch(k=1)
    torch.manual_seed(11)
    ref_loss, ref = uncached_grads(model, loss, batch)
    torch.manual_seed(11)
    got_loss, got = cached_grads(model, loss, batch, chunk=64)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same(got, ref)
    # and a wrong replay would be visible: different masks give a different gradient
    torch.manual_seed(12)
    _, other = uncached_grads(model, loss, batch)
    assert not torch.allclose(other["head.mean.weight"], ref["head.mean.weight"])


def test_logvar_head_without_logvar_loss(tiny_model_dir):
    """A head with log-variance trained by a loss that ignores it still gets (zero) gradients everywhere."""
    from ragcun.losses.composite import build_loss
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 8, "logvar": True}}})
    model.eval()
    loss = build_loss("contrastive")
    _, got = cached_grads(model, loss, TrainingBatch(TEXTS, TEXTS[::-1], [], None, None), chunk=3)
    assert torch.count_nonzero(got["head.logvar.weight"]) == 0
    assert torch.count_nonzero(got["head.mean.weight"]) > 0
