"""ragcun.encoders.cpu_fusion: the feed-forward GELU fused into its product for bfloat16 CPU inference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ragcun.encoders.cpu_fusion import (
    LinearGELU,
    fuse_linear_gelu,
    fused_gelu_available,
)

pytestmark = pytest.mark.usefixtures("single_thread")
needs_fusion = pytest.mark.skipif(not fused_gelu_available(),
                                  reason="needs oneDNN's fused linear and a CPU with native bfloat16")


def linear(n_in=48, n_out=96, dtype=torch.bfloat16):
    torch.manual_seed(0)
    layer = nn.Linear(n_in, n_out)
    return layer.to(dtype)


@needs_fusion
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (1, 1, 48)])
def test_fused_equals_the_two_steps_up_to_one_bfloat16_rounding(shape):
    layer = linear()
    x = torch.randn(*shape).bfloat16()
    with torch.inference_mode():
        want = F.gelu(F.linear(x.float(), layer.weight.float(), layer.bias.float()))  # float32 reference
        got = LinearGELU(layer)(x)
    assert got.shape == (*shape[:-1], 96) and got.dtype == torch.bfloat16
    # one rounding to bfloat16 (8 bits of mantissa): relative 2^-8, plus the bf16 inputs' own products
    torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=2e-2)


@needs_fusion
def test_a_float32_input_under_autocast_is_cast_like_autocast_would():
    layer = linear()
    x = torch.randn(4, 6, 48)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.gelu(layer(x))
        got = LinearGELU(layer)(x)
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-6, atol=3e-2)


def test_with_autograd_or_in_float32_it_is_exactly_the_two_steps():
    for dtype in (torch.float32, torch.bfloat16):
        layer = linear(dtype=dtype)
        layer.requires_grad_(True)
        x = torch.randn(5, 48).to(dtype)
        got = LinearGELU(layer)(x)
        assert got.requires_grad
        torch.testing.assert_close(got, F.gelu(layer(x)), rtol=0, atol=0)


@needs_fusion
def test_a_bert_encoder_is_fused_once_per_layer_and_embeds_the_same(tiny_model):
    model = copy.deepcopy(tiny_model).to(torch.bfloat16).eval()
    texts = ["a short query", "a much longer document about retrieval with several more words in it"]
    with torch.inference_mode():
        before = torch.from_numpy(model.encode(texts))
        fused = fuse_linear_gelu(model)
        after = torch.from_numpy(model.encode(texts))
    assert fused == model.encoder.model.config.num_hidden_layers
    assert sum(isinstance(m, LinearGELU) for m in model.modules()) == fused
    assert F.cosine_similarity(before, after).min() > 0.999


def test_nothing_is_fused_when_turned_off_or_where_the_activation_is_not_exact_gelu(tiny_model, monkeypatch):
    from transformers.activations import ACT2FN

    monkeypatch.setenv("RAGCUN_CPU_FUSION", "0")
    assert not fused_gelu_available() and fuse_linear_gelu(copy.deepcopy(tiny_model)) == 0
    monkeypatch.delenv("RAGCUN_CPU_FUSION")
    if not fused_gelu_available():
        pytest.skip("needs oneDNN's fused linear and a CPU with native bfloat16")
    block = nn.Module()
    block.dense, block.intermediate_act_fn = nn.Linear(4, 8), ACT2FN["gelu_new"]  # the tanh approximation
    assert fuse_linear_gelu(block) == 0 and isinstance(block.dense, nn.Linear)
