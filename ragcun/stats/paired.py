"""Paired comparisons: the statistics shared by ``ragcun ablation`` (run level and query level) and
``ragcun compare`` (two or more TREC runs on the same queries).

* over **queries** (:func:`paired_test`, :func:`bootstrap_interval`): one value per query of each system, paired by
  query; a paired t-test (ranx's, i.e. ``scipy.stats.ttest_rel``) or Fisher's randomization test, and a percentile
  bootstrap interval of the mean difference. Conditional on the systems compared: it says whether these particular
  models differ on these queries;
* over **runs** (:func:`seed_t`, :func:`seed_test`, :func:`two_level_bootstrap`, :func:`mde`, :func:`seeds_needed`,
  :func:`tost_p`): one value per trained model, paired by seed; the t-test over seeds, TOST at a margin, the
  minimum detectable effect, and a two-level bootstrap (seeds, then queries);
* :func:`holm` for a family of comparisons, :func:`stable_seed` for a bootstrap seeded by a comparison's name.

numpy, scipy, statsmodels and ranx only (no torch).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any
from collections.abc import Sequence

import numpy as np


# -- over queries ------------------------------------------------------------------------------------------------
def paired_test(control: np.ndarray, treatment: np.ndarray, test: str = "student", *, permutations: int = 10_000,
                seed: int = 42) -> float:
    """Two-sided p-value of a paired test over queries, computed by ranx."""
    from ranx.statistical_tests import fisher_randomization_test, paired_student_t_test

    control, treatment = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if np.allclose(control, treatment):
        return 1.0  # identical systems: the t statistic is 0/0
    if test == "student":
        p, _ = paired_student_t_test(control, treatment, 0.05)
    elif test == "fisher":
        p, _ = fisher_randomization_test(control, treatment, permutations, 0.05, seed)
    else:
        raise ValueError(f"--test must be student or fisher, got {test!r}")
    return float(p)


def bootstrap_interval(diff: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of paired differences (resampling queries)."""
    from scipy.stats import bootstrap

    diff = np.asarray(diff, dtype=np.float64)
    if np.allclose(diff, diff[0]):
        return float(diff[0]), float(diff[0])
    res = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


# -- over runs ----------------------------------------------------------------------------------------------
def seed_t(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised t-test over the last axis (the seeds) of per-seed differences: ``(mean, se, p)``, two-sided
    (``scipy.stats.ttest_1samp``, which is the paired t-test over seeds when ``diffs = arm - control``)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[-1]
    mean = diffs.mean(axis=-1)
    se = diffs.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.ttest_1samp(diffs, 0.0, axis=-1).pvalue
    p = np.where(se > 0, p, np.where(mean == 0, 1.0, 0.0))  # no spread: 0/0 -> identical, else certain
    return mean, se, p


def seed_test(diffs: Sequence[float], *, margin: float, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """The run-level analysis of per-seed differences: mean, sd, t-test, 95% and 90% t intervals, TOST at
    ``+-margin`` (its p is the larger of the two one-sided p-values) and the MDE of this many seeds."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n < 2:
        raise ValueError(f"a run-level test needs at least 2 paired runs, got {n}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se, df = sd / math.sqrt(n), n - 1
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": sd, "se": se, "df": df, "margin": margin}
    if se > 0:
        res = stats.ttest_1samp(d, 0.0)
        ci95, ci90 = res.confidence_interval(0.95), res.confidence_interval(1 - 2 * alpha)
        p_low = float(stats.t.sf((mean + margin) / se, df))  # H0: diff <= -margin
        p_high = float(stats.t.cdf((mean - margin) / se, df))  # H0: diff >= +margin
        out.update(t=float(res.statistic), p=float(res.pvalue), ci95=[float(ci95.low), float(ci95.high)],
                   ci90=[float(ci90.low), float(ci90.high)], p_tost=max(p_low, p_high))
    else:
        inside = abs(mean) < margin
        out.update(t=math.copysign(math.inf, mean) if mean else 0.0, p=1.0 if mean == 0 else 0.0,
                   ci95=[mean, mean], ci90=[mean, mean], p_tost=0.0 if inside else 1.0)
    out["mde"] = mde(sd, n, alpha=alpha, power=power)
    out["mde_power"] = power
    return out


def tost_p(mean: float, se: float, df: int, margin: float) -> float:
    """The p-value of the two one-sided t-tests of ``|diff| >= margin``: below alpha iff the ``1 - 2 alpha`` t
    interval lies inside ``+-margin``."""
    from scipy import stats

    if se <= 0:
        return 0.0 if abs(mean) < margin else 1.0
    return float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))


def t_power(effect: float, sd: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample (paired) t-test over ``n`` runs against a true mean ``effect`` when the
    per-run differences have standard deviation ``sd`` (noncentral t)."""
    from scipy import stats

    if n < 2 or not sd > 0:
        return math.nan
    df, nc = n - 1, abs(effect) / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    # the far tail can come back as nan from scipy's nct at 1 df (it is ~0 there)
    return float(np.nan_to_num(stats.nct.sf(crit, df, nc)) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)))


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect: the smallest true mean difference that the two-sided t-test over ``n`` paired
    runs with per-run sd ``sd`` detects with probability ``power`` at level ``alpha`` (noncentral t)."""
    from scipy.optimize import brentq

    if n < 2 or not math.isfinite(sd) or sd < 0:
        return math.nan
    if sd == 0:
        return 0.0
    se = sd / math.sqrt(n)
    high = se
    while t_power(high, sd, n, alpha=alpha) < power:
        high *= 2
    return float(brentq(lambda e: t_power(e, sd, n, alpha=alpha) - power, 0.0, high, xtol=1e-12 * max(se, 1e-300)))


def tost_power(sd: float, n: int, margin: float, *, alpha: float = 0.05, true_diff: float = 0.0) -> float:
    """A lower bound on the power of TOST at ``+-margin`` (each one-sided test at ``alpha``) over ``n`` paired
    runs when the true difference is ``true_diff``: ``1 - P(the lower test fails) - P(the upper test fails)``,
    each from the noncentral t."""
    from scipy import stats

    if n < 2 or not sd > 0:
        return math.nan
    df, se = n - 1, sd / math.sqrt(n)
    crit = stats.t.ppf(1 - alpha, df)
    fail_low = _nct_tail(crit, df, (true_diff + margin) / se, lower=True)
    fail_high = _nct_tail(-crit, df, (true_diff - margin) / se, lower=False)
    return float(max(0.0, 1.0 - fail_low - fail_high))


def _nct_tail(x: float, df: int, nc: float, *, lower: bool) -> float:
    """P(T <= x) (``lower``) or P(T > x) of a noncentral t, through the other tail where scipy returns nan."""
    from scipy import stats

    first, other = (stats.nct.cdf, stats.nct.sf) if lower else (stats.nct.sf, stats.nct.cdf)
    value = float(first(x, df, nc))
    if math.isnan(value):
        value = 1.0 - float(other(x, df, nc))
    if math.isnan(value):  # both tails lost: the mass is on one side of x
        value = float((x > nc) == lower)
    return value


def seeds_needed(target: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, kind: str = "detect",
                 max_seeds: int = 10_000) -> int | None:
    """The fewest paired runs (seeds) with which a true difference of ``target`` is detected (``kind="detect"``:
    MDE <= target), or with which TOST at ``+-target`` shows equivalence when the true difference is 0
    (``kind="equivalence"``), with probability ``power``. ``None`` past ``max_seeds``."""
    if kind not in ("detect", "equivalence"):
        raise ValueError(f"kind must be detect or equivalence, got {kind!r}")
    if not (sd > 0 and math.isfinite(sd)):
        return 2 if sd == 0 else None
    ok = ((lambda n: t_power(target, sd, n, alpha=alpha) >= power) if kind == "detect" else
          (lambda n: tost_power(sd, n, target, alpha=alpha) >= power))
    low, high = 2, 2
    while not ok(high):
        if high >= max_seeds:
            return None
        low, high = high, min(2 * high, max_seeds)
    while low < high:  # the smallest n that is ok (power grows with n)
        mid = (low + high) // 2
        low, high = (mid + 1, high) if not ok(mid) else (low, mid)
    return high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels)."""
    if not len(p_values):
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


def stable_seed(*parts: Any) -> int:
    """A seed for one comparison's bootstrap that depends on its name, not on its place in the report."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def two_level_bootstrap(blocks: Sequence[np.ndarray], *, resamples: int = 10_000, seed: int = 0,
                        level: float = 0.95, chunk: int = 500) -> tuple[float, float]:
    """Percentile interval of the endpoint difference by a two-level bootstrap.

    ``blocks``: one array per dataset of the endpoint, ``[seed, query]`` per-query differences of the paired runs
    (the rows of every block are the same seeds, in the same order). Each resample draws the seeds with
    replacement, then for each drawn seed that dataset's queries with replacement; the statistic is the mean over
    the drawn seeds of the mean over the drawn queries, averaged over the datasets (a macro endpoint). Seeded:
    the same ``seed`` gives the same interval."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    n_seeds = blocks[0].shape[0]
    if any(b.ndim != 2 or b.shape[0] != n_seeds or b.shape[1] == 0 for b in blocks):
        raise ValueError("every block must be a [seed, query] array over the same seeds")
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        seed_idx = rng.integers(0, n_seeds, (b, n_seeds))
        total = np.zeros(b)
        for block in blocks:
            q_idx = rng.integers(0, block.shape[1], (b, n_seeds, block.shape[1]))
            total += block[seed_idx[:, :, None], q_idx].mean(axis=(1, 2))
        stats.append(total / len(blocks))
    values = np.concatenate(stats)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
