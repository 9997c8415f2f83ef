"""Distillation losses (ragcun/losses/distill.py): margin-mse and distill-kl, for every distance.

Known values against a float64 reference, the properties that define them (a student equal to its teacher has
zero loss and zero gradient; a per-query shift of the teacher's scores changes nothing), the scale contract
(a teacher on another scale or sign warns, naming the setting that maps it) and the errors without teacher
scores. The 2-rank gloo checks are in tests/test_recipes_distributed.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from ragcun.components import build
from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs
from ragcun.losses.composite import build_loss
from ragcun.losses.distill import TeacherScaleWarning, own_candidate_similarity

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = settings(max_examples=25, deadline=None)
D = 6
DISTANCES = ["euclidean", "sqeuclidean", "cosine", "dot", "wasserstein", "expected-sqeuclidean"]
LOSSES = {"margin-mse": {}, "distill-kl": {"temperature": 0.5}}


def make(name, distance="euclidean", **overrides):
    return build("loss", name, {"loss": {name: {**LOSSES[name], "check_scale": False, **overrides}}},
                 distance=build("distance", distance))


@st.composite
def batches(draw, min_b=1, max_b=5, max_k=3, bound=10.0):
    """Embeddings (means and log-variances, float64) with K >= 1 hard negatives per query."""
    b = draw(st.integers(min_b, max_b))
    k = draw(st.integers(1, max_k))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, bound]))
    g = torch.Generator().manual_seed(seed)

    def emb(n):
        mean = (torch.rand(n, D, generator=g, dtype=torch.float64) * 2 - 1) * scale
        if draw(st.booleans()):
            mean[0] = mean[-1]  # exact repeats are legal input
        return Embedding(mean, torch.rand(n, D, generator=g, dtype=torch.float64) * 4 - 2)

    return emb(b), emb(b), emb(b * k)


def leaves(*embeddings):
    out = []
    for e in embeddings:
        e.mean.requires_grad_(True)
        e.logvar.requires_grad_(True)
        out += [e.mean, e.logvar]
    return out


def teacher_like_student(name, distance, q, p, n, **settings_):
    """Teacher scores on which ``name`` (with ``settings_``) sees exactly the student's own scores."""
    with torch.no_grad():
        sims = own_candidate_similarity(build("distance", distance), q.detach(), p.detach(), n.detach())
    if name == "margin-mse":
        return sims / settings_.get("temperature", 1.0) / settings_.get("teacher_scale", 1.0)
    return sims / settings_.get("temperature", 0.5) * settings_.get("teacher_temperature", 1.0) \
        / settings_.get("teacher_scale", 1.0)


# -- registration and the grammar ------------------------------------------------------------------------------

def test_registered_with_aliases_and_composable_with_isotropy():
    from ragcun.plugins import get_registry

    registry = get_registry()
    assert registry.get("loss", "distill-margin-mse").name == "margin-mse"
    assert registry.get("loss", "kl-distill").name == "distill-kl"
    loss = build_loss("distill-margin-mse+0.2*isotropy", {"loss": {"isotropy": {"num_slices": 8}}},
                      distance=build("distance", "euclidean"))
    assert loss.spec == "margin-mse+0.2*isotropy"
    g = torch.Generator().manual_seed(0)
    q, p, n = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g), torch.randn(8, D, generator=g)
    teacher = torch.randn(4, 3, generator=g)
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TeacherScaleWarning)
        out = loss(inputs)
    torch.testing.assert_close(out.total, out.terms["margin-mse"] + out.terms["isotropy"])
    torch.testing.assert_close(out.terms["margin-mse"], make("margin-mse")(inputs))


# -- known values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distance,sim", [
    ("euclidean", lambda a, b: -torch.cdist(a, b)),
    ("sqeuclidean", lambda a, b: -torch.cdist(a, b) ** 2),
    ("cosine", lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T),
    ("dot", lambda a, b: a @ b.T),
])
def test_known_values_against_a_float64_reference(distance, sim):
    g = torch.Generator().manual_seed(3)
    b, k = 3, 2
    q, p, n = (torch.randn(m, D, generator=g, dtype=torch.float64) for m in (b, b, b * k))
    teacher = torch.randn(b, 1 + k, generator=g, dtype=torch.float64) * 3
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher)
    s = torch.stack([torch.cat([sim(q[i:i + 1], p[i:i + 1])[0], sim(q[i:i + 1], n[i * k:(i + 1) * k])[0]])
                     for i in range(b)])  # (B, 1 + K)
    # margin-mse: (student margin / temperature - teacher_scale * teacher margin)^2, mean over (query, negative)
    expected = ((s[:, :1] - s[:, 1:]) / 2.0 - 0.5 * (teacher[:, :1] - teacher[:, 1:])).square().mean()
    torch.testing.assert_close(make("margin-mse", distance, temperature=2.0, teacher_scale=0.5)(inputs), expected)
    # distill-kl: KL(softmax(teacher_scale * T / t_T) || softmax(s / t_S)), mean over queries
    p_t = torch.softmax(-1.0 * teacher / 0.7, dim=1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / 0.3, dim=1))).sum(1).mean()
    value = make("distill-kl", distance, temperature=0.3, teacher_temperature=0.7, teacher_scale=-1.0)(inputs)
    torch.testing.assert_close(value, expected)


def test_own_candidate_similarity_in_blocks_equals_the_full_matrix(monkeypatch):
    import ragcun.losses.distill as distill

    g = torch.Generator().manual_seed(4)
    b, k = 7, 3
    q, p, n = (Embedding(torch.randn(m, D, generator=g, dtype=torch.float64)) for m in (b, b, b * k))
    distance = build("distance", "sqeuclidean")
    full = distance.similarity(q, Embedding.cat([p, n]))
    expected = torch.cat([full[torch.arange(b), torch.arange(b)][:, None],
                          torch.stack([full[i, b + i * k:b + (i + 1) * k] for i in range(b)])], dim=1)
    monkeypatch.setattr(distill, "QUERY_BLOCK", 2)  # 4 blocks, the last one short
    torch.testing.assert_close(own_candidate_similarity(distance, q, p, n), expected)


# -- properties ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("distance", DISTANCES)
@FAST
@given(data=batches(), teacher_scale=st.sampled_from([1.0, 0.25, -3.0]))
def test_a_student_equal_to_its_teacher_has_zero_loss_and_zero_gradient(name, distance, data, teacher_scale):
    q, p, n = data
    params = leaves(q, p, n)
    extra = {"teacher_scale": teacher_scale} | ({"teacher_temperature": 2.0} if name == "distill-kl" else {})
    teacher = teacher_like_student(name, distance, q, p, n, **extra)
    value = make(name, distance, **extra)(LossInputs(q, p, n, teacher_scores=teacher))
    assert abs(float(value.detach())) <= 1e-9
    value.backward()
    for x in params:
        assert x.grad is None or (torch.isfinite(x.grad).all() and x.grad.abs().max() <= 1e-7), x.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("distance", ["euclidean", "cosine", "wasserstein"])
@FAST
@given(data=batches(), shift_seed=st.integers(0, 10_000), shift_size=st.sampled_from([1e-3, 1.0, 1e3]))
def test_a_per_query_shift_of_the_teachers_scores_changes_nothing(name, distance, data, shift_seed, shift_size):
    q, p, n = data
    b = len(q)
    k = len(n) // b
    g = torch.Generator().manual_seed(shift_seed)
    teacher = torch.randn(b, 1 + k, generator=g, dtype=torch.float64)
    shift = (torch.rand(b, 1, generator=g, dtype=torch.float64) * 2 - 1) * shift_size  # one shift per query
    loss = make(name, distance)
    a = [Embedding(e.mean.clone(), e.logvar.clone()) for e in (q, p, n)]
    c = [Embedding(e.mean.clone(), e.logvar.clone()) for e in (q, p, n)]
    pa, pc = leaves(*a), leaves(*c)
    va = loss(LossInputs(*a, teacher_scores=teacher))
    vc = loss(LossInputs(*c, teacher_scores=teacher + shift))
    torch.testing.assert_close(va, vc, rtol=1e-7, atol=1e-9 * shift_size)
    va.backward()
    vc.backward()
    for x, y in zip(pa, pc):
        if x.grad is not None:
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-9 * shift_size)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("distance", DISTANCES)
@FAST
@given(data=batches(bound=100.0))
def test_finite_values_and_gradients_with_every_distance(name, distance, data):
    q, p, n = data
    params = leaves(q, p, n)
    teacher = torch.randn(len(q), 1 + len(n) // len(q), dtype=torch.float64) * 50
    value = make(name, distance)(LossInputs(q, p, n, teacher_scores=teacher))
    # both losses are >= 0 in exact arithmetic; a KL between near-identical softmaxes may round to -1e-29
    assert value.ndim == 0 and torch.isfinite(value) and float(value.detach()) >= -1e-12
    value.backward()
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in params)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("distance,degree", [("euclidean", 1), ("sqeuclidean", 2), ("dot", 2), ("cosine", 0)])
def test_calibration_rescaling_keeps_the_initial_loss(name, distance, degree):
    """Start-up calibration scales the head by c and multiplies every temperature by c**k: the loss at step 0
    is the uncalibrated model's, so a teacher scale chosen for the base model stays right."""
    g = torch.Generator().manual_seed(5)
    q, p, n = (torch.randn(m, D, generator=g, dtype=torch.float64) for m in (4, 4, 8))
    teacher = torch.randn(4, 3, generator=g, dtype=torch.float64)
    loss = make(name, distance)
    before = loss(LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher))
    c = 23.0
    loss.rescale_temperature(c ** degree)
    after = loss(LossInputs(Embedding(c * q), Embedding(c * p), Embedding(c * n), teacher_scores=teacher))
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_ignore_autocast_and_accept_half_precision(name):
    g = torch.Generator().manual_seed(6)
    q, p, n = torch.randn(8, 64, generator=g) * 3, torch.randn(8, 64, generator=g) * 3, torch.randn(16, 64, generator=g)
    teacher = torch.randn(8, 3, generator=g)
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher)
    loss = make(name, "sqeuclidean")
    reference = loss(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = loss(inputs)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, reference, rtol=1e-5, atol=1e-5)
    half = LossInputs(Embedding(q.bfloat16()), Embedding(p.bfloat16()), Embedding(n.bfloat16()),
                      teacher_scores=teacher.bfloat16())
    assert loss(half).dtype == torch.float32 and torch.isfinite(loss(half))


# -- the scale and sign contract -----------------------------------------------------------------------------------

def _batch(seed=7, b=8, k=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, D, generator=g, dtype=torch.float64)
    p = q + 0.3 * torch.randn(b, D, generator=g, dtype=torch.float64)
    n = torch.randn(b * k, D, generator=g, dtype=torch.float64)
    return q, p, n


@pytest.mark.parametrize("name,setting", [("margin-mse", "teacher_scale"), ("distill-kl", "teacher_temperature")])
def test_a_teacher_on_another_scale_warns_and_names_the_mapping(name, setting):
    q, p, n = _batch()
    own = teacher_like_student(name, "euclidean", Embedding(q), Embedding(p), Embedding(n))
    noise = 0.1 * torch.randn(own.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    teacher = 100.0 * (own + noise) + 40.0  # e.g. a teacher scoring 0..100 (cosine x 100), shifted
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher)
    loss = make(name, check_scale=True)
    with pytest.warns(TeacherScaleWarning, match=rf"spread \d+(\.\d+)?x as much.*--set loss\.{name}\.{setting}="):
        loss(inputs)
    with warnings.catch_warnings():  # once per loss: the first batch only
        warnings.simplefilter("error", TeacherScaleWarning)
        loss(inputs)
    # mapped explicitly, the same teacher is silent
    mapped = make(name, check_scale=True, **({"teacher_scale": 0.01} if name == "margin-mse"
                                             else {"teacher_temperature": 100.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherScaleWarning)
        mapped(inputs)
    # and silenced on request
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherScaleWarning)
        make(name, check_scale=False)(inputs)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_teacher_giving_distances_warns_about_the_sign(name):
    q, p, n = _batch()
    own = teacher_like_student(name, "euclidean", Embedding(q), Embedding(p), Embedding(n))
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=-own)  # distances: lower = closer
    with pytest.warns(TeacherScaleWarning, match="below their hard negatives.*teacher_scale=-1"):
        make(name, check_scale=True)(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherScaleWarning)
        value = make(name, check_scale=True, teacher_scale=-1.0)(inputs)
    assert abs(float(value)) < 1e-12


def test_the_warning_names_the_students_similarity():
    q, p, n = _batch()
    inputs = LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=torch.rand(8, 5, dtype=torch.float64)
                        * 1000 + torch.tensor([[500.0, 0, 0, 0, 0]], dtype=torch.float64))
    with pytest.warns(TeacherScaleWarning, match=r"-\|\|q - d\|\|\^2"):
        make("margin-mse", "sqeuclidean", check_scale=True)(inputs)


# -- errors ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_missing_teacher_scores_or_negatives_are_clear_errors(name):
    q, p, n = _batch(b=3, k=2)
    loss = make(name)
    with pytest.raises(ValueError, match=r"pos_scores.*ragcun data score.*--negatives K"):
        loss(LossInputs(Embedding(q), Embedding(p), Embedding(n)))
    with pytest.raises(ValueError, match=r"--negatives K"):
        loss(LossInputs(Embedding(q), Embedding(p), teacher_scores=torch.zeros(3, 1)))
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(3, 3\)"):
        loss(LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        loss(LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=torch.full((3, 3), float("nan"))))


@pytest.mark.parametrize("name,setting,value", [
    ("margin-mse", "teacher_scale", 0.0), ("margin-mse", "teacher_scale", float("inf")),
    ("margin-mse", "temperature", 0.0), ("distill-kl", "teacher_temperature", -1.0),
    ("distill-kl", "temperature", "x"), ("distill-kl", "check_scale", "no"), ("margin-mse", "teacher_shift", 1.0),
])
def test_bad_settings_are_value_errors(name, setting, value):
    with pytest.raises(ValueError, match=setting):
        build_loss(name, {"loss": {name: {setting: value}}})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_rescaled_temperature_is_kept_in_the_state_dict(name):
    """A resumed run does not calibrate again: the rescaled student temperature comes back from the checkpoint."""
    loss = make(name)
    before = loss.temperature
    loss.rescale_temperature(4.0)
    fresh = make(name)
    assert fresh.temperature == pytest.approx(before)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.temperature == pytest.approx(4.0 * before) and fresh.get_config()["temperature"] == pytest.approx(
        4.0 * before)
