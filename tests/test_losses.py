"""Losses (ragcun/losses/): properties for every built-in loss, known values and limits, the composite."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from ragcun.components import build, check_compatible
from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs, LossOutput
from ragcun.losses.composite import CompositeLoss, build_loss
from ragcun.stats.sigreg import sigreg

FAST = settings(max_examples=20, deadline=None)


pytestmark = pytest.mark.usefixtures("single_thread")
D = 6

# name -> settings small enough for property tests
LOSSES = {
    "contrastive": {"temperature": 0.1},
    "isotropy": {"num_slices": 16},
    "variance-covariance": {},
    "uniformity": {},
    "norm": {},
    "gaussian-kl": {},
}
DISTANCES = ["euclidean", "sqeuclidean", "cosine", "dot", "wasserstein", "expected-sqeuclidean"]


def make(name, distance="euclidean", **overrides):
    return build("loss", name, {"loss": {name: {**LOSSES.get(name, {}), **overrides}}},
                 distance=build("distance", distance))


def test_every_builtin_loss_is_registered_and_tested():
    from ragcun.plugins import get_registry

    builtin = {e.name for e in get_registry().entries("loss") if e.provider == "ragcun"}
    # the recipe losses need teacher scores or wrap another loss: their properties have modules of their own
    tested_elsewhere = {"margin-mse": "test_distill_losses.py", "distill-kl": "test_distill_losses.py",
                        "matryoshka": "test_matryoshka.py"}
    assert builtin == set(LOSSES) | set(tested_elsewhere)
    assert all((Path(__file__).parent / module).is_file() for module in tested_elsewhere.values())
    for alias, name in [("infonce", "contrastive"), ("sigreg", "isotropy"), ("vicreg", "variance-covariance")]:
        assert get_registry().get("loss", alias).name == name


# -- strategies ----------------------------------------------------------------------------------------------

@st.composite
def batches(draw, bound=100.0, min_b=2, max_b=6, max_k=2):
    """A LossInputs with finite embeddings (|x| <= bound), log-variances, hard negatives, duplicate ids and
    (sometimes) relevance lists."""
    b = draw(st.integers(min_b, max_b))
    k = draw(st.integers(0, max_k))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, bound]))
    g = torch.Generator().manual_seed(seed)

    def emb(n):
        mean = ((torch.rand(n, D, generator=g, dtype=torch.float64) * 2 - 1) * scale)
        if draw(st.booleans()):  # exact repeats and zero vectors are legal input too
            mean[0] = mean[-1]
        logvar = (torch.rand(n, D, generator=g, dtype=torch.float64) * 10 - 5)
        return Embedding(mean.float(), logvar.float())

    ids = st.sampled_from(["a", "b", "c", "d"])
    return LossInputs(emb(b), emb(b), emb(b * k) if k else None,
                      positive_ids=draw(st.lists(ids, min_size=b, max_size=b)),
                      negative_ids=draw(st.lists(ids, min_size=b * k, max_size=b * k)) if k else None,
                      step=draw(st.integers(0, 100)),
                      relevant_ids=draw(st.none() | st.lists(st.lists(ids, max_size=3), min_size=b, max_size=b)))


def leaves(inputs: LossInputs) -> list[torch.Tensor]:
    out = []
    for e in (inputs.queries, inputs.positives, inputs.negatives):
        if e is not None:
            e.mean.requires_grad_(True)
            e.logvar.requires_grad_(True)
            out += [e.mean, e.logvar]
    return out


def permuted(inputs: LossInputs, perm: torch.Tensor) -> LossInputs:
    """The same batch with the queries (and their positives, hard negatives and ids) in another order."""
    k = inputs.negatives_per_query
    neg_perm = (perm[:, None] * k + torch.arange(k)[None, :]).reshape(-1)
    pick = lambda ids, p: None if ids is None else [ids[i] for i in p.tolist()]  # noqa: E731
    return LossInputs(inputs.queries[perm], inputs.positives[perm],
                      None if inputs.negatives is None else inputs.negatives[neg_perm],
                      pick(inputs.positive_ids, perm), pick(inputs.negative_ids, neg_perm), inputs.step,
                      pick(inputs.relevant_ids, perm))


# -- properties for every loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
@FAST
@given(inputs=batches())
def test_finite_value_and_gradients_for_finite_input(name, inputs):
    params = leaves(inputs)
    loss = make(name, distance="wasserstein" if name == "contrastive" else "euclidean")
    value = loss(inputs)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    for p in params:
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("distance", DISTANCES)
@FAST
@given(inputs=batches())
def test_contrastive_is_finite_with_every_distance(distance, inputs):
    params = leaves(inputs)
    value = make("contrastive", distance, symmetric=True, learnable_temperature=True)(inputs)
    value.backward()
    assert torch.isfinite(value) and all(p.grad is None or torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize("name", sorted(LOSSES))
@FAST
@given(inputs=batches(bound=3.0), perm_seed=st.integers(0, 10_000))
def test_permuting_the_batch_leaves_the_loss_and_permutes_the_gradients(name, inputs, perm_seed):
    perm = torch.randperm(inputs.batch_size, generator=torch.Generator().manual_seed(perm_seed))
    other = permuted(inputs, perm)
    a, b = leaves(inputs), leaves(other)
    loss = make(name, symmetric=True) if name == "contrastive" else make(name)
    va, vb = loss(inputs), loss(other)
    torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)
    va.backward()
    vb.backward()
    # every input's gradient follows its row: queries and positives by perm, hard negatives by their blocks
    k = inputs.negatives_per_query
    neg_perm = (perm[:, None] * k + torch.arange(k)[None, :]).reshape(-1)
    orders = [perm, perm, perm, perm, neg_perm, neg_perm]  # q.mean, q.logvar, p.mean, p.logvar, n.mean, n.logvar
    for index, (x, y) in enumerate(zip(a, b)):
        assert (x.grad is None) == (y.grad is None), index
        if x.grad is not None:
            torch.testing.assert_close(x.grad[orders[index]], y.grad, rtol=1e-3, atol=1e-4,
                                       msg=lambda m, index=index: f"{index}: {m}")


def test_distributed_helpers_are_identities_on_one_process():
    from ragcun.distributed import all_gather_sizes, all_reduce_sum, gather_with_grad, world

    x = torch.randn(3, 2)
    assert world() == (0, 1) and all_gather_sizes(3) == [3]
    assert gather_with_grad(x) is x and all_reduce_sum(x) is x


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_ignore_autocast_and_accept_half_precision(name):
    # bfloat16 would swamp ||q||^2 + ||d||^2 - 2 q.d (norms ~ D for unnormalized vectors) and the means of
    # cosines; the losses compute in float32 whatever autocast says, and accept bfloat16 embeddings.
    g = torch.Generator().manual_seed(9)
    q = torch.randn(64, 256, generator=g) * 2
    lv = torch.randn(64, 256, generator=g) * 0.1
    inputs = LossInputs(Embedding(q, lv), Embedding(q + torch.randn(64, 256, generator=g), lv))
    # temperature 10: logit gaps of a few units, so the loss is far from 0 and sensitive to round-off
    loss = make(name, "wasserstein", temperature=10.0) if name == "contrastive" else make(name)
    reference = loss(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(inputs)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=1e-5, atol=1e-6)
    half = LossInputs(Embedding(q.bfloat16(), lv.bfloat16()),
                      Embedding(inputs.positives.mean.bfloat16(), lv.bfloat16()))
    value = loss(half)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, reference, rtol=0.05, atol=0.05)  # only the inputs' rounding differs


# -- composite -----------------------------------------------------------------------------------------------

@FAST
@given(inputs=batches(bound=3.0), w=st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3))
def test_composite_total_is_the_weighted_sum_of_its_terms(inputs, w):
    spec = f"{w[0]!r}*contrastive+{w[1]!r}*isotropy+{w[2]!r}*norm"
    settings_ = {"loss": {"isotropy": {"num_slices": 16}, "contrastive": {"temperature": 0.5}}}
    composite = build_loss(spec, settings_, distance=build("distance", "euclidean"))
    out = composite(inputs)
    assert isinstance(out, LossOutput) and list(out.terms) == ["contrastive", "isotropy", "norm"]
    torch.testing.assert_close(out.total, sum(out.terms.values()))
    for weight, name in zip(w, ["contrastive", "isotropy", "norm"]):
        alone = make(name, temperature=0.5) if name == "contrastive" else make(name)
        torch.testing.assert_close(out.terms[name], weight * alone(inputs), rtol=1e-5, atol=1e-5)


def test_build_loss_canonical_names_settings_and_needs():
    loss = build_loss("infonce+0.05*sigreg+0.01*norm", {"loss": {"sigreg": {"num_slices": 8}}},
                      distance=build("distance", "cosine"))
    assert isinstance(loss, CompositeLoss)
    assert loss.spec == "contrastive+0.05*isotropy+0.01*norm"
    assert loss.losses["isotropy"].num_slices == 8
    assert type(loss.losses["contrastive"].distance).__name__ == "CosineDistance"
    assert loss.needs == {"mean"}
    assert build_loss("contrastive+gaussian-kl").needs == {"mean", "logvar"}
    assert build_loss("contrastive", distance=build("distance", "w2")).needs == {"mean", "logvar"}


def test_needs_mismatch_fails_before_training_with_the_fix():
    head = build("head", "gaussian", in_dim=8)
    loss = build_loss("contrastive+0.1*gaussian-kl")
    with pytest.raises(ValueError, match=r"--set head\.gaussian\.logvar=true"):
        check_compatible(head, loss, head_name="gaussian", distance_name="contrastive+0.1*gaussian-kl")
    check_compatible(build("head", "gaussian", {"head": {"gaussian": {"logvar": True}}}, in_dim=8), loss,
                     head_name="gaussian", distance_name="loss")


@pytest.mark.parametrize("spec,match", [
    ("contrastive+isotrpy", "did you mean 'isotropy'"),
    ("contrastive+sigreg+isotropy", "twice"),
    ("x*contrastive", "bad weight"),
    ("", "empty spec"),
])
def test_build_loss_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        build_loss(spec)


@pytest.mark.parametrize("name,setting,value", [
    ("contrastive", "temperature", 0.0), ("contrastive", "temperature", -1.0), ("contrastive", "temperature", "x"),
    ("isotropy", "num_slices", 0), ("isotropy", "t_max", -3.0), ("isotropy", "num_points", 1),
    ("isotropy", "apply_to", "everything"), ("variance-covariance", "gamma", 0.0), ("uniformity", "t", -2.0),
    ("norm", "target", 0.0), ("gaussian-kl", "apply_to", "query"), ("isotropy", "num_slice", 3),
])
def test_bad_settings_are_value_errors(name, setting, value):
    with pytest.raises(ValueError, match=setting):
        build_loss(name, {"loss": {name: {setting: value}}})


# -- contrastive -----------------------------------------------------------------------------------------------

def _manual_infonce(q, cands, labels, tau, sim, masked=()):
    logits = sim(q, cands) / tau
    for i, j in masked:
        logits[i, j] = float("-inf")
    return F.cross_entropy(logits, labels)


def test_contrastive_known_value_with_hard_negatives():
    g = torch.Generator().manual_seed(0)
    q, p, n = (torch.randn(m, 4, generator=g, dtype=torch.float64) for m in (3, 3, 6))
    loss = make("contrastive", "sqeuclidean", temperature=0.7)
    value = loss(LossInputs(Embedding(q), Embedding(p), Embedding(n)))
    expected = _manual_infonce(q, torch.cat([p, n]), torch.arange(3), 0.7, lambda a, b: -torch.cdist(a, b) ** 2)
    torch.testing.assert_close(value, expected)


def test_contrastive_symmetric_known_value():
    g = torch.Generator().manual_seed(1)
    q, p = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    cos = lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # noqa: E731
    value = make("contrastive", "cosine", temperature=0.05, symmetric=True)(LossInputs(Embedding(q), Embedding(p)))
    labels = torch.arange(4)
    expected = 0.5 * (_manual_infonce(q, p, labels, 0.05, cos) + _manual_infonce(p, q, labels, 0.05, cos))
    torch.testing.assert_close(value, expected)


def test_contrastive_masks_duplicates_of_the_positive_only():
    g = torch.Generator().manual_seed(2)
    q, p = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    n = torch.randn(3, 4, generator=g, dtype=torch.float64)  # one hard negative per query
    n[1] = p[1]  # query 1's positive mined again as its own "negative": must not count
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), positive_ids=["a", "b", "c"],
                        negative_ids=["c", "b", "x"])  # "c" (query 2's positive) is mined for query 0
    euclid = lambda a, b: -torch.cdist(a, b)  # noqa: E731
    cands, labels = torch.cat([p, n]), torch.arange(3)
    value = make("contrastive", "euclidean", temperature=0.3)(inputs)
    # columns: p_a p_b p_c n_c n_b n_x. Column 4 (n_b) is query 1's own document again and column 3 (n_c)
    # is query 2's: both are masked for those queries; n_c stays a real negative of query 0.
    torch.testing.assert_close(value, _manual_infonce(q, cands, labels, 0.3, euclid, masked=[(1, 4), (2, 3)]))
    unmasked = make("contrastive", "euclidean", temperature=0.3, mask_duplicates=False)(inputs)
    torch.testing.assert_close(unmasked, _manual_infonce(q, cands, labels, 0.3, euclid))
    assert float(unmasked) > float(value)
    # two queries sharing a positive: each one's positive is not a negative of the other
    shared = LossInputs(Embedding(q), Embedding(p), positive_ids=["a", "a", "c"])
    torch.testing.assert_close(make("contrastive", "euclidean", temperature=0.3)(shared),
                               _manual_infonce(q, p, labels, 0.3, euclid, masked=[(0, 1), (1, 0)]))


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine", "wasserstein", "expected-sqeuclidean"])
@pytest.mark.parametrize("seed", range(3))
def test_contrastive_falls_as_positives_move_closer(distance, seed):
    g = torch.Generator().manual_seed(seed)
    q, far, n = (torch.randn(m, 16, generator=g, dtype=torch.float64) for m in (8, 8, 16))
    lv = torch.full((8, 16), -1.0, dtype=torch.float64)
    loss = make("contrastive", distance, temperature=0.5)
    values = []
    for s in (1.0, 0.8, 0.6, 0.4, 0.2, 0.0):
        p = q + s * (far - q)  # every positive slides along the segment to its query
        values.append(float(loss(LossInputs(Embedding(q, lv), Embedding(p, lv), Embedding(n, lv.repeat(2, 1))))))
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_contrastive_learnable_temperature_is_a_trained_parameter():
    fixed = make("contrastive", temperature=0.1)
    assert list(fixed.parameters()) == [] and fixed.scale.item() == pytest.approx(10.0)
    learn = make("contrastive", temperature=0.1, learnable_temperature=True)
    (param,) = list(learn.parameters())
    q = torch.randn(4, 3)
    learn(LossInputs(Embedding(q), Embedding(q + 0.1))).backward()
    assert param.grad is not None and param.grad.abs() > 0
    with torch.no_grad():
        param.fill_(math.log(1e6))
    assert learn.scale.item() == pytest.approx(100.0)  # clamped at max_scale


def test_contrastive_rejects_inconsistent_batches():
    loss = make("contrastive")
    with pytest.raises(ValueError, match="positives"):
        loss(LossInputs(Embedding(torch.randn(3, 2)), Embedding(torch.randn(2, 2))))
    with pytest.raises(ValueError, match="multiple"):
        loss(LossInputs(Embedding(torch.randn(3, 2)), Embedding(torch.randn(3, 2)), Embedding(torch.randn(4, 2))))
    with pytest.raises(ValueError, match="ids"):
        loss(LossInputs(Embedding(torch.randn(3, 2)), Embedding(torch.randn(3, 2)), positive_ids=["a"]))


# -- isotropy ----------------------------------------------------------------------------------------------------

def test_isotropy_is_sigreg_on_the_selected_embeddings():
    g = torch.Generator().manual_seed(3)
    q, p, n = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g) * 2, torch.randn(64, 8, generator=g)
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), step=5)
    ref_q = sigreg(q, num_slices=16, step=5)
    ref_d = sigreg(torch.cat([p, n]), num_slices=16, step=5)
    torch.testing.assert_close(make("isotropy", apply_to="queries")(inputs), ref_q)
    torch.testing.assert_close(make("isotropy", apply_to="documents")(inputs), ref_d)
    torch.testing.assert_close(make("isotropy")(inputs), (ref_q + ref_d) / 2)
    # directions follow the step (and the seed), not the global RNG
    other_step = LossInputs(Embedding(q), Embedding(p), Embedding(n), step=6)
    assert float(make("isotropy")(other_step)) != float(make("isotropy")(inputs))
    assert float(make("isotropy", seed=1)(inputs)) != float(make("isotropy")(inputs))


def test_isotropy_gradient_descent_makes_a_skewed_batch_more_gaussian():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(256, 4, generator=g) * torch.tensor([0.2, 3.0, 1.0, 1.0]) + 1.0).requires_grad_(True)
    loss = make("isotropy", num_slices=64, apply_to="queries")
    opt = torch.optim.Adam([x], lr=0.05)
    first = None
    for step in range(60):
        value = loss(LossInputs(Embedding(x), Embedding(x.detach()), step=step))
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(sigreg(x.detach(), num_slices=256, step=999)) < 0.2 * first


# -- regularizers ------------------------------------------------------------------------------------------------

def test_variance_covariance_known_value():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)
    cov = torch.cov(x.T)
    variance = torch.relu(1.0 - torch.sqrt(torch.diagonal(cov) + 1e-4)).mean()
    off = cov - torch.diag(torch.diagonal(cov))
    expected = 2.0 * variance + 0.5 * off.square().sum() / 4
    loss = make("variance-covariance", variance_weight=2.0, covariance_weight=0.5, apply_to="queries")
    torch.testing.assert_close(loss(LossInputs(Embedding(x), Embedding(x))), expected)


def test_variance_covariance_limits():
    g = torch.Generator().manual_seed(6)
    loss = make("variance-covariance", apply_to="queries")
    white = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    assert float(loss(LossInputs(Embedding(white), Embedding(white)))) < 0.01
    collapsed = torch.ones(10, 4, dtype=torch.float64)
    assert float(loss(LossInputs(Embedding(collapsed), Embedding(collapsed)))) == pytest.approx(1 - math.sqrt(1e-4))


def test_uniformity_matches_wang_and_isola():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)

    def reference(v, t=2.0):  # the paper's definition over unordered pairs
        return torch.pdist(v, p=2).pow(2).mul(-t).exp().mean().log()

    inputs = LossInputs(Embedding(x), Embedding(x))
    torch.testing.assert_close(make("uniformity", apply_to="queries")(inputs), reference(F.normalize(x, dim=-1)))
    raw = make("uniformity", apply_to="queries", normalize=False, t=0.5)
    torch.testing.assert_close(raw(inputs), reference(x, 0.5))
    # far-apart raw vectors underflow exp() in the naive form; the shifted form stays finite
    far = x * 1e3
    assert torch.isfinite(make("uniformity", normalize=False)(LossInputs(Embedding(far), Embedding(far))))


def test_norm_loss():
    x = torch.randn(10, 8, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(8)  # every squared norm is D = 8
    assert float(make("norm")(LossInputs(Embedding(x), Embedding(x)))) == pytest.approx(0.0, abs=1e-12)
    assert float(make("norm")(LossInputs(Embedding(2 * x), Embedding(2 * x)))) == pytest.approx(9.0)  # (4 - 1)^2
    doubled = LossInputs(Embedding(2 * x), Embedding(2 * x))
    assert float(make("norm", target=32.0)(doubled)) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(8)
    mu, logvar = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    e = Embedding(mu, logvar)
    loss = make("gaussian-kl", apply_to="queries", per_dimension=False)
    torch.testing.assert_close(loss(LossInputs(e, e)), expected)
    torch.testing.assert_close(make("gaussian-kl", apply_to="queries")(LossInputs(e, e)), expected / 3)
    zero = Embedding(torch.zeros(4, 3), torch.zeros(4, 3))
    assert float(make("gaussian-kl")(LossInputs(zero, zero))) == 0.0


def test_gaussian_kl_without_logvar_names_the_fix():
    e = Embedding(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"--set head\.gaussian\.logvar=true"):
        make("gaussian-kl")(LossInputs(e, e))
