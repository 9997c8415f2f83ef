"""Distances: the Gaussian distances' formulas and axioms, and for every built-in distance the inner-product
reduction that retrieval relies on (it must rank exactly like the distance)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragcun.components import build
from ragcun.embedding import Embedding

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("single_thread")
BUILTIN = ["euclidean", "sqeuclidean", "cosine", "dot", "wasserstein", "expected-sqeuclidean"]
METRICS = ["euclidean", "wasserstein"]  # true metrics (triangle inequality)


def test_every_builtin_distance_is_tested():
    from ragcun.plugins import get_registry

    assert {e.name for e in get_registry().entries("distance") if e.provider == "ragcun"} == set(BUILTIN)
    assert get_registry().get("distance", "w2").name == "wasserstein"
    for name in ("wasserstein", "expected-sqeuclidean"):
        assert set(get_registry().get("distance", name).needs) == {"mean", "logvar"}
        assert build("distance", name).needs == {"mean", "logvar"}


@st.composite
def embeddings(draw, n=None, d=None, bound=10.0):
    n = draw(st.integers(1, 7)) if n is None else n
    d = draw(st.integers(1, 5)) if d is None else d
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-2, 1.0, bound]))
    mean = (torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1) * scale
    logvar = torch.rand(n, d, generator=g, dtype=torch.float64) * 6 - 3
    if draw(st.booleans()) and n > 1:  # exact duplicates (ties) are legal
        mean[-1], logvar[-1] = mean[0], logvar[0]
    return Embedding(mean, logvar)


def pair(dim_from=None):
    return st.integers(1, 5).flatmap(lambda d: st.tuples(embeddings(d=d), embeddings(d=d)))


# -- the inner-product reduction (every distance) ----------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN)
@FAST
@given(qd=pair())
def test_inner_product_reduction_ranks_as_the_similarity(name, qd):
    """For each query, the inner product retrieval searches with is an increasing function of ``similarity``:
    documents whose similarities differ by more than float64 round-off are ordered the same way by both."""
    q, d = qd
    dist = build("distance", name)
    inner = dist.query_vectors(q) @ dist.document_vectors(d).T  # (Q, N)
    sim = dist.similarity(q, d)
    assert inner.shape == sim.shape == (len(q), len(d))
    order = sim.argsort(dim=1, stable=True)
    sim_gaps, inner_gaps = sim.gather(1, order).diff(dim=1), inner.gather(1, order).diff(dim=1)
    # round-off of the expansions: about 1e-15 of the squared scale (a square root, euclidean and wasserstein,
    # turns a round-off e near a zero distance into sqrt(e), hence the second term)
    scale = 1.0 + float(sim.abs().max()) + float(inner.abs().max())
    clear = sim_gaps > 1e-9 * scale ** 2 + 1e-7 * scale
    assert (inner_gaps[clear] > 0).all(), (sim, inner)


@pytest.mark.parametrize("name", BUILTIN)
@FAST
@given(qd=pair())
def test_inner_product_ranks_documents_exactly_like_the_distance(name, qd):
    q, d = qd
    dist = build("distance", name)
    inner = dist.query_vectors(q) @ dist.document_vectors(d).T  # (Q, N)
    sim = dist.similarity(q, d)
    # for every query and every pair of documents: clearly more similar <=> larger inner product
    gap = sim[:, :, None] - sim[:, None, :]  # (Q, N, N)
    inner_gap = inner[:, :, None] - inner[:, None, :]
    tol = 1e-9 * (1.0 + float(sim.abs().max()) + float(inner.abs().max()))
    assert bool((inner_gap[gap > tol] > 0).all())
    assert bool((inner_gap[gap < -tol] < 0).all())


@pytest.mark.parametrize("name", BUILTIN)
@FAST
@given(qd=pair(), seed=st.integers(0, 1000))
def test_permuting_queries_and_documents_permutes_rows_and_columns(name, qd, seed):
    q, d = qd
    g = torch.Generator().manual_seed(seed)
    pq, pd = torch.randperm(len(q), generator=g), torch.randperm(len(d), generator=g)
    dist = build("distance", name)
    torch.testing.assert_close(dist.similarity(q[pq], d[pd]), dist.similarity(q, d)[pq][:, pd])


@pytest.mark.parametrize("name", BUILTIN)
@FAST
@given(qd=pair())
def test_finite_similarity_and_gradients(name, qd):
    q, d = qd
    for e in (q, d):
        e.mean.requires_grad_(True)
        e.logvar.requires_grad_(True)
    dist = build("distance", name)
    sim = dist.similarity(q, d)
    sim.sum().backward()
    assert torch.isfinite(sim).all()
    assert all(torch.isfinite(t.grad).all() for t in (q.mean, d.mean) if t.grad is not None)
    assert all(torch.isfinite(t.grad).all() for t in (q.logvar, d.logvar) if t.grad is not None)
    if dist.is_metric:
        torch.testing.assert_close(dist.distance(q, d), -sim)
    else:  # similarities may define their own distance (cosine: 1 - cos), but it must order the same way
        torch.testing.assert_close(dist.distance(q, d) - dist.distance(q, d)[:, :1], -(sim - sim[:, :1]))


# -- axioms ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["euclidean", "sqeuclidean", "wasserstein", "expected-sqeuclidean"])
@FAST
@given(qd=pair())
def test_symmetric_and_non_negative(name, qd):
    q, d = qd
    dist = build("distance", name)
    torch.testing.assert_close(dist.distance(q, d), dist.distance(d, q).T, rtol=1e-9, atol=1e-7)
    assert bool((dist.distance(q, d) >= 0).all())


@pytest.mark.parametrize("name", METRICS)
@FAST
@given(d=st.integers(1, 5).flatmap(lambda d: st.tuples(embeddings(d=d), embeddings(d=d), embeddings(d=d))))
def test_triangle_inequality_and_identity(name, d):
    x, y, z = d
    dist = build("distance", name)
    xy, yz, xz = dist.distance(x, y), dist.distance(y, z), dist.distance(x, z)  # (X, Y), (Y, Z), (X, Z)
    via = xy[:, :, None] + yz[None, :, :]  # (X, Y, Z): d(x, y) + d(y, z)
    assert bool((xz[:, None, :] <= via + 1e-6 * (1 + via)).all())
    assert float(torch.diagonal(dist.distance(x, x)).max()) < 1e-5  # d(x, x) = 0 up to the sqrt eps


# -- the Gaussian distances' formulas -------------------------------------------------------------------------

def _gaussians(n, d, g):
    return Embedding(torch.randn(n, d, generator=g, dtype=torch.float64),
                     torch.randn(n, d, generator=g, dtype=torch.float64))


def test_wasserstein_equals_the_quantile_coupling_integral():
    """In 1-D, W2^2 = integral_0^1 (F1^-1(u) - F2^-1(u))^2 du; for diagonal Gaussians it adds over dimensions.
    Computed here from quantile functions (midpoint rule), independently of the [mu, sigma] shortcut."""
    g = torch.Generator().manual_seed(0)
    q, d = _gaussians(3, 4, g), _gaussians(5, 4, g)
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    z = torch.special.ndtri(u)  # standard normal quantiles
    expected = torch.empty(3, 5, dtype=torch.float64)
    for i in range(3):
        for j in range(5):
            qi = q.mean[i][:, None] + q.sigma[i][:, None] * z  # (D, U) quantile functions
            dj = d.mean[j][:, None] + d.sigma[j][:, None] * z
            expected[i, j] = ((qi - dj) ** 2).mean(1).sum().sqrt()
    torch.testing.assert_close(build("distance", "wasserstein").distance(q, d), expected, rtol=2e-4, atol=1e-6)


def test_expected_sqeuclidean_equals_monte_carlo():
    g = torch.Generator().manual_seed(1)
    q, d = _gaussians(2, 3, g), _gaussians(2, 3, g)
    s = 400_000
    x = q.mean[:, None, :] + q.sigma[:, None, :] * torch.randn(2, s, 3, generator=g, dtype=torch.float64)  # (Q, S, D)
    y = d.mean[:, None, :] + d.sigma[:, None, :] * torch.randn(2, s, 3, generator=g, dtype=torch.float64)  # (N, S, D)
    samples = ((x[:, None] - y[None, :]) ** 2).sum(-1)  # (Q, N, S)
    got = build("distance", "expected-sqeuclidean").distance(q, d)
    stderr = samples.std(-1) / math.sqrt(s)
    assert bool(((samples.mean(-1) - got).abs() < 5 * stderr).all())
    # not a metric: a Gaussian is 2 * sum(sigma^2) from itself
    torch.testing.assert_close(torch.diagonal(build("distance", "expected-sqeuclidean").distance(q, q)),
                               2 * q.sigma.square().sum(1))


def test_gaussian_distances_reduce_to_point_distances_at_zero_variance():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    tiny = lambda x: Embedding(x, torch.full_like(x, -80.0))  # noqa: E731  sigma = e^-40
    torch.testing.assert_close(build("distance", "wasserstein").distance(tiny(a), tiny(b)),
                               build("distance", "euclidean").distance(Embedding(a), Embedding(b)))
    torch.testing.assert_close(build("distance", "expected-sqeuclidean").distance(tiny(a), tiny(b)),
                               build("distance", "sqeuclidean").distance(Embedding(a), Embedding(b)))


@pytest.mark.parametrize("name", ["wasserstein", "expected-sqeuclidean"])
def test_gaussian_distances_without_logvar_name_the_fix(name):
    e = Embedding(torch.randn(2, 3))
    dist = build("distance", name)
    # (expected-sqeuclidean's query vector [mu, 1] needs no variance; the rest do)
    for call in (lambda: dist.similarity(e, e), lambda: dist.document_vectors(e)):
        with pytest.raises(ValueError, match=r"--set head\.gaussian\.logvar=true"):
            call()
