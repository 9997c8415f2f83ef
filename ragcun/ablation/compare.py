"""The comparison table of a finished (or partly finished) plan, with paired significance.

For each arm and dataset: mean +- sd over seeds of NDCG@10 (and R@100), the isotropy of the searched corpus
embeddings (means over seeds), and against the baseline arm: the difference of the per-query NDCG@10
averaged over seeds, its paired test (ranx's paired t-test or Fisher's randomization test, on those per-query
scores), the Holm correction over every arm x dataset test (statsmodels), and a bootstrap 95% confidence
interval of the mean difference over queries (scipy). A difference whose interval lies inside +-margin
(default 0.01) is reported as equivalent; one whose interval straddles 0 but leaves that band as
inconclusive.

Everything comes from the files the runner wrote (``runs/ARM/seed-S/result.json`` and the per-query JSON), so
the table can be rebuilt on any machine that has the committed results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ragcun.ablation.runner import RESULT_FILE

METRIC = "NDCG@10"


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """``{arm: {"seeds": {seed: result}, "per_query": {dataset: {seed: {qid: {metric: v}}}}}}``."""
    arms: dict[str, dict[str, Any]] = {}
    for path in sorted((results / "runs").glob(f"*/*/{RESULT_FILE}")):
        result = json.loads(path.read_text())
        arm = arms.setdefault(result["arm"], {"seeds": {}, "per_query": {}, "what": result.get("what", "")})
        arm["seeds"][result["seed"]] = result
        for dataset in result["datasets"]:
            pq = path.parent / f"{dataset}.per_query.json"
            if not pq.is_file():
                raise ValueError(f"{pq}: missing (the run in {path.parent} is incomplete; delete its {RESULT_FILE} "
                                 "and run the plan again)")
            arm["per_query"].setdefault(dataset, {})[result["seed"]] = json.loads(pq.read_text())
    return arms


def seed_mean_per_query(per_seed: dict[Any, dict[str, dict[str, float]]], metric: str = METRIC) -> dict[str, float]:
    """Per-query ``metric`` averaged over seeds (queries judged in every seed's run)."""
    runs = list(per_seed.values())
    qids = sorted(set.intersection(*[set(r) for r in runs]))
    return {q: float(np.mean([r[q][metric] for r in runs])) for q in qids}


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


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels)."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, method="holm")[1]]


def verdict(low: float, high: float, p_adjusted: float, margin: float, alpha: float = 0.05) -> str:
    """Significance (Holm-adjusted p < alpha) and equivalence (the 95% CI inside +-margin) are separate
    questions; a small but real difference is both, and the verdict says so."""
    inside = -margin < low and high < margin
    if p_adjusted < alpha:
        direction = "better" if low > 0 else "worse" if high < 0 else "different"
        return f"{direction}, by less than {margin:g} (95% CI inside +-{margin:g})" if inside else direction
    if inside:
        return f"equivalent (95% CI inside +-{margin:g})"
    return "inconclusive"


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def compare(results: str | Path, *, baseline: str | None = None, test: str = "student",
            margin: float = 0.01, metric: str = METRIC) -> dict[str, Any]:
    """The comparison as a dict (what ``report.json`` holds); see the module docstring."""
    results = Path(results)
    arms = load_results(results)
    if not arms:
        raise ValueError(f"{results}: no finished runs (looked for runs/*/*/{RESULT_FILE})")
    plan_baseline = _plan_baseline(results)
    baseline = baseline or plan_baseline
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no finished run in {results} (have: {', '.join(arms)})")
    datasets = list(dict.fromkeys(d for a in arms.values() for r in a["seeds"].values() for d in r["datasets"]))
    rows, tests = [], []
    for name, arm in arms.items():
        first = next(iter(arm["seeds"].values()))
        row = {"arm": name, "what": arm["what"], "seeds": sorted(arm["seeds"]), "trained": first["trained"],
               "trainable_params": first["info"].get("trainable_params"), "lambda": first["info"].get("lambda"),
               "loss": first["info"].get("loss"), "global_batch": first["info"].get("global_batch"), "datasets": {},
               "wall_s": [float(r.get("wall_s", 0.0)) for r in arm["seeds"].values()],
               "train_s": [float(r["info"]["train_s"]) for r in arm["seeds"].values() if "train_s" in r["info"]]}
        for dataset in datasets:
            runs = [r["datasets"][dataset] for r in arm["seeds"].values() if dataset in r["datasets"]]
            if not runs:
                continue
            cell = {"n_seeds": len(runs)}
            for key in (metric, "Recall@100"):
                values = [r["metrics"][key] for r in runs if key in r["metrics"]]
                if values:
                    cell[key] = dict(zip(("mean", "sd"), _mean_sd(values)))
            cell["isotropy"] = {k: float(np.mean([r["isotropy"][k] for r in runs])) for k in runs[0]["isotropy"]
                                if isinstance(runs[0]["isotropy"][k], (int, float)) and not isinstance(runs[0]["isotropy"][k], bool)}
            if name != baseline and dataset in arms[baseline]["per_query"] and dataset in arm["per_query"]:
                base_q = seed_mean_per_query(arms[baseline]["per_query"][dataset], metric)
                arm_q = seed_mean_per_query(arm["per_query"][dataset], metric)
                qids = sorted(set(base_q) & set(arm_q))
                b, t = np.array([base_q[q] for q in qids]), np.array([arm_q[q] for q in qids])
                low, high = bootstrap_interval(t - b)
                cell["vs_baseline"] = {"diff": float((t - b).mean()), "ci95": [low, high], "queries": len(qids),
                                       "p": paired_test(b, t, test)}
                tests.append(cell["vs_baseline"])
            row["datasets"][dataset] = cell
        rows.append(row)
    for item, p_adj in zip(tests, holm([t["p"] for t in tests])):
        item["p_holm"] = p_adj
        item["verdict"] = verdict(*item["ci95"], p_adj, margin)
    selection_s = [float(json.loads(p.read_text()).get("train", {}).get("train_s", 0.0))
                   for p in sorted((results / "selection").glob("lambda-*.json"))]
    return {"results": str(results), "baseline": baseline, "metric": metric, "test": test, "margin": margin,
            "datasets": datasets, "arms": rows, "tests": len(tests),
            "wall_s": {"runs": sum(sum(r["wall_s"]) for r in rows), "selection_training": sum(selection_s)},
            "selection": _read_json(results / "selection.json"), "dev_split": _dev_summary(results)}


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _dev_summary(results: Path):
    info = _read_json(results / "dev_split.json")
    return None if info is None else {k: v for k, v in info.items() if k != "dev_query_ids"}


def _plan_baseline(results: Path) -> str | None:
    path = results / "plan.json"
    return json.loads(path.read_text()).get("baseline") if path.is_file() else None


def _fmt(cell: dict | None, key: str) -> str:
    if not cell or key not in cell:
        return "-"
    mean, sd = cell[key]["mean"], cell[key]["sd"]
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def to_markdown(report: dict[str, Any]) -> str:
    metric, lines = report["metric"], []
    lines.append(f"Baseline arm: `{report['baseline']}`. {metric} mean ± sd over seeds; Δ = per-query {metric} "
                 f"averaged over seeds, arm − baseline, with a bootstrap 95% CI over queries; p from a paired "
                 f"{'t-test' if report['test'] == 'student' else 'randomization test'} (ranx), Holm-corrected over "
                 f"{report['tests']} tests. Isotropy of the searched corpus embeddings (a fixed sample of n documents, raw "
                 "vectors; I(W) also on L2-normalized ones where recorded: raw I(W) is ~0 for any cloud whose norms are "
                 "large, as unnormalized embeddings' are). SIGReg beside its exact N(0, I) floor for that n.")
    sel = report.get("selection")
    if sel:
        lines.append("")
        lines.append(f"λ chosen on the dev split (arm `{sel['arm']}`, seed {sel['seed']}, {sel['metric']}): "
                     f"**{sel['chosen']:g}** from " + ", ".join(f"{k}: {v:.4f}" for k, v in sel["dev"].items()))
    for dataset in report["datasets"]:
        lines += ["", f"### {dataset}", "",
                  f"| arm | seeds | trainable | λ | batch | λ·N | {metric} | R@100 | Δ {metric} [95% CI] | p (Holm) | "
                  "verdict | IsoScore | I(W) raw / l2 | SIGReg (floor) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["arms"]:
            cell = row["datasets"].get(dataset)
            if cell is None:
                continue
            vs = cell.get("vs_baseline")
            delta = (f"{vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else "baseline"
                     if row["arm"] == report["baseline"] else "-")
            iso = cell["isotropy"]
            lam, batch = row["lambda"], row["global_batch"]
            lines.append(" | ".join([
                f"| {row['arm']}", str(len(row["seeds"])) if row["trained"] else "-",
                f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "-",
                f"{lam:g}" if lam is not None else "-", str(batch) if batch else "-",
                f"{lam * batch:g}" if lam is not None and batch else "-",
                _fmt(cell, metric), _fmt(cell, "Recall@100"), delta,
                f"{vs['p']:.3g} ({vs['p_holm']:.3g})" if vs else "-", vs["verdict"] if vs else "-",
                f"{iso.get('isoscore', math.nan):.3f}",
                f"{iso.get('partition_isotropy_raw', math.nan):.3f} / "
                + (f"{iso['partition_isotropy_l2']:.3f}" if "partition_isotropy_l2" in iso else "-"),
                f"{iso.get('sigreg_raw', math.nan):.2f} ({iso.get('sigreg_gaussian_floor', math.nan):.2f}) |"]))
    wall = report.get("wall_s")
    if wall:
        lines += ["", "Time (wall, this machine, as measured by the runs themselves; a run is its training and its "
                  f"evaluation): finished runs {wall['runs'] / 60:.1f} min in all; the lambda selection trained its "
                  f"candidates for {wall['selection_training'] / 60:.1f} min when it ran (selection/; that time is inside "
                  "the selected arm's first run when both ran in one invocation, see run_log.jsonl); mean per run: "
                  + "; ".join(
                      f"`{r['arm']}` {np.mean(r['wall_s']) / 60:.1f} min" for r in report["arms"] if r["wall_s"]) + "."]
    lines.append("")
    lines.append("What each arm is: " + "; ".join(f"`{r['arm']}`: {r['what'] or r['loss'] or 'training-free'}"
                                                  for r in report["arms"]) + ".")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """ndcg.png (metric per arm with its spread over seeds, per dataset) and isotropy_vs_ndcg.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, datasets, paths = report["metric"], report["datasets"], []
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in report["arms"] if dataset in r["datasets"] and metric in r["datasets"][dataset]]
        means = [r["datasets"][dataset][metric]["mean"] for r in rows]
        errs = []
        for r in rows:
            vs = r["datasets"][dataset].get("vs_baseline")
            errs.append([0, 0] if vs is None else [vs["diff"] - vs["ci95"][0], vs["ci95"][1] - vs["diff"]])
        ax.errorbar(range(len(rows)), means, yerr=np.array(errs).T if errs else None, fmt="o", capsize=4)
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
        ax.set_title(f"{dataset}: {metric} (bars: 95% CI of Δ vs baseline)")
        lo, hi = min(means), max(means)
        pad = max(0.005, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad - max((e[0] for e in errs), default=0), hi + pad + max((e[1] for e in errs), default=0))
    fig.tight_layout()
    paths.append(out / "ndcg.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in report["arms"]:
            cell = r["datasets"].get(dataset)
            if cell and metric in cell and "isoscore" in cell["isotropy"]:
                ax.scatter(cell["isotropy"]["isoscore"], cell[metric]["mean"])
                ax.annotate(r["arm"], (cell["isotropy"]["isoscore"], cell[metric]["mean"]), fontsize=8)
        ax.set_xlabel("IsoScore of the searched corpus embeddings")
        ax.set_ylabel(metric)
        ax.set_title(dataset)
    fig.tight_layout()
    paths.append(out / "isotropy_vs_ndcg.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(results: str | Path, **kwargs: Any) -> tuple[dict[str, Any], list[Path]]:
    """Build the comparison and write report.md, report.json and the two plots into ``results``."""
    results = Path(results)
    report = compare(results, **kwargs)
    (results / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (results / "report.md").write_text(to_markdown(report))
    return report, [results / "report.md", results / "report.json", *plot(report, results)]
