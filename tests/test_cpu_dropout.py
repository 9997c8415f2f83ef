"""ragcun.encoders.cpu_dropout: dropout masks from 16-bit random lanes, the attention that applies them, and
what installing them changes (training on a CPU) and does not (evaluation, weights, saved config)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from ragcun.encoders.cpu_dropout import (
    ATTENTION_NAME,
    FastDropout,
    attention_forward,
    dropout,
    install_fast_dropout,
    keep_mask,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def sdpa(query, key, value, mask, p=0.0):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(nn.Module(), query, key, value, mask, dropout=p, scaling=query.shape[-1] ** -0.5)[0]


def qkv(batch=3, heads=2, tokens=5, dim=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=g, dtype=dtype) for _ in range(3)]


def padding_mask(lengths, tokens):
    """transformers' SDPA mask for key padding: (B, 1, Tq, Tk), True where a query may attend."""
    keys = torch.arange(tokens)[None, :] < torch.tensor(lengths)[:, None]  # (B, Tk)
    return keys[:, None, None, :].expand(len(lengths), 1, tokens, tokens)


# -- the mask -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1 / 3])
def test_the_drop_rate_is_p_rounded_to_a_65536th_and_the_scale_keeps_the_expectation(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((1000, 1000), p)
    p_rounded = round(p * 65536) / 65536
    assert abs(p_rounded - p) <= 0.5 / 65536
    assert scale == pytest.approx(1 / (1 - p_rounded), rel=1e-15)
    rate = 1 - keep.float().mean().item()
    sigma = math.sqrt(p_rounded * (1 - p_rounded) / keep.numel())
    assert abs(rate - p_rounded) < 5 * sigma, (rate, p_rounded)


def test_every_16_bit_lane_is_uniform_so_the_mask_has_no_stripes():
    """Elements 0, 1, 2, 3 (mod 4) come from the four lanes of one 64-bit word: each drops at the same rate
    (random_() without a range would leave the top lane's sign bit 0 and never drop there)."""
    torch.manual_seed(1)
    keep, _ = keep_mask((250_000, 4), 0.5)
    rates = 1 - keep.float().mean(0)
    sigma = math.sqrt(0.25 / 250_000)
    assert torch.all((rates - 0.5).abs() < 5 * sigma), rates


def test_the_masks_follow_torchs_default_generator():
    """Seeding (and RNG state saved in a checkpoint, GradCache's replay, checkpointing's recomputation) gives the
    same masks; the next draw gives another."""
    torch.manual_seed(7)
    a, _ = keep_mask((64, 64), 0.1)
    b, _ = keep_mask((64, 64), 0.1)
    torch.manual_seed(7)
    again, _ = keep_mask((64, 64), 0.1)
    assert torch.equal(a, again) and not torch.equal(a, b)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1e-6])
def test_a_probability_without_a_mask_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability"):
        keep_mask((4,), p)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.01, 0.99), rows=st.integers(1, 40), cols=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_dropout_zeroes_or_scales_each_element(p, rows, cols, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.manual_seed(seed)
    keep, scale = keep_mask(x.shape, p)
    torch.manual_seed(seed)
    got = dropout(x, p, training=True)
    torch.testing.assert_close(got, torch.where(keep, x * scale, 0.0), rtol=0, atol=0)
    assert torch.equal(dropout(x, p, training=False), x)


def test_outside_training_or_at_p_0_it_is_torchs_dropout():
    x = torch.randn(8, 8)
    module = FastDropout(0.0)
    assert torch.equal(module(x), x)
    module = FastDropout(0.3).eval()
    assert torch.equal(module(x), x)
    torch.manual_seed(3)
    want = F.dropout(x, 1.0, True)
    assert torch.equal(dropout(x, 1.0, True), want)  # p = 1: every element dropped, as torch does


def test_ragcun_cpu_fast_dropout_0_keeps_torchs_masks(monkeypatch):
    monkeypatch.setenv("RAGCUN_CPU_FAST_DROPOUT", "0")
    x = torch.randn(32, 32)
    torch.manual_seed(4)
    want = F.dropout(x, 0.2, True)
    torch.manual_seed(4)
    assert torch.equal(FastDropout(0.2)(x), want)
    assert install_fast_dropout(nn.Sequential(nn.Dropout(0.2))) == {"dropout_modules": 0, "attention_models": 0}


# -- the attention ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 9), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       seed=st.integers(0, 2**31))
def test_without_dropout_it_is_transformers_sdpa_bit_for_bit(tokens, lengths, seed):
    lengths = [min(n, tokens) for n in lengths]
    q, k, v = qkv(batch=len(lengths), tokens=tokens, seed=seed)
    mask = padding_mask(lengths, tokens)
    want = sdpa(q, k, v, mask)
    got, weights = attention_forward(nn.Module(), q, k, v, mask, dropout=0.0, scaling=q.shape[-1] ** -0.5)
    assert weights is None and got.shape == (len(lengths), tokens, 2, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 9), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       p=st.floats(0.05, 0.9), seed=st.integers(0, 2**31))
def test_with_dropout_it_is_the_textbook_attention_with_the_drawn_mask(tokens, lengths, p, seed):
    """softmax(q k^T / sqrt(d) + padding), then the mask keep_mask draws (same seed), scaled, times v."""
    lengths = [min(n, tokens) for n in lengths]
    q, k, v = qkv(batch=len(lengths), tokens=tokens, seed=seed)
    mask = padding_mask(lengths, tokens)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
    torch.manual_seed(seed)
    keep, scale = keep_mask(probs.shape, p)
    want = (torch.where(keep, probs * scale, 0.0) @ v).transpose(1, 2)
    torch.manual_seed(seed)
    got, _ = attention_forward(nn.Module(), q, k, v, mask, dropout=p, scaling=q.shape[-1] ** -0.5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_averaged_over_masks_it_is_the_attention_without_dropout():
    q, k, v = qkv(batch=2, tokens=6)
    mask = padding_mask([6, 3], 6)
    torch.manual_seed(0)
    draws = torch.stack([attention_forward(nn.Module(), q, k, v, mask, dropout=0.3, scaling=0.5)[0]
                         for _ in range(4000)])
    want, _ = attention_forward(nn.Module(), q, k, v, mask, dropout=0.0, scaling=0.5)
    standard_error = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - want).abs() < 5 * standard_error + 1e-12)


def test_its_gradient_is_the_derivative_of_the_masked_attention():
    q, k, v = (t.requires_grad_() for t in qkv(batch=2, tokens=4, dim=3))
    mask = padding_mask([4, 2], 4)

    def fixed_masks(q, k, v):
        torch.manual_seed(11)  # the same mask on every evaluation gradcheck makes
        return attention_forward(nn.Module(), q, k, v, mask, dropout=0.25, scaling=0.7)[0]

    assert torch.autograd.gradcheck(fixed_masks, (q, k, v))


def test_bfloat16_projections_stay_bfloat16_under_autocast():
    q, k, v = qkv(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention_forward(nn.Module(), q, k, v, None, dropout=0.1, scaling=0.5)
    assert out.dtype == torch.bfloat16


# -- installed in a transformers model --------------------------------------------------------------------------
def test_installing_changes_training_only(tiny_model):
    before = copy.deepcopy(tiny_model).eval()
    replaced = install_fast_dropout(tiny_model)
    assert replaced["attention_models"] == 1 and replaced["dropout_modules"] > 0
    assert not any(type(m) is nn.Dropout for m in tiny_model.modules())
    assert tiny_model.encoder.model.config._attn_implementation == ATTENTION_NAME
    tiny_model.eval()
    texts = ["a short text", "a somewhat longer text with more words in it"]
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.embed(texts).mean, before.embed(texts).mean, rtol=0, atol=0)
    assert tiny_model.state_dict().keys() == before.state_dict().keys()

    tiny_model.train()
    torch.manual_seed(0)
    first = tiny_model.embed(texts).mean
    first.sum().backward()
    before.train()
    before.embed(texts).mean.sum().backward()
    with_grad = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert with_grad and with_grad == {n for n, p in before.named_parameters() if p.grad is not None}
    torch.manual_seed(0)
    assert torch.equal(tiny_model.embed(texts).mean, first)  # seeded: the same masks
    assert not torch.equal(tiny_model.embed(texts).mean, first)  # and dropout is on


def test_the_saved_config_does_not_name_the_attention(tiny_model, tmp_path):
    """A model trained with it loads anywhere (sentence-transformers, transformers) without ragcun."""
    install_fast_dropout(tiny_model)
    tiny_model.encoder.model.config.save_pretrained(tmp_path)
    assert ATTENTION_NAME not in (tmp_path / "config.json").read_text()


def test_training_installs_it(tiny_model_dir, tmp_path):
    from _training_helpers import tiny_config, write_pairs

    from ragcun.training.setup import build_training_model

    config = tiny_config(tiny_model_dir, tmp_path / "run", write_pairs(tmp_path / "pairs.jsonl", 8), steps=1)
    model = build_training_model(config)
    assert model.encoder.model.config._attn_implementation == ATTENTION_NAME
    assert any(isinstance(m, FastDropout) for m in model.modules())


@pytest.mark.parametrize(("dtype", "saved"), [(torch.float32, torch.bool), (torch.bfloat16, torch.bfloat16)])
def test_the_backward_pass_keeps_only_the_mask_and_float32_keeps_it_in_one_byte(dtype, saved):
    """float32 saves a boolean mask (as torch's dropout does: a float32 one would be 4 bytes an element of every
    attention matrix); 16-bit activations save a 0/1 mask of their own dtype, which multiplies faster."""
    x = torch.randn(16, 16, dtype=dtype, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = dropout(x, 0.25, training=True)
    assert [t.dtype for t in kept] == [saved] and kept[0].shape == x.shape
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).to(dtype) * (65536 / (65536 - round(0.25 * 65536))), rtol=0, atol=0)


def test_a_transformers_without_attention_interfaces_keeps_sdpa_and_still_gets_the_dropout(tiny_model, monkeypatch):
    from ragcun.encoders import cpu_dropout

    def missing():
        raise ImportError("cannot import name 'AttentionInterface'")

    monkeypatch.setattr(cpu_dropout, "_register", missing)
    replaced = install_fast_dropout(tiny_model)
    assert replaced["attention_models"] == 0 and replaced["dropout_modules"] > 0
    assert tiny_model.encoder.model.config._attn_implementation == "sdpa"
