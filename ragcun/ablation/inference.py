"""Run-level inference for an ablation: the unit is a trained model (a run), not a query.

A query-level test over the per-query scores of a few trained models answers "do these particular models differ
on these queries?"; the seed-to-seed variation of training is left out of its p-value, so it calls differences
"significant" that another set of seeds would not reproduce. The question an ablation asks is "does the arm
change the expected quality of a trained model?", so its unit is the run:

* the **endpoint** of a run is its dataset-level metric (``result.json``), or for a ``macro`` endpoint the mean
  of those over the endpoint's datasets;
* arm A against a trained control C: the differences ``A_s - C_s`` of runs with the same seed ``s`` (paired by
  seed); against a training-free control (one deterministic run) the differences ``A_s - C``;
* a t-test over those differences (``scipy.stats.ttest_1samp``: the paired t over seeds), its 95% interval, the
  two one-sided tests (TOST) at ``+-margin`` (equivalence: the 90% t interval inside the margin), and the
  minimum detectable effect (MDE) of that many seeds at power 0.8 (noncentral t);
* a two-level bootstrap interval (resample seeds, then queries within each resampled seed; for a macro endpoint
  queries within each dataset), seeded and reproducible: it also carries the sampling of queries.

:func:`mde`, :func:`seeds_needed` and :func:`power_report` size a plan before it runs (``ragcun ablation power``).
The statistics themselves live in :mod:`ragcun.stats.paired` (shared with ``ragcun compare``) and are imported
here under their old names; this module reads a results folder into them. Everything is numpy/scipy;
:mod:`ragcun.ablation.compare` builds the report from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from ragcun.ablation.runner import RESULT_FILE
from ragcun.stats.paired import (holm, mde, seed_t, seed_test, seeds_needed, stable_seed, t_power,  # noqa: F401
                                 tost_p, tost_power, two_level_bootstrap)

METRIC = "NDCG@10"
MACRO = "macro"


# -- the data of a results folder ---------------------------------------------------------------------------------
def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """``{arm: {"seeds": {seed: result}, "per_query": {dataset: {seed: {qid: {metric: v}}}}, "trained": bool}}``
    from a results folder's ``runs/ARM/seed-S/result.json`` (and ``runs/ARM/fixed/`` for training-free arms)."""
    arms: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(results).glob(f"runs/*/*/{RESULT_FILE}")):
        result = json.loads(path.read_text())
        arm = arms.setdefault(result["arm"], {"seeds": {}, "per_query": {}, "what": result.get("what", ""),
                                              "trained": bool(result.get("trained", True))})
        arm["seeds"][result["seed"]] = result
        for dataset in result["datasets"]:
            pq = path.parent / f"{dataset}.per_query.json"
            if not pq.is_file():
                raise ValueError(f"{pq}: missing (the run in {path.parent} is incomplete; delete its {RESULT_FILE} "
                                 "and run the plan again)")
            arm["per_query"].setdefault(dataset, {})[result["seed"]] = json.loads(pq.read_text())
    return arms


def run_metric(result: dict[str, Any], per_query: dict[str, Any] | None, dataset: str, metric: str) -> float | None:
    """A run's dataset-level ``metric`` as it recorded it (else the mean of its per-query values)."""
    cell = result["datasets"].get(dataset)
    if cell is None:
        return None
    if metric in cell.get("metrics", {}):
        return float(cell["metrics"][metric])
    if per_query:
        values = [v[metric] for v in per_query.values() if metric in v]
        if values:
            return float(np.mean(values))
    return None


def endpoint_values(arm: dict[str, Any], datasets: Sequence[str], metric: str = METRIC) -> dict[int, float]:
    """``{seed: endpoint}``: each run's metric, averaged over ``datasets`` (one dataset: its metric), for the runs
    that have every one of them."""
    out = {}
    for seed, result in arm["seeds"].items():
        values = [run_metric(result, arm["per_query"].get(d, {}).get(seed), d, metric) for d in datasets]
        if values and all(v is not None for v in values):
            out[seed] = float(np.mean(values))
    return out


def endpoint_datasets(endpoint: str, primary_datasets: Sequence[str]) -> list[str]:
    return list(primary_datasets) if endpoint == MACRO else [endpoint]


def paired_runs(arm: dict[str, Any], control: dict[str, Any], datasets: Sequence[str],
                metric: str = METRIC) -> tuple[list[int], np.ndarray, str] | None:
    """The seeds, per-seed endpoint differences and pairing of ``arm`` against ``control`` (``None`` when no
    run-level test is possible: fewer than 2 runs of the arm, or fewer than 2 shared seeds)."""
    a = endpoint_values(arm, datasets, metric)
    c = endpoint_values(control, datasets, metric)
    if not arm["trained"] or not c:
        return None
    if control["trained"]:
        seeds = sorted(set(a) & set(c))
        if len(seeds) < 2:
            return None
        return seeds, np.array([a[s] - c[s] for s in seeds]), "paired by seed"
    seeds = sorted(a)
    if len(seeds) < 2:
        return None
    fixed = next(iter(c.values()))
    return seeds, np.array([a[s] - fixed for s in seeds]), "against the fixed run"


def query_blocks(arm: dict[str, Any], control: dict[str, Any], seeds: Sequence[int], datasets: Sequence[str],
                 metric: str = METRIC) -> list[np.ndarray]:
    """Per dataset, the ``[seed, query]`` per-query differences of the paired runs (queries judged in all of them)."""
    blocks = []
    for dataset in datasets:
        a_runs = arm["per_query"][dataset]
        c_runs = control["per_query"][dataset]
        c_of = ((lambda s, c_runs=c_runs: c_runs[s]) if control["trained"]
                else (lambda s, c_runs=c_runs: next(iter(c_runs.values()))))
        qids = sorted(set.intersection(*[set(a_runs[s]) & set(c_of(s)) for s in seeds]))
        blocks.append(np.array([[a_runs[s][q][metric] - c_of(s)[q][metric] for q in qids] for s in seeds]))
    return blocks


# -- power before the runs (``ragcun ablation power``) ------------------------------------------------------------
def power_report(plan, pilot: str | Path, *, target: float | None = None, rho: float = 0.0, power: float = 0.8,
                 alpha: float = 0.05, metric: str | None = None) -> dict[str, Any]:
    """For each primary comparison of ``plan`` and its endpoints: the sd of the per-seed endpoint difference
    (observed in ``pilot`` when both arms ran there with >= 2 paired seeds; else estimated from the control's
    per-seed sd as ``sqrt(2) * sd * sqrt(1 - rho)``, ``rho`` the assumed correlation of paired runs), the MDE
    (two-sided ``alpha``, ``power``) with the plan's seeds, and the seeds needed to detect ``target`` (and to
    show equivalence within ``+-target`` when the truth is 0). A plan without ``[primary]`` gets its trained
    arms against its baseline (exploratory). Also the baseline's per-query spread and what a query-level test
    (conditional on the runs) would detect, for contrast."""
    from ragcun.ablation.plan import Comparison

    pilot = Path(pilot)
    arms = load_results(pilot)
    if not arms:
        raise ValueError(f"{pilot}: no finished runs to take the variances from (looked for runs/*/*/{RESULT_FILE})")
    if not 0 <= rho < 1:
        raise ValueError(f"rho (the assumed correlation of two runs with the same seed) must be in [0, 1), got {rho}")
    primary = plan.primary
    metric = metric or (primary.metric if primary else METRIC)
    if primary is not None:
        comparisons, endpoints, datasets = primary.comparisons, primary.endpoints(), primary.datasets
        role = "primary"
    else:
        comparisons = [Comparison(a.name, plan.baseline) for a in plan.arms.values()
                       if a.trained and a.name != plan.baseline and len(plan.seeds_of(a)) >= 2]
        endpoints, datasets, role = list(plan.datasets), list(plan.datasets), "exploratory (no [primary])"
    baseline = plan.baseline if plan.baseline in arms else next((n for n, a in arms.items()
                                                                if a["trained"] and len(a["seeds"]) >= 2), None)
    rows = []
    for comparison in comparisons:
        arm, control = plan.arms[comparison.arm], plan.arms[comparison.control]
        n = (len(set(plan.seeds_of(arm)) & set(plan.seeds_of(control))) if control.trained
             else len(plan.seeds_of(arm)))
        for endpoint in endpoints:
            eds = endpoint_datasets(endpoint, datasets)
            # a pilot of another plan (e.g. in-domain runs piloting a zero-shot plan) may lack some of the
            # endpoint's datasets: the ones it has stand in, and the row says so
            held = [d for d in eds if any(d in a["per_query"] for a in arms.values())]
            proxy = held and held != eds
            sd, source = _difference_sd(arms, comparison, control.trained, held or eds, metric, baseline, rho)
            if proxy and sd is not None:
                source += (f"; the pilot has {', '.join(held)} of the endpoint's {len(eds)} dataset(s), so their "
                           f"{'mean' if len(held) > 1 else 'value'} stands in for it")
            row = {"comparison": str(comparison), "endpoint": endpoint, "seeds": n, "sd_diff": sd, "source": source,
                   "mde": mde(sd, n, alpha=alpha, power=power) if sd is not None else None}
            if target is not None and sd is not None:
                row["seeds_to_detect_target"] = seeds_needed(target, sd, alpha=alpha, power=power)
                row["seeds_for_equivalence_at_target"] = seeds_needed(target, sd, alpha=alpha, power=power,
                                                                      kind="equivalence")
            rows.append(row)
    return {"plan": str(plan.path), "pilot": str(pilot), "metric": metric, "alpha": alpha, "power": power,
            "target": target, "rho": rho, "role": role, "rows": rows,
            "per_query": _per_query_spread(arms, baseline, plan.datasets, metric)}


def _difference_sd(arms, comparison, control_trained: bool, datasets, metric, baseline, rho):
    a, c = arms.get(comparison.arm), arms.get(comparison.control)
    if a is not None and c is not None:
        pairs = paired_runs(a, c, datasets, metric)
        if pairs is not None:
            seeds, diffs, how = pairs
            return float(np.std(diffs, ddof=1)), (f"observed: sd of {len(seeds)} per-seed differences "
                                                 f"{comparison} ({how})")
    if not control_trained:  # A_s - C: its sd is the arm's own between-seed sd
        for name in (comparison.arm, baseline):
            if name in arms and arms[name]["trained"]:
                values = list(endpoint_values(arms[name], datasets, metric).values())
                if len(values) >= 2:
                    return float(np.std(values, ddof=1)), (f"the between-seed sd of {name!r} over {len(values)} runs"
                                                           + (" (standing in for the arm's)" if name != comparison.arm
                                                              else "") + "; the control is one fixed run")
        return None, "no trained arm with 2 or more runs in the pilot"
    for name in (comparison.control, baseline):
        if name in arms and arms[name]["trained"]:
            values = list(endpoint_values(arms[name], datasets, metric).values())
            if len(values) >= 2:
                sd = float(np.std(values, ddof=1))
                return math.sqrt(2) * sd * math.sqrt(1 - rho), (
                    f"estimated: sqrt(2) x sd({name!r} over {len(values)} runs = {sd:.4g}) x sqrt(1 - rho), "
                    f"rho = {rho:g} assumed (the correlation of an arm's and its control's run with the same seed)")
    return None, "no trained arm with 2 or more runs in the pilot"


def _per_query_spread(arms, baseline, datasets, metric) -> dict[str, Any]:
    """The baseline's variances on each dataset: per query (over the queries of one run), the per-query
    run-to-run noise (two of its runs, paired by query), the between-seed sd of its endpoint that this noise alone
    would give if queries varied independently, and the between-seed sd observed. Observed above implied: training
    moves whole runs up or down together, which a test over queries cannot see."""
    out = {}
    if baseline is None:
        return out
    arm = arms[baseline]
    for dataset in datasets:
        runs = arm["per_query"].get(dataset, {})
        if not runs:
            continue
        seeds = sorted(runs)
        qids = sorted(set.intersection(*[set(runs[s]) for s in seeds]))
        scores = np.array([[runs[s][q][metric] for q in qids] for s in seeds])
        cell = {"arm": baseline, "queries": len(qids), "runs": len(seeds), "sd_query": float(scores[0].std(ddof=1))}
        if len(seeds) >= 2:
            pair_sd = float(np.sqrt(np.mean([np.var(scores[i] - scores[j], ddof=1) for i in range(len(seeds))
                                             for j in range(i + 1, len(seeds))])))
            cell["sd_query_diff_two_runs"] = pair_sd
            cell["endpoint_sd_if_queries_independent"] = pair_sd / math.sqrt(2) / math.sqrt(len(qids))
            values = list(endpoint_values(arm, [dataset], metric).values())
            cell["endpoint_sd_observed"] = float(np.std(values, ddof=1))
        out[dataset] = cell
    return out


def power_markdown(report: dict[str, Any]) -> str:
    alpha, power = report["alpha"], report["power"]
    lines = [f"Power of the run-level test ({report['metric']}, paired t over seeds, two-sided alpha {alpha:g}, power "
             f"{power:g}, noncentral t) for {report['plan']}, variances from {report['pilot']} "
             f"({report['role']} comparisons):", ""]
    target = report["target"]
    header = "| comparison | endpoint | seeds | sd of the per-seed difference | MDE |"
    rule = "|---|---|---|---|---|"
    if target is not None:
        header += f" seeds to detect {target:g} | seeds for TOST ±{target:g} (truth 0) |"
        rule += "---|---|"
    lines += [header, rule]
    for r in report["rows"]:
        sd = "-" if r["sd_diff"] is None else f"{r['sd_diff']:.4f}"
        cells = [r["comparison"], r["endpoint"], str(r["seeds"]), sd, _num(r["mde"])]
        if target is not None:
            known = r["sd_diff"] is not None  # no variance, no count (not "more than 10000")
            cells += [_count(r.get("seeds_to_detect_target"), known),
                      _count(r.get("seeds_for_equivalence_at_target"), known)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"* {r['comparison']} ({r['endpoint']}): {r['source']}" for r in report["rows"]]
    if target is not None:
        lines.append(f"* TOST seeds: a lower bound on its power (1 - both one-sided failure probabilities) reaches "
                     f"{power:g} with the true difference 0")
    for dataset, cell in report["per_query"].items():
        line = (f"* per query, {dataset}: `{cell['arm']}`'s {report['metric']} has sd {cell['sd_query']:.3f} over "
                f"{cell['queries']} queries")
        if "sd_query_diff_two_runs" in cell:
            line += (f"; two of its runs differ per query with sd {cell['sd_query_diff_two_runs']:.3f}, which "
                     f"alone (queries independent) would move the endpoint from seed to seed by sd "
                     f"{cell['endpoint_sd_if_queries_independent']:.4f}; observed over its {cell['runs']} runs: "
                     f"{cell['endpoint_sd_observed']:.4f}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _count(value, known: bool = True) -> str:
    if not known:
        return "-"
    return "> 10000" if value is None else str(value)
