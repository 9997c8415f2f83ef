"""--gradient-checkpointing: the same gradients and training as without it, with fewer activations kept."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import tiny_config, write_pairs
from test_grad_cache import TEXTS, assert_same

from ragcun.training.loop import train
from ragcun.training.setup import enable_gradient_checkpointing

pytestmark = pytest.mark.usefixtures("single_thread")  # one torch thread, restored after the module

DOCS = [f"{t} : an answer passage about {t.split()[-1]} with several extra words" for t in TEXTS]


def step(model, seed: int = 5):
    """One loss + backward in train mode (dropout on); the gradients and the bytes autograd saved for backward."""
    from ragcun.training.grad_cache import forward_texts

    model.train()
    model.zero_grad(set_to_none=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q = forward_texts(model, model.tokenize, TEXTS, model.device)
        p = forward_texts(model, model.tokenize, DOCS, model.device)
        loss = torch.cdist(q.mean, p.mean).diagonal().mean()
    loss.backward()
    return loss.detach(), {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}, sum(saved)


def test_same_gradients_with_dropout_and_fewer_saved_activations(tiny_model):
    ref_loss, ref, ref_bytes = step(tiny_model)
    enable_gradient_checkpointing(tiny_model.encoder, "tiny")
    got_loss, got, got_bytes = step(tiny_model)
    torch.testing.assert_close(got_loss, ref_loss, rtol=0, atol=0)  # the same dropout masks in the forward
    assert_same(got, ref)  # and in the recomputation
    assert got_bytes < 0.7 * ref_bytes, (got_bytes, ref_bytes)


def test_training_with_it_follows_the_same_losses(tiny_model_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    plain = train(tiny_config(tiny_model_dir, tmp_path / "plain", pairs, steps=4))
    ckpt = train(tiny_config(tiny_model_dir, tmp_path / "ckpt", pairs, steps=4, gradient_checkpointing=True))
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)


def test_an_encoder_without_support_names_the_flag_and_the_alternative():
    with pytest.raises(ValueError, match=r"--gradient-checkpointing: the encoder mlp \(Linear\).*--grad-cache-chunk"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "mlp")



def test_no_cache_warning_from_transformers(tiny_model_dir):
    """An encoder keeps no key/value cache: enabling checkpointing turns the config's use_cache off, so
    transformers' "use_cache=True is incompatible with gradient checkpointing" line stays out of ragcun's output."""
    import logging

    from transformers.utils import logging as hf_logging

    from ragcun.model import EmbeddingModel

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    cache_clear = getattr(hf_logging.warning_once, "cache_clear", None)
    if cache_clear is not None:  # warning_once says a message once per process: let this test see it
        cache_clear()
    try:
        model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "identity", "cosine")
        model.encoder.model.config.use_cache = True  # as BERT-style configs ship
        enable_gradient_checkpointing(model.encoder, "tiny")
        step(model)
    finally:
        library.removeHandler(handler)
    assert not [r for r in records if "incompatible with gradient checkpointing" in r], records
