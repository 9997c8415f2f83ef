"""The isotropy metrics (ragcun.stats.isotropy) on synthetic data with known answers, and their invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ragcun.stats import isotropy as iso


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(gaussian(d, d, seed + 1))
    return q * torch.sign(torch.diagonal(r))  # a Haar-random orthogonal matrix


def with_spectrum(eigenvalues: list[float], n: int, seed: int = 0) -> torch.Tensor:
    """n points whose *sample* covariance is exactly diag(eigenvalues) (then rotated): whitened noise, scaled."""
    d = len(eigenvalues)
    x = gaussian(n, d, seed)
    x = x - x.mean(0)
    cov = x.T @ x / (n - 1)
    vals, vecs = torch.linalg.eigh(cov)
    white = x @ vecs @ torch.diag(vals.rsqrt()) @ vecs.T  # sample covariance exactly I
    return white * torch.tensor(eigenvalues, dtype=torch.float64).sqrt() @ rotation(d, seed)


def cross(k: int, d: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """+-e_1 ... +-e_k (2k points, mean 0, k equal principal axes), rotated into d dimensions."""
    eye = torch.eye(d, dtype=torch.float64)[:k]
    return scale * torch.cat([eye, -eye]) @ rotation(d, seed)


# -- known answers -------------------------------------------------------------------------------------------
def test_isotropic_gaussian_scores_isotropic():
    x = gaussian(20000, 16)
    assert iso.partition_isotropy(x) > 0.9
    assert iso.partition_isotropy(iso.l2_normalize(x)) > 0.97
    assert iso.isoscore(x) > 0.99
    assert iso.effective_rank_ratio(x) > 0.99
    assert abs(iso.average_cosine(x)) < 0.005
    assert iso.top_variance_share(x, 1) == pytest.approx(1 / 16, abs=0.01)
    assert iso.top_variance_share(x, 8) == pytest.approx(0.5, abs=0.02)
    stats = iso.norm_stats(x)
    assert stats["mean_over_sqrt_dim"] == pytest.approx(1.0, abs=0.03)
    # uniformity of N(0, I)/||.|| on S^15 approaches -2t = -4 only as D grows; bounded by it from above
    assert -4.0 < iso.uniformity(x[:3000]) < -3.3


def test_cone_is_anisotropic():
    x = gaussian(5000, 16)
    cone = x + 30.0 * torch.ones(16, dtype=torch.float64) / 4.0  # a common mean of norm 30 (noise: ~4)
    assert iso.average_cosine(cone) > 0.95
    assert iso.partition_isotropy(cone) < 1e-10
    # unit vectors of a tight cone: Z(c) ~ N e^{1} along the axis and N e^{-1} against it, so I ~ e^{-2}
    assert iso.partition_isotropy(iso.l2_normalize(cone)) < 0.2
    assert iso.uniformity(cone[:2000]) > -0.5  # nearly collapsed on the sphere
    # IsoScore, effective rank and variance shares are translation invariant: the cone's spread is isotropic
    assert iso.isoscore(cone) == pytest.approx(iso.isoscore(x), abs=1e-9)
    assert iso.effective_rank(cone) == pytest.approx(iso.effective_rank(x), rel=1e-9)


@pytest.mark.parametrize("k,d", [(1, 8), (2, 8), (4, 16), (7, 10), (10, 10)])
def test_rank_k_exact(k, d):
    x = cross(k, d, seed=k)
    assert iso.isoscore(x) == pytest.approx((k - 1) / (d - 1), abs=1e-9)
    assert iso.effective_rank(x) == pytest.approx(k, rel=1e-9)
    assert iso.effective_rank_ratio(x) == pytest.approx(k / d, rel=1e-9)
    assert iso.top_variance_share(x, k) == pytest.approx(1.0, abs=1e-12)
    assert iso.top_variance_share(x, 1) == pytest.approx(1 / k, rel=1e-9)
    # every point has an antipode: the mean cosine over pairs i != j is exactly -1/(2k - 1)
    assert iso.average_cosine(x) == pytest.approx(-1 / (2 * k - 1), abs=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_power_law_spectrum(alpha):
    d = 32
    lam = [(i + 1) ** -alpha for i in range(d)]
    x = with_spectrum(lam, 500, seed=3)
    # IsoScore simplifies to (PR - 1)/(D - 1), PR = (sum lam)^2 / sum lam^2 the participation ratio
    participation = sum(lam) ** 2 / sum(v * v for v in lam)
    assert iso.isoscore(x) == pytest.approx((participation - 1) / (d - 1), abs=1e-9)
    # effective rank: singular values are proportional to sqrt(lam)
    s = np.sqrt(lam)
    p = s / s.sum()
    assert iso.effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert iso.top_variance_share(x, 1) == pytest.approx(lam[0] / sum(lam), rel=1e-9)


def test_power_law_orders_metrics():
    d = 32
    clouds = [with_spectrum([(i + 1) ** -a for i in range(d)], 400, seed=5) for a in (0.0, 0.5, 1.0, 2.0)]
    scores = [iso.isoscore(x) for x in clouds]
    ranks = [iso.effective_rank(x) for x in clouds]
    assert scores[0] == pytest.approx(1.0, abs=1e-9) and ranks[0] == pytest.approx(d, rel=1e-9)
    assert scores == sorted(scores, reverse=True) and ranks == sorted(ranks, reverse=True)


def test_isoscore_depends_on_sample_size():
    small, large = iso.isoscore(gaussian(40, 32)), iso.isoscore(gaussian(4000, 32))
    assert small < 0.7 < 0.99 < large
    assert iso.isoscore(gaussian(10, 32)) <= (10 - 2) / (32 - 1) + 1e-9  # n <= D: at most n - 1 axes are used


def test_average_cosine_random_pairs_is_seeded_and_unbiased():
    x = gaussian(300, 8) + 0.5
    exact = iso.average_cosine(x)
    a, b = iso.average_cosine(x, num_pairs=20000, seed=1), iso.average_cosine(x, num_pairs=20000, seed=1)
    assert a == b
    assert a == pytest.approx(exact, abs=0.02)
    assert iso.average_cosine(x, num_pairs=20000, seed=2) != a
    # brute force over all i != j
    u = x / x.norm(dim=1, keepdim=True)
    sims = u @ u.T
    assert exact == pytest.approx(float((sims.sum() - sims.diagonal().sum()) / (300 * 299)), abs=1e-12)


def test_alignment_and_uniformity_exact_values():
    e = torch.eye(3, dtype=torch.float64)
    assert iso.alignment(e, 5 * e) == pytest.approx(0.0, abs=1e-15)  # normalized first
    assert iso.alignment(e, -e) == pytest.approx(4.0)
    assert iso.alignment(e, e[[1, 2, 0]]) == pytest.approx(2.0)
    assert iso.alignment(e, -e, alpha=1.0) == pytest.approx(2.0)
    assert iso.uniformity(torch.stack([e[0], -e[0]])) == pytest.approx(-8.0)  # ||u - v||^2 = 4, t = 2
    # three orthogonal unit vectors: every pair at squared distance 2
    assert iso.uniformity(3 * e) == pytest.approx(-4.0)
    assert iso.uniformity(3 * e, t=1.0) == pytest.approx(-2.0)
    assert iso.uniformity(e.repeat(4, 1)[:, :3][[0, 3, 6]]) == pytest.approx(0.0, abs=1e-12)  # identical points


def test_uniformity_chunking_matches_brute_force():
    x = gaussian(257, 5, seed=9)
    u = x / x.norm(dim=1, keepdim=True)
    sq = torch.cdist(u, u).pow(2)
    off = ~torch.eye(257, dtype=torch.bool)
    brute = float(torch.log(torch.exp(-2 * sq[off]).mean()))
    assert iso.uniformity(x, chunk=50) == pytest.approx(brute, rel=1e-10)
    assert iso.uniformity(x) == pytest.approx(brute, rel=1e-10)


def test_partition_isotropy_is_stable_for_large_norms():
    x = gaussian(1000, 8) * 1e4  # exp(c . w) overflows float64 without logsumexp
    value = iso.partition_isotropy(x)
    assert value == 0.0 or 0.0 < value < 1e-100
    assert math.isfinite(iso.log_partition_isotropy(x)) and iso.log_partition_isotropy(x) < -1000
    # brute-force agreement where exp does not overflow
    y = gaussian(200, 4, seed=4)
    _, vecs = torch.linalg.eigh(y.T @ y)
    z = torch.cat([torch.exp(y @ vecs).sum(0), torch.exp(-y @ vecs).sum(0)])
    assert iso.partition_isotropy(y) == pytest.approx(float(z.min() / z.max()), rel=1e-12)


def test_partition_isotropy_is_not_scale_invariant():
    x = gaussian(500, 8) + 0.3
    assert iso.partition_isotropy(3 * x) < iso.partition_isotropy(x)
    assert iso.partition_isotropy(iso.l2_normalize(3 * x)) == pytest.approx(iso.partition_isotropy(iso.l2_normalize(x)))


def test_norm_stats_values():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], dtype=torch.float64)
    stats = iso.norm_stats(x)
    assert stats["mean"] == pytest.approx(16 / 3) and stats["median"] == 5.0
    assert stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["std"] == pytest.approx(float(np.std([5.0, 1.0, 10.0])))
    assert stats["mean_over_sqrt_dim"] == pytest.approx(16 / 3 / math.sqrt(2))


def test_sigreg_raw_and_standardized():
    floor = iso.sigreg_gaussian_floor(2000, num_slices=128)
    raw = [iso.sigreg_statistic(gaussian(2000, 32, seed=s).float(), num_slices=128, seed=s) for s in range(4)]
    assert 0.5 * floor < sum(raw) / len(raw) < 1.5 * floor  # the noise floor is the expectation
    reference = iso.sigreg_gaussian_reference(2000, 32, num_slices=128, seed=7)
    assert 0.2 * floor < reference < 0.9 * floor  # z-scoring with the sample's own moments lowers it
    x = gaussian(2000, 32).float() * 3 + 1
    assert iso.sigreg_statistic(x, standardized=True, num_slices=128) == pytest.approx(reference, rel=0.5)
    unit = iso.l2_normalize(x)  # spread 1/sqrt(D) per direction: looks collapsed, scores ~ N
    assert iso.sigreg_statistic(unit, num_slices=128) > 50 * floor
    assert iso.sigreg_statistic(unit, standardized=True, num_slices=128) < floor


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="matrix"):
        iso.isoscore(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        iso.partition_isotropy(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="at least 2"):
        iso.average_cosine(torch.ones(1, 3))
    with pytest.raises(ValueError, match="equal shape"):
        iso.alignment(torch.ones(2, 3), torch.ones(3, 3))
    # numpy arrays and Embedding-like objects are accepted
    from ragcun.embedding import Embedding

    arr = gaussian(50, 4).numpy()
    assert iso.isoscore(arr) == pytest.approx(iso.isoscore(Embedding(torch.from_numpy(arr).float())), abs=1e-6)


# -- invariances (hypothesis): exactly the ones each docstring claims -------------------------------------------
def cloud(seed: int, n: int, d: int) -> torch.Tensor:
    """An anisotropic, off-center cloud (distinct eigenvalues, non-zero mean)."""
    mix = gaussian(d, d, seed + 7)
    return gaussian(n, d, seed) @ mix + gaussian(1, d, seed + 11)


clouds = st.builds(lambda seed, n, d: cloud(seed, n, d), st.integers(0, 2**31 - 1), st.integers(12, 60),
                   st.integers(2, 7))
scales = st.floats(0.05, 20.0)
common = settings(max_examples=25, deadline=None)


def _transforms(x: torch.Tensor, seed: int, scale: float):
    d = x.shape[1]
    return {
        "rotation": x @ rotation(d, seed),
        "scale": scale * x,
        "translation": x + 3.0 * gaussian(1, d, seed + 2),
        "permutation": x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))],
    }


CLAIMS = {
    "isoscore": (iso.isoscore, {"rotation", "scale", "translation", "permutation"}),
    "effective_rank": (iso.effective_rank, {"rotation", "scale", "translation", "permutation"}),
    "top2_variance_share": (lambda x: iso.top_variance_share(x, 2), {"rotation", "scale", "translation",
                                                                     "permutation"}),
    "average_cosine": (iso.average_cosine, {"rotation", "scale", "permutation"}),
    "uniformity": (iso.uniformity, {"rotation", "scale", "permutation"}),
    "partition_isotropy_l2": (lambda x: iso.partition_isotropy(iso.l2_normalize(x)),
                              {"rotation", "scale", "permutation"}),
    "partition_isotropy": (iso.partition_isotropy, {"rotation", "permutation"}),
    "norm_mean": (lambda x: iso.norm_stats(x)["mean"], {"rotation", "permutation"}),
}


def _eigen_gap_ok(x: torch.Tensor) -> bool:
    vals = torch.linalg.eigvalsh(x.T @ x)
    gaps = (vals[1:] - vals[:-1]) / vals[-1]
    return bool(gaps.min() > 1e-6) if gaps.numel() else True


@pytest.mark.parametrize("metric", sorted(CLAIMS))
@common
@given(x=clouds, seed=st.integers(0, 10_000), scale=scales)
def test_claimed_invariances(metric, x, seed, scale):
    fn, claims = CLAIMS[metric]
    if metric.startswith("partition"):
        # eigenvectors of W^T W are only defined up to rotation within a repeated eigenvalue
        assume(_eigen_gap_ok(x) and _eigen_gap_ok(iso.l2_normalize(x)))
    base = fn(x)
    for name, y in _transforms(x, seed, scale).items():
        if name in claims:
            assert fn(y) == pytest.approx(base, rel=1e-6, abs=1e-9), name


@common
@given(x=clouds, seed=st.integers(0, 10_000), scale=scales)
def test_norms_scale_equivariant(x, seed, scale):
    a, b = iso.norm_stats(x), iso.norm_stats(scale * x)
    for key in ("mean", "std", "min", "median", "max", "mean_over_sqrt_dim"):
        assert b[key] == pytest.approx(scale * a[key], rel=1e-9, abs=1e-12)


@common
@given(x=clouds, seed=st.integers(0, 10_000), scale=scales)
def test_alignment_invariances(x, seed, scale):
    y = x + 0.3 * gaussian(*x.shape, seed=seed)
    base = iso.alignment(x, y)
    q = rotation(x.shape[1], seed)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    assert iso.alignment(x @ q, y @ q) == pytest.approx(base, rel=1e-9)
    assert iso.alignment(scale * x, scale * y) == pytest.approx(base, rel=1e-9)
    assert iso.alignment(x[perm], y[perm]) == pytest.approx(base, rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(x=clouds, seed=st.integers(0, 10_000))
def test_standardized_sigreg_ignores_per_dimension_affine_maps(x, seed):
    d = x.shape[1]
    gen = torch.Generator().manual_seed(seed)
    scales_ = torch.rand(d, generator=gen, dtype=torch.float64) * 10 + 0.1
    shift = torch.randn(d, generator=gen, dtype=torch.float64) * 5
    perm = torch.randperm(x.shape[0], generator=gen)
    base = iso.sigreg_statistic(x, standardized=True, num_slices=32, seed=seed)
    assert iso.sigreg_statistic(x * scales_ + shift, standardized=True, num_slices=32, seed=seed) == \
        pytest.approx(base, rel=1e-4, abs=1e-5)
    assert iso.sigreg_statistic(x[perm], standardized=True, num_slices=32, seed=seed) == \
        pytest.approx(base, rel=1e-4, abs=1e-5)
    assert iso.sigreg_statistic(x[perm], num_slices=32, seed=seed) == \
        pytest.approx(iso.sigreg_statistic(x, num_slices=32, seed=seed), rel=1e-4, abs=1e-5)
