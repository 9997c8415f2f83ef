"""The report of a finished (or partly finished) plan: run-level inference first, the query-level test second.

For each arm and dataset: NDCG@10 (and R@100) mean +- sd over seeds with each seed's value, the macro-average,
and the isotropy of the searched corpus embeddings (means over seeds). Then the comparisons, each ``ARM vs
CONTROL``:

* **run-level** (:mod:`ragcun.ablation.inference`): one number per trained model, the arm's run minus the
  control's run with the same seed (against a training-free control, its one run); a t-test over seeds, its 95%
  interval, a two-level bootstrap 95% interval (seeds, then queries), TOST at ``+-margin`` and the MDE of the
  seeds used. **Verdicts come from here only**, and only for the plan's pre-registered ``[primary]`` family:
  better / worse (Holm-adjusted p over that family below alpha), equivalent (TOST at the margin), inconclusive
  (neither). ``[secondary]`` comparisons, a plan without ``[primary]`` (every comparison exploratory: trained arms
  against the plan's baseline, training-free arms against the arm ``base``) and a primary family that changed
  since it was recorded (``exploratory=True``) get p-values and intervals, unadjusted, without verdict words;
* **query-level, conditional on these runs**: the per-query NDCG@10 averaged over each arm's runs, a paired test
  over queries (ranx) with a bootstrap interval over queries. It asks whether these particular trained models
  differ on these queries, not whether the arm changes a trained model's expected quality; arms with one run or
  no training get only this.

Everything comes from the files the runner wrote (``runs/ARM/seed-S/result.json`` and the per-query JSON, and
``plan.json``), so the report can be rebuilt on any machine that has the committed results. Runs that record
their settings are checked first: an arm whose runs ran with different settings (a row would average two
experiments), or runs evaluated differently, are refused, naming the runs and the settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ragcun.ablation.inference import (MACRO, METRIC, endpoint_datasets, endpoint_values, holm, load_results,
                                       paired_runs, query_blocks, seed_test, stable_seed, two_level_bootstrap)
from ragcun.stats.paired import bootstrap_interval, paired_test  # shared with ragcun compare

__all__ = ["bootstrap_interval", "compare", "holm", "load_results", "paired_test", "plot", "to_markdown", "verdict",
           "write_report"]


def seed_mean_per_query(per_seed: dict[Any, dict[str, dict[str, float]]], metric: str = METRIC) -> dict[str, float]:
    """Per-query ``metric`` averaged over seeds (queries judged in every seed's run)."""
    runs = list(per_seed.values())
    qids = sorted(set.intersection(*[set(r) for r in runs]))
    return {q: float(np.mean([r[q][metric] for r in runs])) for q in qids}


def verdict(mean: float, p_holm: float, p_tost: float, margin: float, alpha: float = 0.05) -> str:
    """The run-level verdict of a primary comparison. Significance (Holm-adjusted p < alpha) and equivalence (TOST
    at +-margin: p_tost < alpha) are separate questions; a small but real difference is both, and the verdict says
    so; neither is "inconclusive", never "no effect"."""
    significant, equivalent = p_holm < alpha, p_tost < alpha
    if significant:
        direction = "better" if mean > 0 else "worse"
        return f"{direction}, within ±{margin:g} (TOST)" if equivalent else direction
    return f"equivalent within ±{margin:g} (TOST)" if equivalent else "inconclusive"


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


# -- what to compare ---------------------------------------------------------------------------------------------
def _analysis(results: Path, plan) -> dict[str, Any]:
    """The plan's baseline, primary family (``None``: a plan without ``[primary]``), secondary comparisons and
    datasets: from ``plan`` (a loaded plan file) when given, else from the results folder's ``plan.json``."""
    path = results / "plan.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    if plan is not None:
        return {"name": plan.name, "baseline": plan.baseline, "datasets": list(plan.datasets),
                "primary": plan.primary.family() if plan.primary else None,
                "secondary": [str(c) for c in plan.secondary], "truncate_dim": info.get("truncate_dim")}
    return {"name": info.get("name", results.name), "baseline": info.get("baseline"),
            "datasets": info.get("datasets"), "primary": info.get("primary"), "secondary": info.get("secondary") or [],
            "truncate_dim": info.get("truncate_dim")}


def _split(text: str) -> tuple[str, str]:
    arm, _, control = str(text).partition(" vs ")
    if not arm.strip() or not control.strip():
        raise ValueError(f"a comparison is 'ARM vs CONTROL', got {text!r}")
    return arm.strip(), control.strip()


def _comparisons(spec: dict[str, Any], arms: dict[str, Any], baseline: str | None,
                 with_verdicts: bool) -> list[dict[str, str]]:
    if spec["primary"] is not None:
        role = "primary" if with_verdicts else "exploratory"
        out = [dict(zip(("arm", "control"), _split(c)), role=role) for c in spec["primary"]["comparisons"]]
        return out + [dict(zip(("arm", "control"), _split(c)), role="secondary") for c in spec["secondary"]]
    out = []
    for name, arm in arms.items():  # legacy: trained arms against the baseline, training-free ones against base
        control = baseline if arm["trained"] else "base"
        if name != control and control in arms:
            out.append({"arm": name, "control": control, "role": "exploratory"})
    return out


# -- the report --------------------------------------------------------------------------------------------------
def compare(results: str | Path, *, plan=None, baseline: str | None = None, test: str = "student",
            margin: float | None = None, exploratory: bool = False, resamples: int = 10_000,
            seed: int = 0) -> dict[str, Any]:
    """The comparison as a dict (what ``report.json`` holds); see the module docstring.

    ``plan``: a loaded plan (:func:`ragcun.ablation.plan.load_plan`) whose ``[primary]``/``[secondary]`` replace
    those of ``plan.json``; ``margin``: overrides the primary family's (a changed family: refused unless
    ``exploratory``); ``baseline``: the control of a plan without ``[primary]``; ``resamples``/``seed``: the
    two-level bootstrap's."""
    from ragcun.ablation.preregistration import check_for_compare

    results = Path(results)
    arms = load_results(results)
    if not arms:
        raise ValueError(f"{results}: no finished runs (looked for runs/*/*/result.json)")
    check_settings(results, arms)
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite positive number, got {margin!r}")
    spec = _analysis(results, plan)
    family = spec["primary"]
    if baseline is not None and family is not None:
        raise ValueError("--baseline sets the control of a plan without [primary]; this plan's [primary] and "
                         "[secondary] name each comparison's control ('ARM vs CONTROL')")
    baseline = baseline or spec["baseline"]
    if family is None and baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no finished run in {results} (have: {', '.join(arms)})")
    if family is not None and margin is not None:
        family = {**family, "margin": float(margin)}
    prereg = check_for_compare(results, family, exploratory=exploratory)
    if spec["truncate_dim"] is not None:  # a plan's truncate_dims view: the pre-registered endpoint is the full width
        prereg = {"status": "truncated view", "note": f"every run's vectors cut to their first {spec['truncate_dim']} "
                  "dimensions (the plan's truncate_dims): an exploratory view, no verdicts; the pre-registered "
                  "analysis is the full width's, in the folder above"}
    with_verdicts = family is not None and prereg["status"] not in ("changed", "truncated view")
    metric = family["metric"] if family else METRIC
    margin = float(family["margin"] if family else margin if margin is not None else 0.01)
    alpha = float(family["alpha"]) if family else 0.05
    found = list(dict.fromkeys(d for a in arms.values() for r in a["seeds"].values() for d in r["datasets"]))
    planned = spec["datasets"] or []
    datasets = [d for d in planned if d in found] + [d for d in found if d not in planned]
    endpoint_ds = list(family["datasets"]) if family else datasets
    endpoints = [MACRO] if family and family["average"] == "macro" else endpoint_ds
    comparisons = _comparisons(spec, arms, baseline, with_verdicts)

    for comparison in comparisons:
        comparison["run_level"] = {e: _run_level(arms, comparison, e, endpoint_ds, metric, margin, alpha,
                                                 resamples, seed) for e in endpoints}
        comparison["query_level"] = {d: _query_level(arms, comparison, d, metric, test) for d in datasets}
        comparison["query_level"] = {d: v for d, v in comparison["query_level"].items() if v is not None}
    primary_tests = [(c, e) for c in comparisons if c["role"] == "primary" for e in endpoints]
    adjusted = holm([c["run_level"][e].get("p", 1.0) for c, e in primary_tests])  # a missing test counts as p = 1
    for (c, e), p_adj in zip(primary_tests, adjusted):
        cell = c["run_level"][e]
        if "p" in cell:
            cell["p_holm"] = p_adj
            cell["verdict"] = verdict(cell["mean"], p_adj, cell["p_tost"], margin, alpha)

    rows = [_arm_row(name, arm, datasets, endpoint_ds, metric) for name, arm in arms.items()]
    selection_s = [float(json.loads(p.read_text()).get("train", {}).get("train_s", 0.0))
                   for p in sorted((results / "selection").glob("lambda-*.json"))]
    return {"results": str(results), "name": spec["name"], "baseline": baseline, "metric": metric, "test": test,
            "margin": margin, "alpha": alpha, "primary": family, "secondary": spec["secondary"],
            "preregistration": prereg, "verdicts": with_verdicts, "endpoints": endpoints,
            "endpoint_datasets": endpoint_ds, "datasets": datasets, "arms": rows, "comparisons": comparisons,
            "tests": len(primary_tests), "bootstrap": {"resamples": resamples, "seed": seed},
            "wall_s": {"runs": sum(sum(r["wall_s"]) for r in rows), "selection_training": sum(selection_s)},
            "selection": _read_json(results / "selection.json"), "dev_split": _dev_summary(results),
            **({"truncate_dim": spec["truncate_dim"]} if spec["truncate_dim"] is not None else {})}


def _run_name(result: dict[str, Any]) -> str:
    return f"runs/{result['arm']}/" + (f"seed-{result['seed']}" if result.get("trained", True) else "fixed")


def check_settings(results: Path, arms: dict[str, Any]) -> None:
    """Refuse a results folder that would average or compare runs made with different settings: within an arm,
    every run that records its settings must have the same settings hash (the seed aside), and every run the
    same evaluation settings. Runs written before the settings record are not checked."""
    from ragcun.ablation.plan import describe_differences, settings_differences, settings_hash

    fix = ("set the odd runs aside (ragcun ablation run PLAN --rerun-changed re-runs those that differ from the "
           "plan), or move them out of runs/")
    evaluated: dict[str, list[dict[str, Any]]] = {}
    for name, arm in arms.items():
        groups: dict[str, list[dict[str, Any]]] = {}
        for result in arm["seeds"].values():
            if isinstance(result.get("settings"), dict):
                groups.setdefault(settings_hash(result["settings"]), []).append(result)
                key = json.dumps(result["settings"].get("evaluation"), sort_keys=True)
                evaluated.setdefault(key, []).append(result)
        if len(groups) > 1:
            (_, first), *others = groups.items()
            lines = [f"{', '.join(_run_name(r) for r in group)}: "
                     + describe_differences(settings_differences(first[0]["settings"], group[0]["settings"],
                                                                 ("run.seed",)))
                     for _, group in others]
            raise ValueError(f"{results}: arm {name!r} has runs made with different settings, which one row would "
                             f"average; against {', '.join(_run_name(r) for r in first)}: " + "; ".join(lines)
                             + f"; {fix}")
    if len(evaluated) > 1:
        (_, first), *others = evaluated.items()
        lines = [f"{', '.join(_run_name(r) for r in group)}: "
                 + describe_differences(settings_differences({"evaluation": first[0]["settings"].get("evaluation")},
                                                             {"evaluation": group[0]["settings"].get("evaluation")}))
                 for _, group in others]
        raise ValueError(f"{results}: runs were evaluated with different settings, so their numbers do not compare; "
                         f"against {', '.join(_run_name(r) for r in first)}: " + "; ".join(lines) + f"; {fix}")


def _run_level(arms, comparison, endpoint, endpoint_ds, metric, margin, alpha, resamples, seed) -> dict[str, Any]:
    arm, control = arms.get(comparison["arm"]), arms.get(comparison["control"])
    if arm is None or control is None:
        missing = comparison["arm"] if arm is None else comparison["control"]
        return {"none": f"no finished run of {missing!r}"}
    datasets = endpoint_datasets(endpoint, endpoint_ds)
    if not all(d in arm["per_query"] and d in control["per_query"] for d in datasets):
        return {"none": f"not evaluated on {', '.join(datasets)}"}
    if not arm["trained"]:
        return {"none": "training-free: one deterministic run, query-level only"}
    pairs = paired_runs(arm, control, datasets, metric)
    if pairs is None:
        n = len(arm["seeds"])
        return {"none": f"{n} run{'s' if n != 1 else ''}: a run-level test needs 2 or more"
                + (" paired by seed" if control["trained"] else "") + ", query-level only"}
    seeds, diffs, how = pairs
    cell = seed_test(diffs, margin=margin, alpha=alpha)
    cell.update(seeds=seeds, diffs={str(s): float(d) for s, d in zip(seeds, diffs)}, pairing=how)
    blocks = query_blocks(arm, control, seeds, datasets, metric)
    cell["bootstrap_ci95"] = list(two_level_bootstrap(
        blocks, resamples=resamples, seed=stable_seed(seed, comparison["arm"], comparison["control"], endpoint)))
    return cell


def _query_level(arms, comparison, dataset, metric, test) -> dict[str, Any] | None:
    arm, control = arms.get(comparison["arm"]), arms.get(comparison["control"])
    if arm is None or control is None or dataset not in arm["per_query"] or dataset not in control["per_query"]:
        return None
    a_q = seed_mean_per_query(arm["per_query"][dataset], metric)
    c_q = seed_mean_per_query(control["per_query"][dataset], metric)
    qids = sorted(set(a_q) & set(c_q))
    c, a = np.array([c_q[q] for q in qids]), np.array([a_q[q] for q in qids])
    low, high = bootstrap_interval(a - c)
    return {"diff": float((a - c).mean()), "ci95": [low, high], "queries": len(qids), "p": paired_test(c, a, test),
            "runs": [len(arm["per_query"][dataset]), len(control["per_query"][dataset])]}


def _arm_row(name, arm, datasets, endpoint_ds, metric) -> dict[str, Any]:
    first = next(iter(arm["seeds"].values()))
    row = {"arm": name, "what": arm["what"], "seeds": sorted(arm["seeds"]), "trained": first["trained"],
           "trainable_params": first["info"].get("trainable_params"), "lambda": first["info"].get("lambda"),
           "loss": first["info"].get("loss"), "global_batch": first["info"].get("global_batch"), "datasets": {},
           "wall_s": [float(r.get("wall_s", 0.0)) for r in arm["seeds"].values()],
           "train_s": [float(r["info"]["train_s"]) for r in arm["seeds"].values() if "train_s" in r["info"]]}
    for dataset in datasets:
        runs = {s: r["datasets"][dataset] for s, r in arm["seeds"].items() if dataset in r["datasets"]}
        if not runs:
            continue
        cell: dict[str, Any] = {"n_seeds": len(runs)}
        for key in (metric, "Recall@100"):
            values = {s: r["metrics"][key] for s, r in runs.items() if key in r["metrics"]}
            if values:
                mean, sd = _mean_sd(list(values.values()))
                cell[key] = {"mean": mean, "sd": sd, "values": {str(s): v for s, v in sorted(values.items())}}
        first_iso = next(iter(runs.values()))["isotropy"]
        keys = [k for k, v in first_iso.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        cell["isotropy"] = {k: float(np.mean([r["isotropy"][k] for r in runs.values()])) for k in keys}
        cell["isotropy_sd"] = {k: float(np.std([r["isotropy"][k] for r in runs.values()], ddof=1))
                               for k in keys if len(runs) > 1}
        row["datasets"][dataset] = cell
    macro = endpoint_values(arm, endpoint_ds, metric)
    if macro and len(endpoint_ds) > 1:
        mean, sd = _mean_sd(list(macro.values()))
        row["macro"] = {"mean": mean, "sd": sd, "values": {str(s): v for s, v in sorted(macro.items())},
                        "datasets": list(endpoint_ds)}
    return row


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _dev_summary(results: Path):
    info = _read_json(results / "dev_split.json")
    return None if info is None else {k: v for k, v in info.items() if k != "dev_query_ids"}


# -- Markdown ----------------------------------------------------------------------------------------------------
def _fmt(cell: dict | None, key: str) -> str:
    if not cell or key not in cell:
        return "-"
    mean, sd = cell[key]["mean"], cell[key]["sd"]
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _p(p: float) -> str:
    return f"{p:.3g}"


def _ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _run_cells(cell: dict[str, Any], holm_column: bool = False) -> list[str]:
    """seeds | per-seed Δ | Δ | 95% CI (t) | 95% CI (two-level bootstrap) | p | [p (Holm)] | p TOST | MDE"""
    if "none" in cell:
        return ["-"] * (7 + holm_column) + [f"- ({cell['none']})"]
    per_seed = ", ".join(f"{float(v):+.4f}" for v in cell["diffs"].values())
    holm = [_p(cell["p_holm"]) if "p_holm" in cell else "-"] if holm_column else []
    return [str(cell["n"]), per_seed, f"{cell['mean']:+.4f}", _ci(cell["ci95"]), _ci(cell["bootstrap_ci95"]),
            _p(cell["p"]), *holm, _p(cell["p_tost"]), f"{cell['mde']:.4f}"]


def to_markdown(report: dict[str, Any]) -> str:
    metric, margin, alpha = report["metric"], report["margin"], report["alpha"]
    family, prereg = report["primary"], report["preregistration"]
    title = report["name"] + (f", first {report['truncate_dim']} dims" if report.get("truncate_dim") else "")
    lines = [f"# Ablation report: {title}", "", f"**Pre-registration:** {prereg['note']}."]
    if family is not None:
        over = (f"the macro-average over {', '.join(family['datasets'])}" if family["average"] == "macro"
                else f"each of {', '.join(family['datasets'])}")
        lines.append("")
        holm_scope = (f"Holm corrects over these {report['tests']} tests only" if report["tests"]
                      else "no tests, so no Holm correction")
        lines.append(f"**Primary family** ({holm_scope}): {metric} on {over}; "
                     f"{'; '.join(family['comparisons'])}; margin ±{family['margin']:g}; alpha {family['alpha']:g}."
                     + ("" if report["verdicts"] else " **Exploratory analysis: " + (
                        "a truncated view" if report.get("truncate_dim") else "the family differs from the recorded "
                        "one") + ", so no comparison gets a verdict.**"))
    else:
        lines += ["", "**Every comparison is exploratory** (the plan declares no [primary]): trained arms against "
                  f"`{report['baseline']}`, training-free arms against `base`; p-values unadjusted, no verdicts."]
    lines += ["", "**Run-level analysis** (the unit is a trained model): a run's endpoint is its dataset-level "
              f"{metric}" + (" (macro: the mean over the endpoint's datasets)" if MACRO in report["endpoints"] else "")
              + "; per-seed Δ = arm's run − control's run with the same seed (a training-free control: its one run); "
              "Δ is their mean, p a t-test over seeds (scipy), 95% CI (t) its interval; the two-level bootstrap "
              f"resamples seeds, then queries within each seed ({report['bootstrap']['resamples']} resamples, seed "
              f"{report['bootstrap']['seed']}; with few seeds it is narrower than the t interval, which the verdicts "
              f"use); p TOST: two one-sided t-tests against ±{margin:g} (below {alpha:g} when the "
              f"{100 * (1 - 2 * alpha):g}% t interval lies inside ±{margin:g}); MDE: the true Δ these seeds detect "
              f"with power 0.8 at {alpha:g} two-sided (noncentral t, the observed sd of the per-seed Δ). Verdicts "
              f"(primary family only): better / worse when Holm-adjusted p < {alpha:g}, equivalent when p TOST < "
              f"{alpha:g}, inconclusive otherwise; inconclusive is not \"no effect\"."]
    head = "| comparison | endpoint | seeds | per-seed Δ | Δ | 95% CI (t) | 95% CI (bootstrap) | p | p TOST | MDE |"
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    primary = [c for c in report["comparisons"] if c["role"] in ("primary", "exploratory")]
    secondary = [c for c in report["comparisons"] if c["role"] == "secondary"]
    if primary:
        title = "Primary comparisons" if report["verdicts"] else "Comparisons (exploratory)"
        lines += ["", f"## {title}", ""]
        if report["verdicts"]:
            lines += [head.replace("| p |", "| p | p (Holm) |") + " verdict |", rule + "---|---|"]
        else:
            lines += [head, rule]
        for c in primary:
            for endpoint, cell in c["run_level"].items():
                cells = [f"{c['arm']} vs {c['control']}", endpoint, *_run_cells(cell, report["verdicts"])]
                if report["verdicts"]:
                    cells.append(f"**{cell['verdict']}**" if "verdict" in cell else "-")
                lines.append("| " + " | ".join(cells) + " |")
    if secondary:
        lines += ["", "## Secondary comparisons (exploratory: unadjusted p, no verdicts)", "", head, rule]
        for c in secondary:
            for endpoint, cell in c["run_level"].items():
                lines.append("| " + " | ".join([f"{c['arm']} vs {c['control']}", endpoint, *_run_cells(cell)]) + " |")
    lines += ["", "## Query-level tests, conditional on these runs", "",
              f"Per-query {metric} averaged over each arm's runs, arm − control, a paired "
              f"{'t-test' if report['test'] == 'student' else 'randomization test'} over queries (ranx) and a "
              "bootstrap 95% CI over queries. This asks whether these particular trained models differ on these "
              "queries; it leaves the seed-to-seed variance of training out, so its p-values are not evidence that "
              "the arm changes a trained model's quality (the run-level tables are). No verdicts, no correction.", "",
              "| comparison | dataset | runs (arm, control) | queries | Δ | 95% CI (queries) | p |",
              "|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        for dataset, q in c["query_level"].items():
            lines.append(f"| {c['arm']} vs {c['control']} | {dataset} | {q['runs'][0]}, {q['runs'][1]} | "
                         f"{q['queries']} | {q['diff']:+.4f} | {_ci(q['ci95'])} | {_p(q['p'])} |")
    lines += _arm_tables(report)
    sel = report.get("selection")
    if sel:
        lines += ["", f"λ chosen on the dev split (arm `{sel['arm']}`, seed {sel['seed']}, {sel['metric']}): "
                  f"**{sel['chosen']:g}** from " + ", ".join(f"{k}: {v:.4f}" for k, v in sel["dev"].items())]
    lines += _time_line(report)
    lines.append("")
    lines.append("What each arm is: " + "; ".join(f"`{r['arm']}`: {r['what'] or r['loss'] or 'training-free'}"
                                                  for r in report["arms"]) + ".")
    return "\n".join(lines) + "\n"


def _time_line(report: dict[str, Any]) -> list[str]:
    """The report's time line: the runs' own wall time, and the lambda selection's when the plan had one."""
    wall = report.get("wall_s")
    if not wall:
        return []
    selection = (f"; the lambda selection trained its candidates for {wall['selection_training'] / 60:.1f} min "
                 "when it ran (selection/; that time is inside the selected arm's first run when both ran in one "
                 "invocation, see run_log.jsonl)") if wall.get("selection_training") else ""
    per_run = "; ".join(f"`{r['arm']}` {np.mean(r['wall_s']) / 60:.1f} min" for r in report["arms"] if r["wall_s"])
    return ["", "Time (wall, this machine, as measured by the runs themselves; a run is its training and its "
            f"evaluation): finished runs {wall['runs'] / 60:.1f} min in all{selection}; mean per run: {per_run}."]


def _arm_tables(report: dict[str, Any]) -> list[str]:
    metric, datasets = report["metric"], report["datasets"]
    lines = ["", f"## {metric} per arm (mean ± sd over seeds)", ""]
    macro = any("macro" in r for r in report["arms"])
    lines.append("| arm | runs | " + " | ".join(datasets) + (
        f" | macro ({', '.join(report['endpoint_datasets'])}) |" if macro else " |"))
    lines.append("|---|---|" + "---|" * (len(datasets) + macro))
    for row in report["arms"]:
        cells = [row["arm"], str(len(row["seeds"])) if row["trained"] else "1 (fixed)"]
        cells += [_fmt(row["datasets"].get(d), metric) for d in datasets]
        if macro:
            cells.append(_fmt(row, "macro"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Isotropy of the searched corpus embeddings (a fixed sample of n documents, raw vectors; I(W) also "
              "on L2-normalized ones where recorded: raw I(W) is ~0 for any cloud whose norms are large, as "
              "unnormalized embeddings' are), means over seeds. SIGReg beside its exact N(0, I) floor for that n."]
    lines += _isotropy_summary(report)
    for dataset in datasets:
        lines += ["", f"### {dataset}", "",
                  f"| arm | seeds | trainable | λ | batch | λ·N | {metric} | per seed | R@100 | IsoScore | "
                  "I(W) raw / l2 | SIGReg (floor) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["arms"]:
            cell = row["datasets"].get(dataset)
            if cell is None:
                continue
            iso = cell["isotropy"]
            lam, batch = row["lambda"], row["global_batch"]
            per_seed = ", ".join(f"{v:.4f}" for v in cell[metric]["values"].values()) if metric in cell else "-"
            lines.append(" | ".join([
                f"| {row['arm']}", str(len(row["seeds"])) if row["trained"] else "-",
                f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "-",
                f"{lam:g}" if lam is not None else "-", str(batch) if batch else "-",
                f"{lam * batch:g}" if lam is not None and batch else "-",
                _fmt(cell, metric), per_seed if row["trained"] else "-", _fmt(cell, "Recall@100"),
                f"{iso.get('isoscore', math.nan):.3f}",
                f"{iso.get('partition_isotropy_raw', math.nan):.3f} / "
                + (f"{iso['partition_isotropy_l2']:.3f}" if "partition_isotropy_l2" in iso else "-"),
                f"{iso.get('sigreg_raw', math.nan):.2f} ({iso.get('sigreg_gaussian_floor', math.nan):.2f}) |"]))
    return lines


ISOTROPY_SUMMARY = (("IsoScore", "isoscore", ".3f"), ("I(W) l2", "partition_isotropy_l2", ".3f"),
                    ("I(W) raw", "partition_isotropy_raw", ".3f"), ("SIGReg", "sigreg_raw", ".2f"))


def _isotropy_summary(report: dict[str, Any]) -> list[str]:
    """One row per arm: each isotropy metric averaged over the datasets (of its means over seeds), so arms can be
    read side by side in one line; only with two datasets or more (else it repeats the dataset's table)."""
    datasets = report["datasets"]
    if len(datasets) < 2:
        return []
    lines = ["", f"Averaged over the {len(datasets)} datasets (each dataset's mean over seeds, then their mean):", "",
             "| arm | " + " | ".join(name for name, _, _ in ISOTROPY_SUMMARY) + " |",
             "|---|" + "---|" * len(ISOTROPY_SUMMARY)]
    for row in report["arms"]:
        cells = [row["arm"]]
        for _, key, form in ISOTROPY_SUMMARY:
            values = [c["isotropy"][key] for c in row["datasets"].values() if key in c["isotropy"]]
            cells.append(format(float(np.mean(values)), form) if len(values) == len(datasets) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- plots -------------------------------------------------------------------------------------------------------
MIN_SPAN = 0.05  # the y-range of a metric plot spans at least this much: a 0.001 difference must look small


def _ylim(ax, values: list[float], min_span: float = MIN_SPAN) -> None:
    lo, hi = min(values), max(values)
    span = max(min_span, 1.15 * (hi - lo))
    mid = (lo + hi) / 2
    ax.set_ylim(mid - span / 2, mid + span / 2)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metric_panels(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """(title, arm row -> its metric cell or None) for each dataset, then the macro-average when one was taken."""
    metric = report["metric"]
    panels = [(d, lambda r, d=d: r["datasets"].get(d, {}).get(metric)) for d in report["datasets"]]
    if any("macro" in r for r in report["arms"]):
        panels.append((f"macro ({', '.join(report['endpoint_datasets'])})", lambda r: r.get("macro")))
    return panels


def _draw_metric_panel(ax, report: dict[str, Any], title: str, get) -> None:
    """One panel of ndcg.png: each arm's runs as dots, their mean ± sd as a bar."""
    rows = [r for r in report["arms"] if get(r)]
    shown = []
    for i, r in enumerate(rows):
        cell = get(r)
        values = list(cell["values"].values())
        shown += values
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), values, s=14, color="0.55", zorder=2,
                   label="one run" if i == 0 else None)
        ax.errorbar([i], [cell["mean"]], yerr=[[cell["sd"] or 0.0], [cell["sd"] or 0.0]], fmt="_", ms=16,
                    mew=2, color="C0", capsize=5, zorder=3, label="mean ± sd over seeds" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
    ax.set_title(f"{title}: {report['metric']}")
    if shown:
        _ylim(ax, shown)
    ax.grid(axis="y", alpha=0.3)


def _plot_metric(plt, report: dict[str, Any], out: Path) -> Path:
    """ndcg.png: one panel per dataset (and the macro-average)."""
    panels = _metric_panels(report)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (title, get) in zip(axes[0], panels):
        _draw_metric_panel(ax, report, title, get)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(plt, fig, out / "ndcg.png")


def _difference_items(report: dict[str, Any]) -> list[tuple]:
    """(label, role, mean, t CI, bootstrap CI or None, conditional) per row of differences.png: the run-level
    difference of each endpoint, or, where an endpoint has no run-level test, the query-level difference of each
    of its datasets (conditional on the runs)."""
    items = []
    for c in report["comparisons"]:
        label = f"{c['arm']} vs {c['control']}"
        for endpoint, cell in c["run_level"].items():
            if "none" not in cell:
                items.append((f"{label} [{endpoint}]", c["role"], cell["mean"], cell["ci95"],
                              cell["bootstrap_ci95"], False))
            else:
                for dataset, q in c["query_level"].items():
                    if dataset in endpoint_datasets(endpoint, report["endpoint_datasets"]):
                        items.append((f"{label} [{dataset}, query-level]", c["role"], q["diff"], q["ci95"], None,
                                      True))
    return items


def _plot_differences(plt, report: dict[str, Any], items: list[tuple], out: Path) -> Path:
    """differences.png: each item's difference with its intervals, on the ±margin band."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(items) + 1.6))
    margin = report["margin"]
    ax.axvspan(-margin, margin, color="0.9", zorder=0)
    ax.axvline(0, color="0.4", lw=0.8)
    for y, (_label, role, mean, ci, boot, conditional) in enumerate(reversed(items)):
        color = "C0" if role == "primary" else "C1" if role == "exploratory" else "0.35"
        ax.errorbar([mean], [y], xerr=[[mean - ci[0]], [ci[1] - mean]], fmt="o", color=color, capsize=4,
                    mfc="white" if conditional else color)
        if boot is not None:
            ax.plot(boot, [y - 0.22, y - 0.22], color=color, lw=3, alpha=0.45)
    ax.set_yticks(range(len(items)), [i[0] for i in reversed(items)], fontsize=8)
    # the band is named in the label, not a legend: a legend inside the axes covers some row's interval
    ax.set_xlabel(f"Δ {report['metric']}, arm − control; shaded: ±{margin:g} (equivalence margin)\n"
                  "bars: 95% t CI over seeds; thick: two-level bootstrap 95%;\n"
                  "hollow: no run-level test, query-level 95% CI (conditional on the runs)", fontsize=8)
    ax.set_title("Run-level differences (primary: blue; secondary: grey)")
    fig.tight_layout()
    return _save(plt, fig, out / "differences.png")


def _draw_isotropy_panel(ax, report: dict[str, Any], dataset: str) -> None:
    """One panel of isotropy_vs_ndcg.png: each arm's IsoScore against its metric, ± sd over seeds."""
    metric, shown = report["metric"], []
    for r in report["arms"]:
        cell = r["datasets"].get(dataset)
        if cell and metric in cell and "isoscore" in cell["isotropy"]:
            x, y = cell["isotropy"]["isoscore"], cell[metric]["mean"]
            ax.errorbar([x], [y], yerr=[cell[metric]["sd"] or 0.0], xerr=[cell["isotropy_sd"].get("isoscore", 0.0)],
                        fmt="o", capsize=3)
            ax.annotate(r["arm"], (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
            shown += [y - (cell[metric]["sd"] or 0.0), y + (cell[metric]["sd"] or 0.0)]
    if shown:
        _ylim(ax, shown)
    ax.set_xlabel("IsoScore of the searched corpus embeddings")
    ax.set_ylabel(f"{metric} (± sd over seeds)")
    ax.set_title(dataset)


def _plot_isotropy_vs_metric(plt, report: dict[str, Any], out: Path) -> Path:
    """isotropy_vs_ndcg.png: one panel per dataset."""
    datasets = report["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        _draw_isotropy_panel(ax, report, dataset)
    fig.tight_layout()
    return _save(plt, fig, out / "isotropy_vs_ndcg.png")


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """ndcg.png: each arm's own runs (dots) with their mean ± sd, per dataset (and the macro-average);
    differences.png: each comparison's run-level Δ with its 95% t and bootstrap intervals and the ±margin band
    (query-level, conditional intervals for comparisons without a run-level test, hollow); isotropy_vs_ndcg.png:
    IsoScore against the metric, ± sd over seeds, on a y-range of at least 0.05."""
    plt = _pyplot()
    paths = [_plot_metric(plt, report, out)]
    items = _difference_items(report)
    if items:  # nothing compared: no differences.png
        paths.append(_plot_differences(plt, report, items, out))
    paths.append(_plot_isotropy_vs_metric(plt, report, out))
    return paths


def write_report(results: str | Path, **kwargs: Any) -> tuple[dict[str, Any], list[Path]]:
    """Build the comparison and write report.md, report.json and the plots into ``results``."""
    results = Path(results)
    report = compare(results, **kwargs)
    (results / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (results / "report.md").write_text(to_markdown(report))
    paths = [results / "report.md", results / "report.json", *plot(report, results)]
    for view in truncated_views(results):  # each width of the plan's truncate_dims: a report of its own
        paths += write_report(view, **{k: v for k, v in kwargs.items() if k not in ("plan", "baseline")})[1]
    return report, paths


def truncated_views(results: Path) -> list[Path]:
    """The results folders of a plan's ``truncate_dims`` (``dims/D`` with finished runs), widest first."""
    folders = [p.parent for p in Path(results).glob("dims/*/plan.json") if p.parent.name.isdigit()
               and any(p.parent.glob("runs/*/*/result.json"))]
    return sorted(folders, key=lambda p: -int(p.name))
