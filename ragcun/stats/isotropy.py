"""Isotropy metrics for a cloud of embeddings ``x`` of shape ``(N, D)`` (N samples, D dimensions).

Every function is pure: it takes a float tensor or array, computes in float64 on the CPU and returns Python
numbers. None of them normalizes silently; where a metric is *defined* on unit vectors (cosine, alignment,
uniformity) the docstring says so and the function normalizes itself. The caller (the isotropy report) records,
for each number, the sample size ``n`` and whether the vectors were normalized, because most of these
statistics depend on both.

Each docstring names the paper, what an isotropic sample scores, and the transformations the metric is
invariant to (the tests check exactly those, and only those):

* "rotation": ``x -> x @ Q`` for an orthogonal ``Q``;
* "scale": ``x -> s * x`` for a scalar ``s > 0``;
* "translation": ``x -> x + b`` for a fixed vector ``b``;
* "permutation": reordering the samples.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_matrix", "l2_normalize", "standardize", "covariance_eigenvalues", "partition_isotropy", "isoscore",
    "average_cosine", "effective_rank", "effective_rank_ratio", "top_variance_share", "norm_stats",
    "alignment", "uniformity", "sigreg_statistic", "sigreg_gaussian_floor", "sigreg_gaussian_reference",
    "log_partition_isotropy",
]

_EPS = 1e-12


# -- helpers --------------------------------------------------------------------------------------------
def as_matrix(x: Any, *, name: str = "embeddings", min_rows: int = 1) -> torch.Tensor:
    """``x`` (a tensor, an array, or anything with a ``.mean`` tensor such as an ``Embedding``) as a float64
    CPU tensor ``(N, D)``; raises ``ValueError`` on a wrong shape or non-finite values."""
    if hasattr(x, "mean") and isinstance(x.mean, torch.Tensor):
        x = x.mean
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a matrix (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows or t.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and one column, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return t


def l2_normalize(x: Any) -> torch.Tensor:
    """Each row divided by its Euclidean norm (a zero row stays zero)."""
    t = as_matrix(x)
    return t / t.norm(dim=1, keepdim=True).clamp_min(_EPS)


def standardize(x: Any) -> torch.Tensor:
    """Per-dimension z-score: subtract each column's mean, divide by its standard deviation (population, ddof 0).

    A constant column becomes zero. This is the "standardized" view of the SIGReg statistic: it removes the
    per-axis location and scale (but not correlations between axes)."""
    t = as_matrix(x)
    centered = t - t.mean(dim=0, keepdim=True)
    std = centered.pow(2).mean(dim=0, keepdim=True).sqrt()
    return torch.where(std > _EPS, centered / std.clamp_min(_EPS), torch.zeros_like(centered))


def covariance_eigenvalues(x: Any, *, center: bool = True) -> torch.Tensor:
    """Eigenvalues of the sample covariance ``Xc^T Xc / (N - 1)`` (``X^T X / N`` if ``center=False``), in
    descending order, clamped at 0 (length D; at most ``N - 1`` of them are non-zero when centering)."""
    t = as_matrix(x, min_rows=2 if center else 1)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
        gram = t.T @ t / (t.shape[0] - 1)
    else:
        gram = t.T @ t / t.shape[0]
    values = torch.linalg.eigvalsh(gram)
    return values.clamp_min(0.0).flip(0)


# -- partition isotropy (Mu & Viswanath 2018) --------------------------------------------------------------
def log_partition_isotropy(x: Any) -> float:
    """``log I(W)``; see :func:`partition_isotropy` (useful when ``I`` underflows to 0)."""
    w = as_matrix(x)
    _, vectors = torch.linalg.eigh(w.T @ w)  # columns: eigenvectors of W^T W (uncentered, as in the paper)
    proj = w @ vectors  # (N, D): c . w_i for every eigenvector c
    # log Z(c) = logsumexp_i (c . w_i), for c and -c: eigenvectors have no sign, and both are unit vectors
    log_z = torch.cat([torch.logsumexp(proj, dim=0), torch.logsumexp(-proj, dim=0)])
    return float(log_z.min() - log_z.max())


def partition_isotropy(x: Any) -> float:
    """Partition-function isotropy ``I(W) = min_c Z(c) / max_c Z(c)``, ``Z(c) = sum_i exp(c . w_i)``.

    Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word Representations" (ICLR 2018).
    ``c`` ranges over the eigenvectors of ``W^T W`` (the paper's approximation of the min/max over all unit
    vectors), taken with both signs, since an eigenvector's sign is arbitrary. ``log Z`` is computed with
    logsumexp, so large norms do not overflow (``I`` may still underflow to 0.0; see
    :func:`log_partition_isotropy`). In ``(0, 1]``: 1 when every direction sees the same partition function;
    near 0 for a cone (a large common mean vector) or large norms.

    Invariant to rotation and permutation of samples. *Not* invariant to scale (``exp`` sees the norms) nor
    to translation; on L2-normalized vectors (pass ``l2_normalize(x)``) it is scale invariant as well.
    """
    return math.exp(log_partition_isotropy(x))


# -- IsoScore (Rudman et al. 2022) ---------------------------------------------------------------------------
def isoscore(x: Any) -> float:
    """IsoScore, Rudman, Gillman, Rayne & Eickhoff, "IsoScore: Measuring the Uniformity of Embedding Space
    Utilization" (Findings of ACL 2022), the published algorithm:

    1. reorient the cloud with PCA (center it, rotate onto its principal axes);
    2. the variance vector ``s``: the variance of each coordinate of the reoriented cloud;
    3. normalize it to the norm of the all-ones vector: ``s_hat = sqrt(D) * s / ||s||``;
    4. isotropy defect ``delta = ||s_hat - 1|| / sqrt(2 (D - sqrt(D)))``;
    5. fraction of dimensions used ``phi = (D - delta^2 (D - sqrt(D)))^2 / D^2``;
    6. ``IsoScore = (D * phi - 1) / (D - 1)``.

    In ``[0, 1]``: 1 for an isotropic cloud, ``(k - 1) / (D - 1)`` for a cloud spread equally over ``k``
    orthogonal directions (0 for a line). It depends strongly on N: a finite isotropic Gaussian sample's
    eigenvalues spread (Marchenko-Pastur), so it scores below 1, and with ``N <= D`` at most about
    ``(N - 2) / (D - 1)``. Always report N beside it.

    Invariant to rotation, scale, translation and permutation of samples.
    """
    t = as_matrix(x, min_rows=2)
    n_dims = t.shape[1]
    if n_dims == 1:
        return 1.0  # one dimension is trivially isotropic (the formula is 0/0)
    centered = t - t.mean(dim=0, keepdim=True)
    # Step 1: PCA reorientation: rotate onto the eigenvectors of the covariance (the principal axes)
    _, axes = torch.linalg.eigh(centered.T @ centered)
    reoriented = centered @ axes
    # Step 2: variance vector (ddof 1 as numpy's cov; the normalization below makes the choice irrelevant)
    variances = reoriented.pow(2).sum(dim=0) / (t.shape[0] - 1)
    total = variances.norm()
    if total <= _EPS:
        return 0.0  # all points identical: no dimension is used
    d = float(n_dims)
    normalized = math.sqrt(d) * variances / total  # Step 3
    defect = float((normalized - 1.0).norm()) / math.sqrt(2.0 * (d - math.sqrt(d)))  # Step 4
    phi = (d - defect ** 2 * (d - math.sqrt(d))) ** 2 / d ** 2  # Step 5
    return (d * phi - 1.0) / (d - 1.0)  # Step 6


# -- average cosine (Ethayarajh 2019) ------------------------------------------------------------------------
def average_cosine(x: Any, num_pairs: int | None = None, seed: int = 0) -> float:
    """Mean cosine similarity between two different samples.

    Ethayarajh, "How Contextual are Contextualized Word Representations?" (EMNLP 2019), uses the average cosine
    between random pairs as the anisotropy baseline. With ``num_pairs=None`` this is the exact mean over all
    ``N (N - 1)`` ordered pairs ``i != j`` (the expectation of the random-pair estimate, computed in O(N D) as
    ``(||sum_i u_i||^2 - sum_i ||u_i||^2) / (N (N - 1))`` with ``u_i`` the unit vectors); with an integer it
    averages ``num_pairs`` uniformly drawn pairs ``i != j`` from a generator seeded with ``seed``.

    Defined on L2-normalized vectors (cosine). About 0 for an isotropic cloud (``+-1/sqrt(D)`` per pair), near
    1 for a cone. Invariant to rotation, scale and permutation of samples; *not* to translation.
    """
    u = l2_normalize(as_matrix(x, min_rows=2))
    n = u.shape[0]
    if num_pairs is None:
        total = u.sum(dim=0)
        self_sim = u.pow(2).sum()
        return float((total @ total - self_sim) / (n * (n - 1)))
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    gen = torch.Generator().manual_seed(int(seed))
    i = torch.randint(0, n, (num_pairs,), generator=gen)
    j = (i + torch.randint(1, n, (num_pairs,), generator=gen)) % n  # uniform over j != i
    return float((u[i] * u[j]).sum(dim=1).mean())


# -- effective rank (Roy & Vetterli 2007), variance shares ---------------------------------------------------
def effective_rank(x: Any, *, center: bool = True) -> float:
    """Effective rank ``exp(H(p))``, ``p_k = sigma_k / sum(sigma)``, ``sigma`` the singular values of the
    (by default column-centered) matrix; Roy & Vetterli, "The effective rank: a measure of effective
    dimensionality" (EUSIPCO 2007).

    Between 1 and ``min(N, D)``: exactly ``k`` for ``k`` equal non-zero singular values (a rank-k cloud spread
    equally), close to D for an isotropic Gaussian with ``N >> D``. Invariant to rotation, scale and
    permutation of samples, and (when centering) to translation.
    """
    t = as_matrix(x, min_rows=2 if center else 1)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    sigma = torch.linalg.svdvals(t)
    total = sigma.sum()
    if total <= _EPS:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank_ratio(x: Any, *, center: bool = True) -> float:
    """:func:`effective_rank` divided by the dimension D (1.0 = every dimension used equally)."""
    t = as_matrix(x)
    return effective_rank(t, center=center) / t.shape[1]


def top_variance_share(x: Any, k: int = 1) -> float:
    """Share of the total variance in the top ``k`` principal directions (covariance eigenvalues).

    ``k / D`` for an isotropic cloud, 1 for a cloud of rank at most ``k``. Invariant to rotation, scale,
    translation and permutation of samples."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    values = covariance_eigenvalues(x)
    total = values.sum()
    if total <= _EPS:
        return 1.0
    return float(values[:k].sum() / total)


# -- norms ---------------------------------------------------------------------------------------------------
def norm_stats(x: Any) -> dict[str, float]:
    """Euclidean norms of the raw vectors: mean, std (ddof 0), min, median, max, and ``mean / sqrt(D)`` (1 for
    N(0, I) in high dimension, where norms concentrate at ``sqrt(D)``).

    Invariant to rotation and permutation of samples; scaling ``x`` by ``s`` scales every value by ``s``."""
    t = as_matrix(x)
    norms = t.norm(dim=1)
    return {"mean": float(norms.mean()), "std": float(norms.std(unbiased=False)), "min": float(norms.min()),
            "median": float(norms.median()), "max": float(norms.max()),
            "mean_over_sqrt_dim": float(norms.mean()) / math.sqrt(t.shape[1])}


# -- alignment and uniformity (Wang & Isola 2020) ------------------------------------------------------------
def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """Alignment ``E ||f(x) - f(y)||^alpha`` over positive pairs (row i of ``x`` with row i of ``y``), on
    L2-normalized vectors as Wang & Isola define it ("Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", ICML 2020), ``alpha = 2`` by default.

    In ``[0, 4]`` for alpha 2 (lower = positives closer). Invariant to rotation, scale, and permutation of the
    pairs (rows of x and y permuted together)."""
    a, b = l2_normalize(x), l2_normalize(y)
    if a.shape != b.shape:
        raise ValueError(f"alignment needs paired rows of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(x: Any, t: float = 2.0, *, chunk: int = 2048) -> float:
    """Uniformity ``log E_{i != j} exp(-t ||u_i - u_j||^2)`` over all pairs of different samples, on
    L2-normalized vectors as Wang & Isola (2020) define it, ``t = 2`` by default; computed with logsumexp in
    row blocks (memory O(chunk * N)).

    Lower = more uniform on the sphere; 0 when every vector coincides, ``-2t`` in the limit of perfectly
    uniform in high dimension (``||u_i - u_j||^2 -> 2``). Invariant to rotation, scale and permutation of
    samples."""
    u = l2_normalize(as_matrix(x, min_rows=2))
    n = u.shape[0]
    parts = []
    for start in range(0, n, chunk):
        block = u[start:start + chunk]
        sq = (2.0 - 2.0 * block @ u.T).clamp_min(0.0)  # ||a - b||^2 for unit vectors
        logits = -t * sq
        rows = torch.arange(start, start + block.shape[0])
        logits[torch.arange(block.shape[0]), rows] = -math.inf  # drop i == j
        parts.append(torch.logsumexp(logits.reshape(-1), dim=0))
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1)))


# -- SIGReg ----------------------------------------------------------------------------------------------------
def sigreg_statistic(x: Any, *, standardized: bool = False, num_slices: int = 1024, seed: int = 0,
                     t_max: float = 3.0, num_points: int = 17) -> float:
    """The SIGReg statistic (LeJEPA; ``ragcun.stats.sigreg.sigreg``): the Epps-Pulley distance between each
    random 1-D projection and N(0, 1), times N, averaged over ``num_slices`` directions drawn with ``seed``.

    With ``standardized=True`` the cloud is first z-scored per dimension (:func:`standardize`), which removes
    per-axis location and scale and leaves only shape and correlations. Compare with
    ``sigreg_noise_floor(N, num_slices)``, what an exactly N(0, I) sample of the same size scores. Invariant to
    permutation of samples; the standardized value is also invariant to per-dimension scale and translation.
    Raw values are not scale invariant: a collapsed cloud (unit-norm text embeddings have per-direction spread
    about ``1/sqrt(D)``) scores roughly proportionally to N.
    """
    from ragcun.stats.sigreg import sigreg

    t = standardize(x) if standardized else as_matrix(x)
    value = sigreg(t.to(torch.float32), num_slices=num_slices, step=0, seed=seed, t_max=t_max,
                   num_points=num_points, distributed=False)
    return float(value)


def sigreg_gaussian_floor(n: int, *, num_slices: int = 1024, t_max: float = 3.0, num_points: int = 17) -> float:
    """What :func:`sigreg_statistic` gives, in expectation, for an exactly N(0, I) sample of size ``n``
    (``ragcun.stats.sigreg.sigreg_noise_floor``; about 1.05 on the default grid, whatever ``n``)."""
    from ragcun.stats.sigreg import sigreg_noise_floor

    return float(sigreg_noise_floor(n, num_slices, t_max=t_max, num_points=num_points))


@functools.lru_cache(maxsize=64)  # a pure function of its arguments; the training loop asks for the same shape
def sigreg_gaussian_reference(n: int, dim: int, *, standardized: bool = True, num_slices: int = 1024, seed: int = 0,
                              draws: int = 3, t_max: float = 3.0, num_points: int = 17) -> float:
    """:func:`sigreg_statistic` of exact N(0, I) samples of shape ``(n, dim)``, averaged over ``draws`` samples
    (a Monte Carlo estimate, seeded).

    The reference for the *standardized* statistic: z-scoring with the sample's own mean and standard deviation
    removes part of the sampling noise, so an exactly Gaussian sample scores below
    :func:`sigreg_gaussian_floor` after standardizing (about half of it at D = 32), by an amount that depends
    on ``dim``; compare a model's standardized value with this, not with the floor."""
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    gen = torch.Generator().manual_seed(int(seed) + 1)
    values = [sigreg_statistic(torch.randn(n, dim, generator=gen), standardized=standardized,
                               num_slices=num_slices, seed=seed, t_max=t_max, num_points=num_points)
              for _ in range(draws)]
    return float(sum(values) / len(values))
