"""The ablation's run-level statistics: calibrated on simulations, equal to scipy on the committed ablation, and
guarded by the pre-registration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ragcun.ablation.compare import compare, to_markdown, write_report
from ragcun.ablation.inference import (load_results, mde, paired_runs, query_blocks, seed_t, seed_test, seeds_needed,
                                       t_power, tost_power, two_level_bootstrap)

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT / "benchmarks" / "ablation" / "minilm-scifact"


# -- calibration on simulated plans -------------------------------------------------------------------------------
def simulate(rng, plans: int, seeds: int, queries: int, sd_seed: float, sd_noise: float, effect: float) -> np.ndarray:
    """Per-query scores ``[plan, arm (control, arm), seed, query]``: a query's difficulty (shared by every run), a
    per-run random offset (what a training seed does to a whole model), per-query noise, and ``effect`` added to
    every run of the arm."""
    difficulty = rng.uniform(0.2, 0.8, (plans, 1, 1, queries))
    offset = rng.normal(0, sd_seed, (plans, 2, seeds, 1))
    noise = rng.normal(0, sd_noise, (plans, 2, seeds, queries))
    scores = difficulty + offset + noise
    scores[:, 1] += effect
    return scores


def run_level_p(scores: np.ndarray) -> np.ndarray:
    endpoint = scores.mean(axis=-1)  # a run's dataset-level metric
    return seed_t(endpoint[:, 1] - endpoint[:, 0])[2]


def query_level_p(scores: np.ndarray) -> np.ndarray:
    """The engine's old test: per-query scores averaged over seeds, a paired t-test over queries (ranx's is
    ``scipy.stats.ttest_rel``, checked below)."""
    per_query = scores.mean(axis=2)
    return stats.ttest_rel(per_query[:, 1], per_query[:, 0], axis=-1).pvalue


# (seeds, queries, between-seed sd of a run, per-query noise sd): a large between-seed variance, and one like the
# committed NFCorpus runs (ft: between-seed sd 0.0058 of which per-query noise explains 0.0022)
SCENARIOS = {"large seed variance": (3, 300, 0.02, 0.15), "nfcorpus-like": (3, 323, 0.0054, 0.04),
             "five seeds": (5, 300, 0.02, 0.15)}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_run_level_test_is_calibrated_where_the_query_level_one_is_not(scenario):
    """With no true difference, the run-level test (t over seeds) rejects at alpha 0.05 in 2-9% of 1000 simulated
    plans. The old query-level test on the same simulations rejects far more often, because it takes the seeds'
    random offsets for an effect of the arm: measured with this rng seed, query-level 44.2% ("large seed
    variance"), 45.8% ("nfcorpus-like") and 42.0% ("five seeds"), against run-level 5.2%, 5.4% and 5.6%."""
    seeds, queries, sd_seed, sd_noise = SCENARIOS[scenario]
    scores = simulate(np.random.default_rng(2024), 1000, seeds, queries, sd_seed, sd_noise, 0.0)
    run_rate = float((run_level_p(scores) < 0.05).mean())
    query_rate = float((query_level_p(scores) < 0.05).mean())
    assert 0.02 <= run_rate <= 0.09, run_rate
    assert query_rate > 0.3 and query_rate > 4 * run_rate, (query_rate, run_rate)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_true_difference_of_three_mdes_is_detected_and_one_mde_at_the_stated_power(scenario):
    """The MDE of :func:`mde` (power 0.8) from the per-seed difference's true sd: 3 x MDE is detected in at least
    70% of 1000 simulated plans (measured: 100% in each scenario), 1 x MDE in about 80%."""
    seeds, queries, sd_seed, sd_noise = SCENARIOS[scenario]
    sd_diff = math.sqrt(2 * sd_seed ** 2 + 2 * sd_noise ** 2 / queries)  # the per-seed difference's true sd
    effect = mde(sd_diff, seeds)
    rng = np.random.default_rng(7)
    assert float((run_level_p(simulate(rng, 1000, seeds, queries, sd_seed, sd_noise, 3 * effect)) < 0.05).mean()) >= 0.7
    at_mde = float((run_level_p(simulate(rng, 1000, seeds, queries, sd_seed, sd_noise, effect)) < 0.05).mean())
    assert 0.72 <= at_mde <= 0.88, at_mde  # power 0.8 by construction (1000 plans: sd 0.013); measured 0.81-0.83


def test_the_query_level_rate_is_rankings_paired_t():
    from ranx.statistical_tests import paired_student_t_test

    scores = simulate(np.random.default_rng(3), 1, 3, 50, 0.02, 0.15, 0.0)
    per_query = scores.mean(axis=2)[0]
    assert paired_student_t_test(per_query[0], per_query[1])[0] == pytest.approx(query_level_p(scores)[0], abs=1e-12)


# -- the statistics themselves ------------------------------------------------------------------------------------
def test_mde_and_power_agree_with_statsmodels_and_each_other():
    from statsmodels.stats.power import TTestPower

    for n in (2, 3, 5, 10):
        assert mde(1.0, n) == pytest.approx(TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8), rel=1e-6)
        assert t_power(mde(0.004, n), 0.004, n) == pytest.approx(0.8, abs=1e-9)
    assert mde(0.004, 3) > mde(0.004, 5) > mde(0.004, 10)
    need = seeds_needed(0.01, 0.004)
    assert mde(0.004, need) <= 0.01 < mde(0.004, need - 1)
    tost = seeds_needed(0.01, 0.004, kind="equivalence")
    assert tost_power(0.004, tost, 0.01) >= 0.8 > tost_power(0.004, tost - 1, 0.01)
    assert math.isnan(mde(0.004, 1)) and mde(0.0, 3) == 0.0


def test_seed_test_matches_scipy_and_the_vectorised_form():
    diffs = np.array([0.004, -0.001, 0.006, 0.002])
    cell = seed_test(diffs, margin=0.01)
    res = stats.ttest_1samp(diffs, 0.0)
    assert cell["p"] == pytest.approx(res.pvalue, abs=1e-12) and cell["t"] == pytest.approx(res.statistic)
    assert cell["ci95"] == pytest.approx(list(res.confidence_interval(0.95)), abs=1e-12)
    # TOST: its p is below 0.05 exactly when the 90% interval lies inside the margin
    for margin in (0.005, 0.0085, 0.0086, 0.02):
        t = seed_test(diffs, margin=margin)
        assert (t["p_tost"] < 0.05) == (-margin < t["ci90"][0] and t["ci90"][1] < margin)
    mean, se, p = seed_t(np.stack([diffs, diffs * 2]))
    assert p[0] == pytest.approx(cell["p"]) and se[0] == pytest.approx(cell["se"])
    assert mean[1] == pytest.approx(2 * cell["mean"])
    same = seed_test([0.0, 0.0, 0.0], margin=0.01)
    assert same["p"] == 1.0 and same["p_tost"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        seed_test([0.1], margin=0.01)


# -- the committed ablation, recomputed independently --------------------------------------------------------------
def _scifact_metric(arm: str, seed: int, dataset: str) -> float:
    result = json.loads((SCIFACT / "runs" / arm / f"seed-{seed}" / "result.json").read_text())
    return result["datasets"][dataset]["metrics"]["NDCG@10"]


@pytest.fixture(scope="module")
def scifact_report():
    return compare(SCIFACT, resamples=1000)


@pytest.mark.parametrize("dataset", ["nfcorpus", "scifact"])
def test_the_committed_ablations_run_level_numbers_equal_scipy(scifact_report, dataset):
    comparison = next(c for c in scifact_report["comparisons"] if (c["arm"], c["control"]) == ("ft-iso", "ft"))
    cell = comparison["run_level"][dataset]
    diffs = np.array([_scifact_metric("ft-iso", s, dataset) - _scifact_metric("ft", s, dataset) for s in (1, 2, 3)])
    independent = stats.ttest_rel([_scifact_metric("ft-iso", s, dataset) for s in (1, 2, 3)],
                                  [_scifact_metric("ft", s, dataset) for s in (1, 2, 3)])
    ci95 = stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
    ci90 = stats.ttest_1samp(diffs, 0).confidence_interval(0.90)
    assert cell["seeds"] == [1, 2, 3] and cell["pairing"] == "paired by seed"
    assert abs(cell["mean"] - diffs.mean()) < 1e-9 and abs(cell["p"] - independent.pvalue) < 1e-9
    assert abs(cell["ci95"][0] - ci95.low) < 1e-9 and abs(cell["ci95"][1] - ci95.high) < 1e-9
    assert abs(cell["ci90"][0] - ci90.low) < 1e-9 and abs(cell["ci90"][1] - ci90.high) < 1e-9
    se = diffs.std(ddof=1) / math.sqrt(3)
    p_tost = max(stats.t.sf((diffs.mean() + 0.01) / se, 2), stats.t.cdf((diffs.mean() - 0.01) / se, 2))
    assert abs(cell["p_tost"] - p_tost) < 1e-9
    if scifact_report["verdicts"]:  # the re-analysis: Holm over the primary family (these two tests) only
        ps = [next(c for c in scifact_report["comparisons"] if c["role"] == "primary")["run_level"][d]["p"]
              for d in ("scifact", "nfcorpus")]
        holm = sorted(ps)
        expected = min(1.0, 2 * holm[0]) if cell["p"] == holm[0] else min(1.0, max(2 * holm[0], holm[1]))
        assert abs(cell["p_holm"] - expected) < 1e-9 and scifact_report["tests"] == 2


def test_the_issues_numbers_for_nfcorpus(scifact_report):
    cell = next(c for c in scifact_report["comparisons"] if (c["arm"], c["control"]) == ("ft-iso", "ft"))["run_level"]
    assert list(cell["nfcorpus"]["diffs"].values()) == pytest.approx([0.00098, 0.00282, 0.00886], abs=1e-12)
    assert cell["nfcorpus"]["p"] == pytest.approx(0.218, abs=5e-4)
    assert cell["nfcorpus"]["ci95"] == pytest.approx([-0.0060, 0.0145], abs=5e-5)
    assert cell["scifact"]["ci90"][1] == pytest.approx(0.0097, abs=5e-5)  # TOST at 0.01 passes by 0.0003


def test_the_two_level_bootstrap_is_seeded_and_reproducible():
    arms = load_results(SCIFACT)
    seeds, _, _ = paired_runs(arms["ft-iso"], arms["ft"], ["nfcorpus"])
    blocks = query_blocks(arms["ft-iso"], arms["ft"], seeds, ["nfcorpus"])
    first = two_level_bootstrap(blocks, resamples=2000, seed=5)
    assert two_level_bootstrap(blocks, resamples=2000, seed=5) == first
    assert two_level_bootstrap(blocks, resamples=2000, seed=6) != first
    assert first[0] < np.mean(blocks[0]) < first[1]
    macro = two_level_bootstrap(query_blocks(arms["ft-iso"], arms["ft"], seeds, ["nfcorpus", "scifact"]),
                                resamples=2000, seed=5)
    assert macro[0] < macro[1]
    again = compare(SCIFACT, resamples=300, seed=3)
    once_more = compare(SCIFACT, resamples=300, seed=3)
    pick = lambda r: [c["run_level"] for c in r["comparisons"]]  # noqa: E731
    assert pick(again) == pick(once_more)


# -- reports from fake results: verdicts, roles, pre-registration ---------------------------------------------------
def _fake(folder: Path, arms: dict[str, list[np.ndarray]], *, primary: dict | None, secondary=(),
          baseline: str = "a", fixed=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps({"name": "fake", "baseline": baseline, "datasets": ["d", "e"],
                                                  "primary": primary, "secondary": list(secondary)}))
    for arm, runs in arms.items():
        for seed, scores in enumerate(runs, 1):
            trained = arm not in fixed
            run = folder / "runs" / arm / (f"seed-{seed}" if trained else "fixed")
            run.mkdir(parents=True)
            datasets = {}
            for dataset, shift in (("d", 0.0), ("e", 0.1)):
                values = np.clip(scores + shift, 0, 1)
                per_query = {f"q{i}": {"NDCG@10": float(v), "Recall@100": 1.0} for i, v in enumerate(values)}
                (run / f"{dataset}.per_query.json").write_text(json.dumps(per_query))
                datasets[dataset] = {"metrics": {"NDCG@10": float(values.mean()), "Recall@100": 1.0},
                                     "isotropy": {"isoscore": 0.5 - 2 * shift, "sigreg_raw": 3.0 + 10 * shift,
                                                  "sigreg_gaussian_floor": 1.05,
                                                  "partition_isotropy_raw": 0.1}}
            (run / "result.json").write_text(json.dumps({
                "arm": arm, "seed": seed if trained else 0, "trained": trained, "what": arm, "datasets": datasets,
                "info": {"trainable_params": 10, "lambda": None, "loss": arm, "global_batch": 32}}))


def _family(comparisons, **over) -> dict:
    family = {"metric": "NDCG@10", "datasets": ["d", "e"], "average": "each", "comparisons": comparisons,
              "margin": 0.01, "alpha": 0.05}
    family.update(over)
    return family


def _arms(rng):
    base = [rng.uniform(0.1, 0.7, 200) for _ in range(3)]
    return {"a": base,
            "better": [b + 0.08 + j + rng.normal(0, 0.01, 200) for b, j in zip(base, (0.001, -0.002, 0.0015))],
            "same": [b.copy() for b in base],
            "noisy": [b + j for b, j in zip(base, (0.03, -0.03, 0.01))],
            "single": [base[0] + 0.01],
            "base": [rng.uniform(0.1, 0.6, 200)]}


def test_verdicts_come_from_the_run_level_analysis_of_the_primary_family_only(tmp_path):
    _fake(tmp_path, _arms(np.random.default_rng(1)),
          primary=_family(["better vs a", "same vs a", "noisy vs a"]),
          secondary=["single vs a", "a vs base"], fixed=("base",))
    report = compare(tmp_path, resamples=300)
    assert report["preregistration"]["status"] == "not recorded" and report["verdicts"] and report["tests"] == 6
    by = {(c["arm"], c["control"]): c for c in report["comparisons"]}
    assert by[("better", "a")]["run_level"]["d"]["verdict"] == "better"
    assert by[("same", "a")]["run_level"]["e"]["verdict"] == "equivalent within ±0.01 (TOST)"
    assert by[("noisy", "a")]["run_level"]["d"]["verdict"] == "inconclusive"
    primary_ps = [by[(arm, "a")]["run_level"][d]["p"] for arm in ("better", "same", "noisy") for d in ("d", "e")]
    from ragcun.ablation.inference import holm

    assert [by[(arm, "a")]["run_level"][d]["p_holm"] for arm in ("better", "same", "noisy") for d in ("d", "e")] == \
        pytest.approx(holm(primary_ps))
    single = by[("single", "a")]
    assert single["role"] == "secondary" and "query-level only" in single["run_level"]["d"]["none"]
    assert single["query_level"]["d"]["runs"] == [1, 3]
    fixed = by[("a", "base")]["run_level"]["d"]
    assert fixed["pairing"] == "against the fixed run" and "verdict" not in fixed and "p_holm" not in fixed
    base_d = json.loads((tmp_path / "runs" / "base" / "fixed" / "result.json").read_text())["datasets"]["d"]
    assert fixed["diffs"]["1"] == pytest.approx(float(np.clip(_arms(np.random.default_rng(1))["a"][0], 0, 1).mean())
                                                - base_d["metrics"]["NDCG@10"])
    table = to_markdown(report)
    assert "## Primary comparisons" in table and "## Secondary comparisons (exploratory" in table
    assert "conditional on these runs" in table and "**better**" in table
    secondary_lines = table.split("## Secondary")[1].split("## Query-level")[0]
    assert "better" not in secondary_lines and "equivalent" not in secondary_lines
    _, paths = write_report(tmp_path, resamples=200)
    assert {p.name for p in paths} == {"report.md", "report.json", "ndcg.png", "differences.png",
                                       "isotropy_vs_ndcg.png"}


def test_a_macro_endpoint_averages_each_runs_datasets(tmp_path):
    _fake(tmp_path, _arms(np.random.default_rng(2)), primary=_family(["noisy vs a"], average="macro"))
    report = compare(tmp_path, resamples=200)
    cell = report["comparisons"][0]["run_level"]["macro"]
    runs = load_results(tmp_path)
    expected = [np.mean([runs[arm]["seeds"][s]["datasets"][d]["metrics"]["NDCG@10"] for d in ("d", "e")])
                for arm in ("noisy", "a") for s in (1, 2, 3)]
    assert list(cell["diffs"].values()) == pytest.approx(list(np.subtract(expected[:3], expected[3:])))
    assert report["endpoints"] == ["macro"] and report["tests"] == 1
    # the isotropy columns averaged over the two datasets (d: IsoScore 0.5, SIGReg 3; e: 0.3, 4), one row per arm
    assert "| a | 0.400 | - | 0.100 | 3.50 |" in to_markdown(report)
    # the time line names a lambda selection only when the plan had one
    report["wall_s"] = {"runs": 600.0, "selection_training": 0.0}
    assert "finished runs 10.0 min in all; mean per run" in to_markdown(report)
    report["wall_s"]["selection_training"] = 120.0
    assert "the lambda selection trained its candidates for 2.0 min" in to_markdown(report)


def test_a_plan_without_primary_is_exploratory_throughout(tmp_path):
    _fake(tmp_path, _arms(np.random.default_rng(3)), primary=None, fixed=("base",))
    report = compare(tmp_path, resamples=200)
    assert not report["verdicts"] and report["tests"] == 0
    assert all(c["role"] == "exploratory" for c in report["comparisons"])
    assert all("verdict" not in cell for c in report["comparisons"] for cell in c["run_level"].values())
    assert {(c["arm"], c["control"]) for c in report["comparisons"]} == {
        ("better", "a"), ("same", "a"), ("noisy", "a"), ("single", "a")}  # base: the only training-free arm
    assert "Every comparison is exploratory" in to_markdown(report)


def test_compare_refuses_a_changed_primary_family_unless_exploratory(tmp_path):
    from click.testing import CliRunner

    from ragcun.ablation.preregistration import FILE
    from ragcun.cli.root import build_cli

    family = _family(["better vs a"])
    _fake(tmp_path, _arms(np.random.default_rng(4)), primary=family)
    (tmp_path / FILE).write_text(json.dumps({"family": family, "hash": "abc", "recorded": "2026-01-01T00:00:00",
                                             "finished_runs_when_recorded": 0}))
    assert compare(tmp_path, resamples=200)["preregistration"]["status"] == "recorded"
    with pytest.raises(ValueError, match=r"differs from the one recorded.*\(margin\).*--exploratory"):
        compare(tmp_path, margin=0.02)
    changed = compare(tmp_path, margin=0.02, exploratory=True, resamples=200)
    assert changed["preregistration"]["status"] == "changed" and not changed["verdicts"]
    assert all("verdict" not in cell for c in changed["comparisons"] for cell in c["run_level"].values())
    assert "no comparison gets a verdict" in to_markdown(changed)

    plan_json = json.loads((tmp_path / "plan.json").read_text())
    plan_json["primary"] = _family(["better vs a", "same vs a"])  # a comparison added after the results
    (tmp_path / "plan.json").write_text(json.dumps(plan_json))
    cli = build_cli()
    refused = CliRunner().invoke(cli, ["ablation", "compare", str(tmp_path), "--resamples", "200"])
    assert refused.exit_code == 1 and "comparisons" in refused.output and "--exploratory" in refused.output
    allowed = CliRunner().invoke(cli, ["ablation", "compare", str(tmp_path), "--exploratory", "--resamples", "200"])
    assert allowed.exit_code == 0, allowed.output
    assert "exploratory: the primary family differs from the recorded one (comparisons)" in allowed.output


def test_compare_reads_a_plan_file_and_checks_its_family(tmp_path):
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.preregistration import FILE

    results = tmp_path / "results"
    _fake(results, _arms(np.random.default_rng(5)), primary=None)
    text = ('baseline = "a"\ndatasets = ["d", "e"]\nseeds = [1, 2, 3]\n[train]\ndata = "x"\nsteps = 1\n[primary]\n'
            'comparisons = ["better vs a"]\naverage = "each"\n[secondary]\ncomparisons = ["same vs a"]\n'
            + "".join(f'[arms.{a}]\nloss = "contrastive"\n' for a in ("a", "better", "same", "noisy", "single"))
            + '[arms.base]\ntransform = "none"\n')
    (tmp_path / "plan.toml").write_text(text)
    plan = load_plan(tmp_path / "plan.toml", results=results)
    report = compare(results, plan=plan, resamples=200)
    assert [(c["arm"], c["role"]) for c in report["comparisons"]] == [("better", "primary"), ("same", "secondary")]
    (results / FILE).write_text(json.dumps({"family": {**plan.primary.family(), "margin": 0.02}, "hash": "x",
                                            "recorded": "2026-01-01T00:00:00", "finished_runs_when_recorded": 0}))
    with pytest.raises(ValueError, match="margin"):
        compare(results, plan=plan)


@pytest.mark.parametrize("margin", ["nan", "inf", "-inf", "0", "-0.01", "abc"])
def test_the_margin_must_be_a_finite_positive_number(tmp_path, margin):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    _fake(tmp_path, _arms(np.random.default_rng(6)), primary=None)
    result = CliRunner().invoke(build_cli(), ["ablation", "compare", str(tmp_path), "--margin", margin])
    assert result.exit_code == 2 and "--margin" in result.output
    with pytest.raises(ValueError, match="finite positive"):
        compare(tmp_path, margin=float("nan"))


def test_the_metric_plots_do_not_magnify_small_differences():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ragcun.ablation.compare import _ylim

    fig, ax = plt.subplots()
    _ylim(ax, [0.6741, 0.6754])
    low, high = ax.get_ylim()
    assert high - low >= 0.05 and low < 0.6741 and 0.6754 < high
    _ylim(ax, [0.25, 0.65])
    assert ax.get_ylim()[1] - ax.get_ylim()[0] > 0.4
    plt.close(fig)


# -- power --------------------------------------------------------------------------------------------------------
def test_power_uses_the_observed_paired_differences_or_says_what_it_assumed(tmp_path):
    from click.testing import CliRunner

    from ragcun.ablation.inference import power_report
    from ragcun.ablation.plan import load_plan
    from ragcun.cli.root import build_cli

    pilot = tmp_path / "pilot"
    arms = _arms(np.random.default_rng(8))
    _fake(pilot, {k: arms[k] for k in ("a", "noisy")}, primary=None)
    text = ('baseline = "a"\ndatasets = ["d", "e"]\nseeds = [1, 2, 3, 4, 5]\n[train]\ndata = "x"\nsteps = 1\n'
            '[primary]\n'
            'comparisons = ["noisy vs a", "new vs a"]\naverage = "macro"\n'
            '[arms.a]\nloss = "contrastive"\n[arms.noisy]\nloss = "contrastive"\n[arms.new]\nloss = "contrastive"\n')
    (tmp_path / "plan.toml").write_text(text)
    plan = load_plan(tmp_path / "plan.toml")
    report = power_report(plan, pilot, target=0.01, rho=0.5)
    observed, assumed = report["rows"]
    runs = load_results(pilot)
    diffs = np.subtract(*[[np.mean([runs[a]["seeds"][s]["datasets"][d]["metrics"]["NDCG@10"] for d in ("d", "e")])
                           for s in (1, 2, 3)] for a in ("noisy", "a")])
    assert observed["sd_diff"] == pytest.approx(diffs.std(ddof=1)) and observed["seeds"] == 5
    assert observed["mde"] == pytest.approx(mde(diffs.std(ddof=1), 5))
    assert observed["seeds_to_detect_target"] == seeds_needed(0.01, diffs.std(ddof=1))
    sd_a = np.std([np.mean([runs["a"]["seeds"][s]["datasets"][d]["metrics"]["NDCG@10"] for d in ("d", "e")])
                   for s in (1, 2, 3)], ddof=1)
    assert assumed["sd_diff"] == pytest.approx(math.sqrt(2) * sd_a * math.sqrt(0.5))
    assert "rho = 0.5 assumed" in assumed["source"]
    assert report["per_query"]["d"]["queries"] == 200
    out = CliRunner().invoke(build_cli(), ["ablation", "power", str(tmp_path / "plan.toml"), "--pilot", str(pilot),
                                           "--target", "0.01"])
    assert out.exit_code == 0, out.output
    assert "| noisy vs a | macro | 5 |" in out.output and "seeds to detect 0.01" in out.output
    assert "rho = 0 assumed" in out.output


def test_power_from_a_pilot_of_other_datasets_uses_those_it_has_and_says_so(tmp_path):
    """A zero-shot plan piloted by in-domain runs: the endpoint's datasets the pilot has stand in for the rest;
    with none of them, there is no estimate and no seed count (not "> 10000")."""
    from ragcun.ablation.inference import power_markdown, power_report
    from ragcun.ablation.plan import load_plan

    pilot = tmp_path / "pilot"
    arms = _arms(np.random.default_rng(8))
    _fake(pilot, {k: arms[k] for k in ("a", "noisy")}, primary=None)
    text = ('baseline = "a"\ndatasets = ["d", "zz"]\nseeds = [1, 2, 3, 4, 5]\n[train]\ndata = "x"\nsteps = 1\n'
            '[primary]\n'
            'comparisons = ["noisy vs a"]\naverage = "macro"\n'
            '[arms.a]\nloss = "contrastive"\n[arms.noisy]\nloss = "contrastive"\n')
    (tmp_path / "plan.toml").write_text(text)
    row = power_report(load_plan(tmp_path / "plan.toml"), pilot, target=0.01)["rows"][0]
    runs = load_results(pilot)
    diffs = np.subtract(*[[runs[a]["seeds"][s]["datasets"]["d"]["metrics"]["NDCG@10"] for s in (1, 2, 3)]
                          for a in ("noisy", "a")])
    assert row["sd_diff"] == pytest.approx(diffs.std(ddof=1)) and "the pilot has d of the endpoint's 2" in row["source"]
    (tmp_path / "plan.toml").write_text(text.replace('datasets = ["d", "zz"]', 'datasets = ["yy", "zz"]'))
    report = power_report(load_plan(tmp_path / "plan.toml"), pilot, target=0.01)
    assert report["rows"][0]["sd_diff"] is None
    assert "> 10000" not in power_markdown(report)
