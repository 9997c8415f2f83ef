"""The ablation engine: plans, the runner (resumable), and the comparison's statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragcun.ablation.compare import bootstrap_interval, compare, holm, paired_test, to_markdown, write_report
from ragcun.ablation.plan import load_plan

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_PLAN = """
name = "tiny"
results = "results"
baseline = "ft"
seeds = [1, 2]
datasets = ["nq-utd"]
dtype = "float32"
k = 100
isotropy_sample = 200

[train]
data = "scifact"
encoder = "hf:{model}"
steps = 2
batch_size = 8
lr = 1e-3
set = ["head.gaussian.out_dim=16", "loss.isotropy.num_slices=32"]

[dev]
corpus_sample = 150

[select]
arm = "ft-iso"
values = [0, 1.0]

[arms.ft]
loss = "contrastive"

[arms.ft-iso]
loss = "contrastive+{{lambda}}*isotropy"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


_PRE = 'baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'


@pytest.mark.parametrize("text,message", [
    ('baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     '[arms.a]\nloss = "contrastive"\n[arms.b]\nlos = "x"\n',
     "unknown key 'los'; did you mean 'loss'"),
    ('baseline = "z"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     '[arms.a]\nloss = "contrastive"\n', "baseline 'z' is not an arm"),
    ('baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     '[arms.a]\nloss = "contrastive+{lambda}*isotropy"\n',
     "has no \\[select\\]"),
    ('baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     '[arms.a]\nloss = "contrastive"\ntransform = "center"\n',
     "not both"),
    ('baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     'learning_rate = 1\n[arms.a]\nloss = "contrastive"\n',
     "unknown key 'learning_rate'"),
    ('baseline = "a"\ndatasets = ["x"]\n[train]\n[arms.a]\nloss = "contrastive"\n', "missing 'data'"),
    ('baseline = "a"\n[arms.a\n', "not valid TOML"),
    (_PRE + '[primary]\ncomparisons = ["b vs a"]\n[arms.a]\nloss = "contrastive"\n[arms.b]\nloss = "contrastive"\n'
     'seeds = [1]\n', "arm 'b' has 1 seed"),
    (_PRE + '[primary]\ncomparisons = ["b vs c"]\n[arms.a]\nloss = "contrastive"\n[arms.b]\nloss = "contrastive"\n',
     "names no arm 'c'"),
    (_PRE + '[primary]\ncomparisons = ["f vs a"]\n[arms.a]\nloss = "contrastive"\n[arms.f]\ntransform = "none"\n',
     "training-free arm against a trained control"),
    (_PRE + '[primary]\ncomparisons = ["f vs g"]\n[arms.a]\nloss = "contrastive"\n[arms.f]\ntransform = "none"\n'
     '[arms.g]\ntransform = "center"\n', "'f' is training-free"),
    (_PRE + '[primary]\ncomparisons = ["b a"]\n[arms.a]\nloss = "contrastive"\n[arms.b]\nloss = "contrastive"\n',
     "a comparison is 'ARM vs CONTROL'"),
    (_PRE + '[primary]\ncomparisons = []\n[arms.a]\nloss = "contrastive"\n', "at least one"),
    (_PRE + '[primary]\ncomparisons = ["b vs a"]\nmargin = -1\n[arms.a]\nloss = "contrastive"\n[arms.b]\n'
     'loss = "contrastive"\n', "margin: expected a finite number > 0"),
    (_PRE + '[primary]\ncomparisons = ["b vs a"]\ndatasets = ["y"]\n[arms.a]\nloss = "contrastive"\n[arms.b]\n'
     'loss = "contrastive"\n', "datasets must be datasets of the plan"),
    (_PRE + '[primary]\ncomparisons = ["b vs a"]\naverage = "median"\n[arms.a]\nloss = "contrastive"\n[arms.b]\n'
     'loss = "contrastive"\n', "average: expected one of macro, each"),
    (_PRE + '[secondary]\ncomparisons = "b vs a"\n[arms.a]\nloss = "contrastive"\n',
     "comparisons: expected a list of 'ARM vs CONTROL' strings"),
    ('baseline = "a"\ndatasets = ["x"]\nseeds = []\n[train]\ndata = "d"\nsteps = 1\n[arms.a]\nloss = "contrastive"\n',
     "seeds: expected a non-empty list of integers"),
    ('baseline = "a"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n'
     'dev_split = "dev"\ndev_fraction = 0.1\n[arms.a]\n'
     'loss = "contrastive"\n', "not both"),
])
def test_bad_plans_are_refused_naming_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        load_plan(_write(tmp_path, text))
    assert "plan.toml" in str(info.value)


def test_the_order_runs_training_free_arms_then_the_main_comparison_seed_by_seed(tmp_path):
    text = ('baseline = "ft"\nseeds = [1, 2]\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n[select]\narm = "iso"\n'
            'values = [0.1]\n[arms.frozen]\nloss = "contrastive"\nfreeze_encoder = true\nseeds = [7]\n'
            '[arms.base]\ntransform = "none"\n[arms.ft]\nloss = "contrastive"\n'
            '[arms.iso]\nloss = "contrastive+{lambda}*isotropy"\n')
    plan = load_plan(_write(tmp_path, text))
    assert [(a.name, s) for a, s in plan.order()] == [("base", 0), ("ft", 1), ("iso", 1), ("ft", 2), ("iso", 2),
                                                      ("frozen", 7)]
    assert plan.arms["iso"].loss_for(0.05) == "contrastive+0.05*isotropy"


def test_the_order_runs_every_arm_of_a_primary_comparison_seed_by_seed(tmp_path):
    text = ('baseline = "ft"\nseeds = [1, 2]\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n[select]\narm = "iso"\n'
            'values = [0.1]\n[primary]\ncomparisons = ["iso vs ft", "ft vs cos"]\n'
            '[arms.other]\nloss = "contrastive"\n[arms.cos]\nloss = "contrastive"\n'
            '[arms.ft]\nloss = "contrastive"\n[arms.iso]\nloss = "contrastive+{lambda}*isotropy"\n')
    plan = load_plan(_write(tmp_path, text))
    assert [(a.name, s) for a, s in plan.order()] == [("ft", 1), ("iso", 1), ("cos", 1), ("ft", 2), ("iso", 2),
                                                      ("cos", 2), ("other", 1), ("other", 2)]


def test_paired_tests_find_a_known_difference_and_not_an_absent_one():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)
    better = np.clip(base + 0.05 + rng.normal(0, 0.02, 300), 0, 1)
    assert paired_test(base, better, "student") < 1e-6
    assert paired_test(base, better, "fisher", permutations=2000) <= 1e-3
    assert paired_test(base, base.copy(), "student") == 1.0
    low, high = bootstrap_interval(better - base)
    assert 0.03 < low < (better - base).mean() < high < 0.07
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _fake_results(folder: Path, arms: dict[str, list[np.ndarray]], primary: dict | None = None) -> None:
    (folder / "plan.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps({"baseline": "a", "primary": primary}))
    for arm, seeds in arms.items():
        for seed, scores in enumerate(seeds, 1):
            run = folder / "runs" / arm / f"seed-{seed}"
            run.mkdir(parents=True)
            per_query = {f"q{i}": {"NDCG@10": float(v), "Recall@100": 1.0} for i, v in enumerate(scores)}
            (run / "d.per_query.json").write_text(json.dumps(per_query))
            iso = {"n": 10, "normalized": False, "isoscore": 0.5, "partition_isotropy_raw": 0.1, "sigreg_raw": 3.0,
                   "sigreg_gaussian_floor": 1.05}
            (run / "result.json").write_text(json.dumps({
                "arm": arm, "seed": seed, "trained": True, "what": arm,
                "datasets": {"d": {"metrics": {"NDCG@10": float(np.mean(scores)), "Recall@100": 1.0}, "isotropy": iso}},
                "info": {"trainable_params": 10, "lambda": 0.05 if arm != "a" else None, "loss": arm,
                         "global_batch": 32}}))


def test_compare_reports_run_level_verdicts_equivalence_and_seed_spread(tmp_path):
    rng = np.random.default_rng(1)
    base = [rng.uniform(0, 1, 200) for _ in range(3)]
    family = {"metric": "NDCG@10", "datasets": ["d"], "average": "each", "comparisons": ["better vs a", "same vs a"],
              "margin": 0.01, "alpha": 0.05}
    _fake_results(tmp_path, {
        "a": base,
        "better": [np.clip(b + 0.08 + j, 0, 1) for b, j in zip(base, (0.002, -0.001, 0.0))],
        "same": [b.copy() for b in base],
    }, primary=family)
    report = compare(tmp_path, resamples=500)
    rows = {r["arm"]: r for r in report["arms"]}
    by = {c["arm"]: c for c in report["comparisons"]}
    assert report["tests"] == 2 and report["verdicts"] and report["preregistration"]["status"] == "not recorded"
    better, same = by["better"]["run_level"]["d"], by["same"]["run_level"]["d"]
    assert better["p_holm"] < 0.01 and better["verdict"] == "better" and better["n"] == 3
    assert same["p"] == 1.0 and same["verdict"].startswith("equivalent")
    assert by["better"]["query_level"]["d"]["p"] < 1e-6  # conditional on the runs, reported beside
    assert rows["a"]["datasets"]["d"]["NDCG@10"]["sd"] == pytest.approx(np.std([b.mean() for b in base], ddof=1))
    assert list(rows["a"]["datasets"]["d"]["NDCG@10"]["values"]) == ["1", "2", "3"]
    table = to_markdown(report)
    assert "| better | 3 |" in table and "λ·N" in table and "1.6" in table  # 0.05 x 32
    assert "| better vs a | d | 3 |" in table and "**better**" in table and "conditional on these runs" in table
    _, paths = write_report(tmp_path, resamples=200)
    assert all(p.is_file() for p in paths)
    legacy = tmp_path / "legacy"
    _fake_results(legacy, {"a": base, "same": [b.copy() for b in base]})
    with pytest.raises(ValueError, match="baseline arm 'nope'"):
        compare(legacy, baseline="nope")
    with pytest.raises(ValueError, match="--baseline sets the control of a plan without"):
        compare(tmp_path, baseline="a")


@pytest.mark.slow
def test_a_tiny_plan_runs_end_to_end_resumes_and_compares(tiny_model_dir, data_dir, tmp_path):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    plan = _write(tmp_path, TINY_PLAN.format(model=tiny_model_dir))
    args = ["ablation", "run", str(plan), "--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work")]
    first = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    results = tmp_path / "results"
    finished = sorted(p.parent.relative_to(results).as_posix() for p in results.glob("runs/*/*/result.json"))
    assert finished == ["runs/ft-iso/seed-1", "runs/ft-iso/seed-2", "runs/ft/seed-1", "runs/ft/seed-2"]
    selection = json.loads((results / "selection.json").read_text())
    assert selection["chosen"] in (0.0, 1.0) and set(selection["dev"]) == {"0", "1"}
    candidates = selection["candidates"]
    assert candidates["0"]["se"] > 0 and candidates["1"]["lambda_x_N"] == 8.0  # lambda x the global batch
    assert "se_diff_vs_0" in candidates["1"] and "diff_vs_0" not in candidates["0"]
    dev_ids = set(json.loads((results / "dev_split.json").read_text())["dev_query_ids"])
    train_qrels = (tmp_path / "work" / "data" / "scifact-train-dev" / "qrels" / "train.tsv").read_text()
    assert not dev_ids & {line.split("\t")[0] for line in train_qrels.splitlines()[1:]}  # dev never trained on
    report = json.loads((results / "report.json").read_text())
    assert {r["arm"] for r in report["arms"]} == {"ft", "ft-iso"} and report["tests"] == 0  # no [primary]
    assert [(c["arm"], c["control"], c["role"]) for c in report["comparisons"]] == [("ft-iso", "ft", "exploratory")]
    assert report["comparisons"][0]["run_level"]["nq-utd"]["n"] == 2
    assert "| ft-iso vs ft | nq-utd | 2 |" in (results / "report.md").read_text()
    assert (tmp_path / "work" / "trec" / "runs" / "ft" / "seed-1" / "nq-utd.trec").is_file()
    again = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert again.exit_code == 0 and "finished now: 0 run(s), already finished: 4" in again.output


@pytest.mark.slow
def test_a_plan_runs_its_trained_runs_side_by_side(tiny_model_dir, data_dir, tmp_path):
    """--parallel yes on a CPU: the selection here, then each trained run in its own process (the path a GPU
    node takes with one process per GPU); the results are the plan's, and a second run finds nothing to do."""
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    plan = _write(tmp_path, TINY_PLAN.format(model=tiny_model_dir))
    args = ["ablation", "run", str(plan), "--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work"),
            "--parallel", "yes", "--slots", "2"]
    first = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert first.output.count("started in its own process") == 4
    results = tmp_path / "results"
    assert len(list(results.glob("runs/*/*/result.json"))) == 4
    assert sorted(p.name for p in (tmp_path / "work" / "logs").iterdir()) == [
        "ft-iso-seed-1.log", "ft-iso-seed-2.log", "ft-seed-1.log", "ft-seed-2.log"]
    again = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert "finished now: 0 run(s), already finished: 4" in again.output


def test_slots_follow_the_parallel_setting():
    from ragcun.ablation.runner import resolve_slots

    assert resolve_slots("no", None) == 1
    assert resolve_slots("auto", None) == 1  # no GPUs here
    assert resolve_slots("yes", None) == 2 and resolve_slots("yes", 3) == 3
    with pytest.raises(ValueError, match="--parallel"):
        resolve_slots("maybe", None)


def test_the_verdict_keeps_significance_and_equivalence_apart():
    from ragcun.ablation.compare import verdict

    assert verdict(0.004, 0.009, 0.01, 0.01) == "better, within ±0.01 (TOST)"
    assert verdict(0.001, 0.7, 0.03, 0.01) == "equivalent within ±0.01 (TOST)"
    assert verdict(0.03, 0.001, 0.9, 0.01) == "better" and verdict(-0.03, 0.001, 0.9, 0.01) == "worse"
    assert verdict(0.004, 0.22, 0.068, 0.01) == "inconclusive"  # never "no effect"


def test_the_primary_family_is_recorded_before_the_first_run_and_a_changed_one_refused(tmp_path):
    from ragcun.ablation.preregistration import FILE, check_for_compare, check_or_record

    text = _PRE + ('seeds = [1, 2, 3]\n[primary]\ncomparisons = ["b vs a"]\n[arms.a]\nloss = "contrastive"\n'
                   '[arms.b]\nloss = "contrastive+isotropy"\n').replace("seeds = [1, 2, 3]\n", "")
    text = text.replace('datasets = ["x"]\n', 'datasets = ["x"]\nseeds = [1, 2, 3]\n')
    plan = load_plan(_write(tmp_path, text), results=tmp_path / "results")
    shown = []
    check_or_record(plan, show=shown.append)
    recorded = json.loads((tmp_path / "results" / FILE).read_text())
    assert recorded["family"]["comparisons"] == ["b vs a"] and recorded["finished_runs_when_recorded"] == 0
    assert "pre-registered" in shown[0]
    check_or_record(plan, show=shown.append)  # unchanged: nothing to say, nothing rewritten
    assert json.loads((tmp_path / "results" / FILE).read_text()) == recorded
    assert check_for_compare(tmp_path / "results", plan.primary.family(), exploratory=False)["status"] == "recorded"
    changed = load_plan(_write(tmp_path, text.replace('comparisons = ["b vs a"]', 'comparisons = ["b vs a"]\n'
                                                                                   'margin = 0.02')),
                        results=tmp_path / "results")
    with pytest.raises(ValueError, match=r"primary analysis changed .*margin"):
        check_or_record(changed)
    with pytest.raises(ValueError, match="--exploratory"):
        check_for_compare(tmp_path / "results", changed.primary.family(), exploratory=False)
    assert check_for_compare(tmp_path / "results", changed.primary.family(), exploratory=True)["status"] == "changed"


def test_a_plan_with_the_datasets_own_dev_split_trains_on_all_of_train(data_dir, tmp_path):
    from ragcun.ablation.data import own_dev_split

    folder, info = own_dev_split("nfcorpus", str(data_dir), "dev")
    assert folder == data_dir / "nfcorpus" and info["own_split"]
    assert info["train_queries"] > 2000 and info["dev_queries"] > 300
    with pytest.raises(ValueError, match="no qrels/dev.tsv"):
        own_dev_split("scifact", str(data_dir), "dev")


def test_a_dry_run_checks_every_run_and_writes_nothing(tiny_model_dir, data_dir, tmp_path):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    plan = _write(tmp_path, TINY_PLAN.format(model=tiny_model_dir))
    args = ["ablation", "run", str(plan), "--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work"),
            "--dry-run"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert "ft-iso seed 1: contrastive+0*isotropy" in result.output and "ft seed 2: contrastive" in result.output
    assert "nothing was trained or written" in result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()
    bad = _write(tmp_path, TINY_PLAN.format(model=tiny_model_dir).replace('lr = 1e-3', 'lr = -1'))
    result = CliRunner().invoke(build_cli(), ["ablation", "run", str(bad), "--data-dir", str(data_dir), "--dry-run"])
    assert result.exit_code != 0 and "--lr must be positive" in result.output
    missing = _write(tmp_path, TINY_PLAN.format(model=tiny_model_dir).replace('datasets = ["nq-utd"]',
                                                                               'datasets = ["nq-utd", "nope"]'))
    result = CliRunner().invoke(build_cli(), ["ablation", "run", str(missing), "--data-dir", str(data_dir),
                                              "--dry-run"])
    assert result.exit_code != 0 and "nope" in result.output
