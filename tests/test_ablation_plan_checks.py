"""Ablation plans are checked as strictly as command lines (issue 28, class 4): every key's type and range before
anything runs, names that become folder and file names, metric names and cut-offs; each result records the
settings that define it, and a plan edited after its runs is refused (or, with --rerun-changed, the changed runs
are set aside and run again) instead of averaging two experiments into one row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _training_helpers import write_beir
from click.testing import CliRunner

from ragcun.ablation.plan import load_plan

pytestmark = pytest.mark.usefixtures("single_thread")

GOOD = """
baseline = "a"
seeds = [1, 2]
datasets = ["x"]
[train]
data = "d"
steps = 1
[arms.a]
loss = "contrastive"
[arms.b]
loss = "contrastive"
"""


def _plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


PRIMARY = '[primary]\ncomparisons = ["b vs a"]\n'
SELECT = '[select]\narm = "c"\nvalues = [0, 1]\n[arms.c]\nloss = "contrastive+{lambda}*isotropy"\n'

BAD_PLANS = [
    # strings where booleans, integers, numbers or lists belong
    ("string for a boolean", GOOD + 'freeze_encoder = "yes"\n', r"\[arms\.b\] freeze_encoder: expected true or false"),
    ("string for an integer", _edit("steps = 1", 'steps = "ten"'), r"\[train\] steps: expected an integer.*'ten'"),
    ("float for an integer", _edit("steps = 1", "steps = 2.5"), r"\[train\] steps: expected an integer.*2\.5"),
    ("float for k", _edit('datasets = ["x"]', 'datasets = ["x"]\nk = 10.5'), r"plan\.toml k: expected an integer"),
    ("boolean for an integer", _edit('datasets = ["x"]', 'datasets = ["x"]\nisotropy_sample = true'),
     r"plan\.toml isotropy_sample: expected an integer >= 1, got true"),
    ("string for a number", _edit("steps = 1", 'steps = 1\nlr = "fast"'), r"\[train\] lr: expected a number"),
    ("string for a list", _edit("steps = 1", 'steps = 1\nset = "head.gaussian.out_dim=8"'),
     r"\[train\] set: expected a list"),
    ("string for a table", 'primary = "b vs a"\n' + GOOD, r"plan\.toml primary: expected a table"),
    ("number for a string", GOOD + "what = 3\n", r"\[arms\.b\] what: expected a string"),
    # empty or repeated lists
    ("empty seeds", _edit("seeds = [1, 2]", "seeds = []"), r"plan\.toml seeds: expected a non-empty list of integers"),
    ("empty datasets", _edit('datasets = ["x"]', "datasets = []"),
     r"plan\.toml datasets: expected a non-empty list of dataset names"),
    ("duplicate seeds", _edit("seeds = [1, 2]", "seeds = [1, 2, 1]"), r"plan\.toml seeds: each of integers once: 1"),
    ("an arm's duplicate seeds", GOOD + "seeds = [3, 3]\n", r"\[arms\.b\] seeds: each of integers once: 3"),
    ("duplicate datasets", _edit('datasets = ["x"]', 'datasets = ["x", "x"]'), r"plan\.toml datasets: each of"),
    ("empty primary datasets", GOOD + PRIMARY + "datasets = []\n", r"\[primary\] datasets: expected a non-empty list"),
    ("no arms", 'baseline = "a"\ndatasets = ["x"]\narms = {}\n[train]\ndata = "d"\n',
     r"plan\.toml arms: expected at least one \[arms\.NAME\] table"),
    # ranges
    ("a negative learning rate", _edit("steps = 1", "steps = 1\nlr = -1"), r"\[train\]: --lr must be positive"),
    ("an infinite learning rate", _edit("steps = 1", "steps = 1\nlr = inf"), r"\[train\] lr: expected a finite number"),
    ("an arm's head_lr of 0", GOOD + "head_lr = 0\n", r"\[arms\.b\] head_lr: expected a finite number > 0"),
    ("a bad mining spec", _edit("steps = 1", 'steps = 1\nnegatives = 1\nmine_negatives = "bm26"'),
     r"\[train\]: .*bm26"),
    ("no steps or epochs", _edit("steps = 1\n", ""), r"\[train\]: give steps \(optimizer steps\) or epochs"),
    ("batch_size 0", _edit('datasets = ["x"]', 'datasets = ["x"]\nbatch_size = 0'),
     r"plan\.toml batch_size: expected an integer >= 1, got 0"),
    ("alpha above 1", GOOD + PRIMARY + "alpha = 1.5\n", r"\[primary\] alpha: expected a number between 0 and 1"),
    ("a NaN margin", GOOD + PRIMARY + "margin = nan\n", r"\[primary\] margin: expected a finite number > 0"),
    ("dev_fraction 1", _edit("steps = 1", "steps = 1\ndev_fraction = 1.0"),
     r"\[train\] dev_fraction: expected a number"),
    ("a negative lambda", GOOD + SELECT.replace("[0, 1]", "[0, -1]"),
     r"\[select\] values: expected a non-empty list of finite numbers >= 0"),
    ("a repeated lambda", GOOD + SELECT.replace("[0, 1]", "[0, 1, 1.0]"), r"\[select\] values: each of"),
    ("an unknown dtype", _edit('datasets = ["x"]', 'datasets = ["x"]\ndtype = "fp8"'),
     r"plan\.toml dtype: expected one of float32"),
    ("an unknown transform", GOOD + '[arms.base]\ntransform = "pca"\n',
     r"\[arms\.base\] transform: expected one of none"),
    ("a bad --set", _edit("steps = 1", 'steps = 1\nset = ["head.out_dim=8"]'),
     r"\[train\] set: --set 'head.out_dim=8'"),
    ("a training-free arm with a head", GOOD + '[arms.base]\ntransform = "none"\nhead = "gaussian"\n',
     r"\[arms\.base\]: head is for trained arms"),
    ("whiten_dim without whiten", GOOD + '[arms.base]\ntransform = "center"\nwhiten_dim = 8\n',
     r"\[arms\.base\]: whiten_dim goes with transform"),
    # metrics: names the evaluation produces, cut-offs within k
    ("k below the endpoint's cut-off", GOOD.replace('datasets = ["x"]', 'datasets = ["x"]\nk = 5') + PRIMARY,
     r"plan\.toml k: 5 is below the cut-off of \[primary\] metric NDCG@10 .*k >= 10"),
    ("k below the legacy report's cut-off", _edit('datasets = ["x"]', 'datasets = ["x"]\nk = 9'),
     r"plan\.toml k: 9 is below the cut-off of the report's metric \(no \[primary\]\) NDCG@10"),
    ("k below the dev metric's cut-off", GOOD.replace('datasets = ["x"]', 'datasets = ["x"]\nk = 10') + SELECT
     + '[dev]\nmetric = "Recall@20"\n', r"plan\.toml k: 10 is below the cut-off of \[dev\] metric Recall@20"),
    ("an unknown metric", GOOD + PRIMARY + 'metric = "F1@10"\n',
     r"\[primary\] metric: 'F1@10' is not a metric the evaluation produces"),
    ("a misspelt metric", GOOD + PRIMARY + 'metric = "ndcg@10"\n', r"\[primary\] metric: .*did you mean NDCG@10\?"),
    ("a metric without a cut-off", GOOD + SELECT + '[dev]\nmetric = "NDCG"\n',
     r"\[dev\] metric: 'NDCG' is not a metric"),
    # names that become folder and file names
    ("an arm name with /", GOOD + '[arms."x/y"]\nloss = "contrastive"\n',
     r"\[arms\.x/y\]: the arm name 'x/y' is not a safe"),
    ("an arm name with ..", GOOD + '[arms."x..y"]\nloss = "contrastive"\n', r"\[arms\.x\.\.y\]: the arm name 'x\.\.y'"),
    ("an arm name with a space", GOOD + '[arms."x y"]\nloss = "contrastive"\n', r"\[arms\.x y\]: the arm name 'x y'"),
    ("an arm name ..", GOOD + '[arms.".."]\nloss = "contrastive"\n', r"the arm name '\.\.' is not a safe name"),
    ("a dataset path", _edit('datasets = ["x"]', 'datasets = ["../x"]'),
     r"plan\.toml datasets: '\.\./x' is not a safe name"),
    ("an absolute dataset path", _edit('datasets = ["x"]', 'datasets = ["/tmp/x"]'), r"plan\.toml datasets: '/tmp/x'"),
    ("a dev split path", _edit("steps = 1", 'steps = 1\ndev_split = "../dev"'), r"\[train\] dev_split: '\.\./dev'"),
]


@pytest.mark.parametrize("text,message", [p[1:] for p in BAD_PLANS], ids=[p[0] for p in BAD_PLANS])
def test_plan_validation_over_a_table_of_bad_plans(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        load_plan(_plan(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "plan.toml")), info.value


def test_the_good_plan_of_the_table_loads(tmp_path):
    plan = load_plan(_plan(tmp_path, GOOD + SELECT + '[dev]\nmetric = "P@10"\n'))
    assert plan.metrics() == {"the report's metric (no [primary])": "NDCG@10", "[dev] metric": "P@10"}


def test_a_bad_plan_is_a_clean_command_line_error(tmp_path):
    from ragcun.cli.root import build_cli

    path = _plan(tmp_path, _edit("steps = 1", 'steps = "ten"'))
    for args in (["ablation", "run", str(path), "--dry-run"], ["ablation", "power", str(path)]):
        result = CliRunner().invoke(build_cli(), args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"{path} [train] steps: expected an integer (no fraction), got 'ten'" in result.output


def test_every_key_declares_its_check():
    from ragcun.ablation.plan import KEYS

    assert [(t, k.name) for t, keys in KEYS.items() for k in keys if k.check is None] == [("train", "ANY")]


# -- the settings record ---------------------------------------------------------------------------------------
TINY = """
name = "tiny"
results = "results"
baseline = "ft"
seeds = [1]
datasets = ["tiny"]
dtype = "float32"
k = 10
isotropy_sample = 20

[train]
data = "tiny"
encoder = "hf:{model}"
steps = 1
batch_size = 4
lr = 1e-3
set = ["head.gaussian.out_dim=8"]

[arms.ft]
loss = "contrastive"
"""


@pytest.fixture()
def tiny(tiny_model_dir, tmp_path):
    """A one-arm, one-seed plan on a synthetic BEIR dataset (its test queries are also its train queries):
    a run trains one step and evaluates in about a second."""
    data = tmp_path / "data"
    write_beir(data / "tiny", same_qrels_as=("train",))
    plan = tmp_path / "plan.toml"
    plan.write_text(TINY.format(model=tiny_model_dir))
    return plan, data


def _run(plan: Path, data: Path, *extra: str):
    from ragcun.cli.root import build_cli

    args = ["ablation", "run", str(plan), "--data-dir", str(data), "--work-dir", str(plan.parent / "work"), *extra]
    return CliRunner().invoke(build_cli(), args)


def _result(plan: Path, run: str = "runs/ft/seed-1") -> dict:
    return json.loads((plan.parent / "results" / run / "result.json").read_text())


def test_a_plan_edited_after_its_runs_is_refused_naming_the_setting_and_rerun_on_request(tiny):
    from ragcun.ablation.plan import settings_hash

    plan, data = tiny
    first = _run(plan, data)
    assert first.exit_code == 0, first.output
    recorded = _result(plan)
    assert recorded["settings"]["run"]["train"]["lr"] == 1e-3 and recorded["settings"]["run"]["seed"] == 1
    assert recorded["settings"]["evaluation"] == {"batch_size": 64, "datasets": ["tiny"], "dtype": "float32",
                                                  "isotropy_sample": 20, "k": 10}
    assert recorded["settings_hash"] == settings_hash(recorded["settings"])
    plan_json = (plan.parent / "results" / "plan.json").read_text()

    plan.write_text(plan.read_text().replace("lr = 1e-3", "lr = 2e-3"))
    refused = _run(plan, data)
    assert refused.exit_code == 1, refused.output
    assert "results/runs/ft/seed-1/result.json: run.train.lr 0.001 -> 0.002" in refused.output
    assert "--rerun-changed" in refused.output and "Traceback" not in refused.output
    assert _result(plan) == recorded  # nothing reused, nothing rewritten
    assert (plan.parent / "results" / "plan.json").read_text() == plan_json  # plan.json still describes the runs
    dry = _run(plan, data, "--dry-run")
    assert dry.exit_code == 1 and "run.train.lr 0.001 -> 0.002" in dry.output

    again = _run(plan, data, "--rerun-changed")
    assert again.exit_code == 0, again.output
    assert "setting them aside to run again" in again.output and "ft seed 1: training" in again.output
    assert _result(plan)["settings"]["run"]["train"]["lr"] == 2e-3
    stale = plan.parent / "results" / "stale" / "runs" / "ft" / f"seed-1-{recorded['settings_hash']}"
    assert json.loads((stale / "result.json").read_text()) == recorded and (stale / "tiny.per_query.json").is_file()
    work = plan.parent / "work"
    model = json.loads((work / "models" / "ft" / "seed-1" / "train_config.json").read_text())
    old_model = json.loads((work / "stale" / "models" / "ft" / "seed-1" / "train_config.json").read_text())
    assert model["lr"] == 2e-3 and old_model["lr"] == 1e-3  # the model was trained again, the old one kept aside
    assert '"lr": 0.002' in (plan.parent / "results" / "plan.json").read_text()
    report = json.loads((plan.parent / "results" / "report.json").read_text())
    assert [r["seeds"] for r in report["arms"]] == [[1]]  # the stale run is not in the report


def test_a_model_trained_with_other_settings_is_not_reused(tiny):
    plan, data = tiny
    plan.write_text(plan.read_text().replace("steps = 1", "steps = 1\nsave_every = 1"))
    assert _run(plan, data).exit_code == 0
    shutil.rmtree(plan.parent / "results" / "runs")  # the result deleted (to run it again), its model kept
    dry = _run(plan, data, "--dry-run")  # the dry run says what the real run will do with the model folder
    assert dry.exit_code == 0 and "[model trained: evaluation only]" in dry.output, dry.output
    same = _run(plan, data)
    assert same.exit_code == 0 and ": training (" not in same.output, same.output  # the same settings: the model reused
    shutil.rmtree(plan.parent / "results" / "runs")
    plan.write_text(plan.read_text().replace("lr = 1e-3", "lr = 2e-3"))
    dry = _run(plan, data, "--dry-run")
    assert dry.exit_code == 1 and "trained with other settings (lr 0.001 -> 0.002" in dry.output, dry.output
    assert "--rerun-changed" in dry.output and "Traceback" not in dry.output
    dry = _run(plan, data, "--dry-run", "--rerun-changed")
    assert dry.exit_code == 0 and "[would set aside and train again: trained with other settings" in dry.output
    refused = _run(plan, data)
    assert refused.exit_code == 1 and "this model was trained with other settings" in refused.output, refused.output
    assert "lr 0.001 -> 0.002" in refused.output and not (plan.parent / "results" / "runs").exists()
    again = _run(plan, data, "--rerun-changed")
    assert again.exit_code == 0 and "training it again" in again.output, again.output
    assert _result(plan)["info"]["lr"] == 2e-3
    shutil.rmtree(plan.parent / "results" / "runs")  # as if killed after its checkpoint, before the final save
    (plan.parent / "work" / "models" / "ft" / "seed-1" / "ragcun.json").unlink()
    dry = _run(plan, data, "--dry-run")
    assert dry.exit_code == 0 and "[part trained: resumes from step 1]" in dry.output, dry.output


def test_results_without_a_settings_record_are_accepted_with_a_warning(tiny):
    plan, data = tiny
    assert _run(plan, data).exit_code == 0
    results = plan.parent / "results"
    for name in ("runs/ft/seed-1/result.json", "plan.json"):  # as the runner wrote them before the record
        record = json.loads((results / name).read_text())
        record.pop("settings"), record.pop("settings_hash", None)
        (results / name).write_text(json.dumps(record))
    again = _run(plan, data)
    assert again.exit_code == 0, again.output
    assert "warning: 1 finished result(s)" in again.output and "predate the settings record" in again.output
    assert "already finished: 1" in again.output and "settings" not in _result(plan)
    # plan.json (rewritten with the settings record) stands for them: a plan edited since is refused
    plan.write_text(plan.read_text().replace("k = 10", "k = 12"))
    refused = _run(plan, data)
    assert refused.exit_code == 1 and "predates the settings record; plan.json says it ran with" in refused.output
    assert "evaluation.k 10 -> 12" in refused.output
    # a plan.json from before the record: its train, dtype, k and datasets
    record = json.loads((results / "plan.json").read_text())
    record.pop("settings")
    (results / "plan.json").write_text(json.dumps(record))
    refused = _run(plan, data)
    assert refused.exit_code == 1 and "plan.json k 10 -> 12" in refused.output, refused.output


def test_a_changed_selection_re_evaluates_its_candidates_without_training_them_again(tiny):
    """The dev metric P@5 is computed (a cut-off the plan names, a family the result keeps); a changed dev corpus
    sample makes the candidates' dev scores and the selected run stale, not their models."""
    plan, data = tiny
    text = plan.read_text().replace('baseline = "ft"', 'baseline = "iso"').replace(
        '[arms.ft]\nloss = "contrastive"', '[arms.iso]\nloss = "contrastive+{lambda}*isotropy"')
    plan.write_text(text + '[select]\narm = "iso"\nvalues = [0, 1]\n[dev]\nmetric = "P@5"\ncorpus_sample = 30\n')
    first = _run(plan, data)
    assert first.exit_code == 0, first.output
    selection = plan.parent / "results" / "selection"
    candidate = json.loads((selection / "lambda-1.json").read_text())
    assert "P@5" in candidate["dev"] and candidate["settings"]["run"]["lambda"] == 1.0
    assert candidate["settings"]["evaluation"]["dev_corpus_sample"] == 30
    assert _result(plan, "runs/iso/seed-1")["settings"]["run"]["select"]["values"] == [0.0, 1.0]

    plan.write_text(plan.read_text().replace("corpus_sample = 30", "corpus_sample = 25"))
    refused = _run(plan, data)
    assert refused.exit_code == 1, refused.output
    assert "selection/lambda-0.json: evaluation.dev_corpus_sample 30 -> 25" in refused.output
    assert "runs/iso/seed-1/result.json: run.select.corpus_sample 30 -> 25" in refused.output
    again = _run(plan, data, "--rerun-changed")
    assert again.exit_code == 0, again.output
    assert ": training (" not in again.output and "dev evaluation" in again.output  # the models are reused
    assert json.loads((selection / "lambda-1.json").read_text())["settings"]["evaluation"]["dev_corpus_sample"] == 25
    assert (plan.parent / "results" / "stale" / "selection.json").is_file()


def test_only_an_arm_without_the_baseline_finishes_and_says_the_report_waits(tiny):
    plan, data = tiny
    plan.write_text(plan.read_text() + '[arms.other]\nloss = "contrastive"\n')
    result = _run(plan, data, "--only", "other")
    assert result.exit_code == 0, result.output
    assert "report: not built yet: the comparison needs the baseline's runs, and 'ft' has none" in result.output
    assert not (plan.parent / "results" / "report.md").exists()


# -- compare: one row, one experiment ----------------------------------------------------------------------------
def _fake_run(results: Path, arm: str, seed: int, settings: dict) -> None:
    run = results / "runs" / arm / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "d.per_query.json").write_text(json.dumps({f"q{i}": {"NDCG@10": 0.5 + 0.01 * i} for i in range(5)}))
    iso = {"isoscore": 0.5, "partition_isotropy_raw": 0.1, "sigreg_raw": 3.0, "sigreg_gaussian_floor": 1.05}
    (run / "result.json").write_text(json.dumps({
        "arm": arm, "seed": seed, "trained": True, "what": arm, "info": {"loss": "contrastive"},
        "datasets": {"d": {"metrics": {"NDCG@10": 0.52}, "isotropy": iso}},
        "settings": {**settings, "run": {**settings["run"], "seed": seed}}}))  # compare hashes the record itself


def test_compare_refuses_an_arm_whose_runs_ran_with_different_settings(tmp_path):
    from ragcun.ablation.compare import compare

    evaluation = {"datasets": ["d"], "k": 100}
    (tmp_path / "plan.json").write_text(json.dumps({"baseline": "a", "primary": None}))
    _fake_run(tmp_path, "a", 1, {"run": {"train": {"lr": 1e-3}}, "evaluation": evaluation})
    _fake_run(tmp_path, "a", 2, {"run": {"train": {"lr": 1e-3}}, "evaluation": evaluation})
    _fake_run(tmp_path, "a", 3, {"run": {"train": {"lr": 2e-3}}, "evaluation": evaluation})
    with pytest.raises(ValueError, match=r"arm 'a' has runs made with different settings.* against runs/a/seed-1, "
                                         r"runs/a/seed-2: runs/a/seed-3: run\.train\.lr 0\.001 -> 0\.002"):
        compare(tmp_path, resamples=100)
    shutil.rmtree(tmp_path / "runs" / "a" / "seed-3")
    assert compare(tmp_path, resamples=100)["arms"][0]["seeds"] == [1, 2]  # one experiment: the report builds
    _fake_run(tmp_path, "b", 1, {"run": {"train": {"lr": 1e-3}}, "evaluation": {"datasets": ["d"], "k": 10}})
    with pytest.raises(ValueError, match=r"evaluated with different settings.*runs/b/seed-1: evaluation\.k 100 -> 10"):
        compare(tmp_path, resamples=100)


def test_the_dry_run_warns_of_emulated_bfloat16_before_anything_runs(tiny, monkeypatch):
    """The dry run is where a plan is checked before hours are spent: it names the slow precision, whether the
    plan's evaluation or its [train] section asks for it, and what to use instead."""
    import ragcun.precision

    plan, data = tiny
    original = plan.read_text()
    monkeypatch.setattr(ragcun.precision, "cpu_has_native_bfloat16", lambda: False)
    dry = _run(plan, data, "--dry-run")
    assert dry.exit_code == 0 and "bfloat16" not in dry.output, dry.output
    for old, new, key in (('dtype = "float32"', 'dtype = "bfloat16-autocast"', "dtype"),
                          ("steps = 1\n", 'steps = 1\ndtype = "bfloat16"\n', "[train] dtype")):
        plan.write_text(original.replace(old, new, 1))
        dry = _run(plan, data, "--dry-run")
        text = " ".join(dry.output.split())
        assert dry.exit_code == 0, dry.output
        assert f"warning: the plan's {key} (plan.toml) bfloat16: this CPU has no native bfloat16" in text, text
        assert 'a plan with dtype = "float32" (and float32 training) is faster on this machine' in text
    monkeypatch.setattr(ragcun.precision, "cpu_has_native_bfloat16", lambda: True)
    assert "warning" not in _run(plan, data, "--dry-run").output
