"""SIGReg / Epps-Pulley statistic (ragcun.stats.sigreg): exactness against the closed form, noise floor, limits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ragcun.stats.sigreg import (epps_pulley, quadrature_grid, random_directions, sigreg, sigreg_closed_form,
                                 sigreg_noise_floor)

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("single_thread")


def batches(max_n=24, max_d=5, bound=4.0):
    """Finite float64 batches (N, D) with |x| <= bound, so |projections| <= bound * sqrt(D)."""
    shapes = st.tuples(st.integers(1, max_n), st.integers(1, max_d))
    return shapes.flatmap(lambda s: arrays("float64", s, elements=st.floats(-bound, bound, allow_nan=False)))


# -- directions ----------------------------------------------------------------------------------------------

def test_random_directions_are_unit_and_depend_only_on_seed_and_step():
    a = random_directions(16, 8, step=3, seed=1)
    assert a.shape == (16, 8) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=0), torch.ones(8))
    torch.testing.assert_close(a, random_directions(16, 8, step=3, seed=1))  # every rank draws the same
    assert not torch.allclose(a, random_directions(16, 8, step=4, seed=1))  # a new step redraws
    assert not torch.allclose(a, random_directions(16, 8, step=3, seed=2))
    # dtype/device only change the cast of the same CPU draw
    torch.testing.assert_close(random_directions(16, 8, 3, 1, dtype=torch.float64).float(), a)
    torch.manual_seed(0)
    b = random_directions(16, 8, step=3, seed=1)
    torch.manual_seed(99)  # the global RNG plays no part
    torch.testing.assert_close(b, random_directions(16, 8, step=3, seed=1))


@pytest.mark.parametrize("kwargs", [dict(dim=0, num_slices=4, step=0), dict(dim=4, num_slices=0, step=0),
                                    dict(dim=4, num_slices=4, step=-1), dict(dim=4.0, num_slices=4, step=0)])
def test_random_directions_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        random_directions(**kwargs)


@pytest.mark.parametrize("t_max,num_points", [(0.0, 17), (-1.0, 17), (3.0, 1), (float("inf"), 17), (3.0, 2.5)])
def test_bad_grid_is_a_value_error(t_max, num_points):
    with pytest.raises(ValueError, match="t_max|num_points"):
        epps_pulley(torch.randn(4, 2), random_directions(2, 3, 0), t_max=t_max, num_points=num_points)


def test_shape_errors_are_value_errors():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        epps_pulley(torch.randn(4), random_directions(2, 3, 0))
    with pytest.raises(ValueError, match="directions"):
        epps_pulley(torch.randn(4, 3), random_directions(2, 3, 0))
    with pytest.raises(ValueError, match="global_n"):
        epps_pulley(torch.randn(4, 2), random_directions(2, 3, 0), global_n=8)  # one process: N is 4


# -- quadrature ----------------------------------------------------------------------------------------------

def test_quadrature_weights_integrate_the_weight_function():
    # sum_k w_k * 1 is the trapezoid rule for integral_{-T}^{T} exp(-t^2/2) dt; its error is at most
    # (2T) h^2 / 12 * max|f''| with f'' = (t^2 - 1) exp(-t^2/2), |f''| <= 1.
    for t_max, points in [(3.0, 17), (5.0, 41), (1.0, 3)]:
        t, w = quadrature_grid(t_max, points, dtype=torch.float64)
        h = t_max / (points - 1)
        exact = math.sqrt(2 * math.pi) * math.erf(t_max / math.sqrt(2))
        assert abs(float(w.sum()) - exact) <= 2 * t_max * h * h / 12 + 1e-12
        assert t[0] == 0 and t[-1] == t_max and len(t) == points


@FAST
@given(batches(), st.integers(1, 6), st.integers(0, 1000))
def test_quadrature_matches_closed_form_on_a_wide_grid(x, m, step):
    """Same step h = 3/16 as the default grid, range extended to [0, 12].

    Error budget (why 1e-9 is safe): (1) truncation: |integrand| <= (1 + phi)^2 exp(-t^2/2) <= 4 exp(-72)
    beyond t = 12; (2) aliasing: by Poisson summation the trapezoid sum on the whole line differs from the
    integral by the integrand's Fourier transform at multiples of 2 pi / h = 33.5; every term is
    cos(t u) exp(-a t^2) with a >= 1/2 and |u| <= 2 max|z| <= 2 * 4 * sqrt(5) < 18, whose transform there is
    below exp(-(33.5 - 18)^2 / 2) ~ 1e-52. What is left is float64 round-off.
    """
    x = torch.from_numpy(x)
    directions = random_directions(x.shape[1], m, step, dtype=torch.float64)
    quad = epps_pulley(x, directions, t_max=12.0, num_points=65)
    exact = sigreg_closed_form(x, directions)
    torch.testing.assert_close(quad, exact, rtol=1e-9, atol=1e-9)


@FAST
@given(batches(max_n=40), st.integers(1, 4))
def test_default_grid_differs_from_closed_form_by_at_most_the_truncated_tail(x, m):
    """The default [0, 3] grid drops the samples t > 3 (and half of t = 3) of the otherwise exact sum above;
    each dropped sample is at most (1 + phi(t))^2 w(t) times N times its weight."""
    x = torch.from_numpy(x)
    n = x.shape[0]
    directions = random_directions(x.shape[1], m, 0, dtype=torch.float64)
    quad = epps_pulley(x, directions)  # 17 points on [0, 3]
    exact = sigreg_closed_form(x, directions)
    h = 3.0 / 16
    t = torch.arange(16, 400, dtype=torch.float64) * h  # t = 3, 3 + h, ...
    weights = torch.full_like(t, 2 * h)
    weights[0] = h  # half of the t = 3 sample was kept
    phi = torch.exp(-0.5 * t * t)
    bound = n * float((weights * (1 + phi) ** 2 * phi).sum()) + 1e-9
    assert float((quad - exact).abs().max()) <= bound
    assert bool((quad >= 0).all()) and bool((exact >= -1e-9).all())


def test_float32_statistic_agrees_with_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64)
    d = random_directions(12, 32, 5, dtype=torch.float64)
    torch.testing.assert_close(epps_pulley(x.float(), d.float()).double(), epps_pulley(x, d), rtol=1e-4, atol=1e-4)


# -- noise floor ---------------------------------------------------------------------------------------------

def test_noise_floor_closed_form():
    assert sigreg_noise_floor(10, t_max=None) == pytest.approx(math.sqrt(2 * math.pi) * (1 - 1 / math.sqrt(3)))
    # the quadrature floor converges to the exact one as the grid widens and refines
    assert sigreg_noise_floor(10, t_max=12.0, num_points=801) == pytest.approx(
        sigreg_noise_floor(10, t_max=None), rel=1e-12)
    assert 1.0 < sigreg_noise_floor(10) < sigreg_noise_floor(10, t_max=None)
    assert sigreg_noise_floor(10) == sigreg_noise_floor(10_000, 7)  # independent of n and of M
    with pytest.raises(ValueError):
        sigreg_noise_floor(0)


@pytest.mark.parametrize("n,k", [(16, 20000), (256, 8000), (1024, 1500)])
def test_exact_gaussian_samples_score_the_noise_floor_on_average(n, k):
    # K independent N(0, 1) samples of size n: the columns of x, read through the identity directions.
    g = torch.Generator().manual_seed(n)
    chunk = min(1000, 400_000 // n)  # bounds the (n, chunk, T) cos/sin tensors and the identity
    values = torch.cat([epps_pulley(torch.randn(n, chunk, generator=g, dtype=torch.float64),
                                    torch.eye(chunk, dtype=torch.float64)) for _ in range(k // chunk + 1)])[:k]
    stderr = float(values.std()) / math.sqrt(k)
    assert abs(float(values.mean()) - sigreg_noise_floor(n)) < 5 * stderr
    assert float(values.std()) > 0.3  # it is a noisy floor, not a constant: the tolerance above is not vacuous


def test_sigreg_of_gaussian_batches_sits_near_the_floor():
    g = torch.Generator().manual_seed(1)
    floor = sigreg_noise_floor(512)
    values = torch.tensor([float(sigreg(torch.randn(512, 16, generator=g), num_slices=64, step=s)) for s in range(24)])
    # one batch's mean over 64 correlated directions spreads by ~0.21 here (measured over 200 batches), so
    # the mean of 24 batches has a standard error of ~0.04: 0.2 is five of them
    assert abs(float(values.mean()) - floor) < 0.2
    assert float(values.max()) < 3 * floor


# -- known limits --------------------------------------------------------------------------------------------

def _gauss(n=512, d=16, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _stat(x):
    return float(sigreg(x, num_slices=128, step=11))


def test_sigreg_rises_monotonically_as_the_batch_is_squeezed():
    x = _gauss()
    values = [_stat(s * x) for s in (1.0, 0.8, 0.6, 0.4, 0.2, 0.05)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] < 2 * sigreg_noise_floor(512)


def test_sigreg_rises_monotonically_as_the_batch_is_stretched():
    x = _gauss()
    values = [_stat(s * x) for s in (1.0, 1.25, 1.5, 2.0, 3.0, 5.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_sigreg_rises_monotonically_as_the_batch_loses_rank():
    x = _gauss()
    values = []
    for rank in (16, 12, 8, 4, 2, 1):
        low = x.clone()
        low[:, rank:] = 0  # only `rank` dimensions keep their N(0, 1) spread
        values.append(_stat(low))
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_sigreg_rises_as_the_batch_shifts():
    x = _gauss()
    values = [_stat(x + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_collapsed_batch_scores_proportionally_to_n():
    # all projections 0: phi_hat = 1, so EP = N * sum_k w_k (1 - phi_k)^2 exactly, for every direction
    t, w = quadrature_grid(dtype=torch.float64)
    per_sample = float((w * (1 - torch.exp(-0.5 * t * t)) ** 2).sum())
    for n in (8, 64, 512):
        assert _stat(torch.zeros(n, 16, dtype=torch.float64)) == pytest.approx(n * per_sample, rel=1e-12)


# -- properties ----------------------------------------------------------------------------------------------

@FAST
@given(batches(max_n=16, bound=1e3), st.integers(0, 50))
def test_finite_value_and_gradient_for_finite_input(x, step):
    x = torch.from_numpy(x).float().requires_grad_(True)
    value = sigreg(x, num_slices=8, step=step)
    value.backward()
    assert torch.isfinite(value) and float(value.detach()) >= 0
    assert torch.isfinite(x.grad).all()


@FAST
@given(batches(max_n=16), st.randoms(use_true_random=False))
def test_permuting_the_batch_leaves_the_statistic_and_permutes_the_gradient(x, rnd):
    x = torch.from_numpy(x)
    perm = list(range(x.shape[0]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    a = x.clone().requires_grad_(True)
    b = x[perm].clone().requires_grad_(True)
    va, vb = sigreg(a, num_slices=8), sigreg(b, num_slices=8)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad[perm], b.grad, rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences():
    x = _gauss(n=12, d=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: epps_pulley(v, random_directions(3, 4, 0, dtype=torch.float64)), (x,))
