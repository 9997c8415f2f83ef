"""A plan's ``truncate_dims``: every run is also scored with its vectors cut to each width (encoded once), each
width a results folder of its own (``dims/D``) that ``ragcun ablation compare`` reports as an exploratory view."""

from __future__ import annotations

import json

import pytest
from _training_helpers import write_beir
from click.testing import CliRunner

from ragcun.ablation.plan import load_plan

PLAN = """
name = "trunc"
results = "results"
baseline = "ft"
seeds = [1, 2]
datasets = ["tiny"]
dtype = "float32"
k = 10
isotropy_sample = 20
truncate_dims = [4, 100]

[primary]
comparisons = ["ft-b vs ft"]

[train]
data = "tiny"
encoder = "hf:{model}"
steps = 1
batch_size = 4
lr = 1e-3
set = ["head.gaussian.out_dim=8"]

[arms.base]
transform = "none"

[arms.ft]
loss = "contrastive"

[arms.ft-b]
loss = "contrastive"
head_lr = 2e-3
"""


def _invoke(*args):
    from ragcun.cli.root import build_cli

    return CliRunner().invoke(build_cli(), [str(a) for a in args])


@pytest.fixture()
def plan(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    write_beir(data / "tiny", same_qrels_as=("train",))
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(model=tiny_model_dir))
    return path, data


def test_the_key_is_checked_and_recorded_only_when_given(tmp_path, tiny_model_dir):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(model=tiny_model_dir))
    plan = load_plan(path)
    assert plan.truncate_dims == [100, 4] and plan.evaluation_settings()["truncate_dims"] == [100, 4]
    path.write_text(path.read_text().replace("truncate_dims = [4, 100]\n", ""))
    assert "truncate_dims" not in load_plan(path).evaluation_settings()  # older results keep their settings record
    for bad, message in (("[4, 4]", "each of integers >= 1 once"), ("[0]", "integers >= 1"), ("[]", "non-empty")):
        path.write_text(PLAN.format(model=tiny_model_dir).replace("[4, 100]", bad))
        with pytest.raises(ValueError, match=rf"plan.toml truncate_dims: .*{message}"):
            load_plan(path)


@pytest.mark.slow  # four tiny trainings, their evaluations and the reports: ~30 s
def test_each_width_is_scored_from_the_same_vectors_and_reported_apart(plan):
    import torch

    from ragcun.ablation.runner import PlanRunner
    from ragcun.model import load
    from ragcun.truncation import truncate_model

    path, data = plan
    result = _invoke("ablation", "run", path, "--data-dir", data, "--work-dir", path.parent / "work")
    assert result.exit_code == 0, result.output
    results = path.parent / "results"
    at4 = json.loads((results / "dims/4/runs/ft/seed-1/result.json").read_text())
    assert at4["settings"]["evaluation"]["truncate_dim"] == 4 and at4["settings"]["run"]["seed"] == 1
    # the prefix of the vectors searched at full width is what a model cut to 4 dims encodes
    runner = PlanRunner(load_plan(path, work_dir=path.parent / "work"), data_dir=str(data), show=lambda line: None)
    runner.describe_data()
    model = truncate_model(load(path.parent / "work/models/ft/seed-1"), 4)
    with torch.no_grad():
        direct = runner.evaluate(model, ["tiny"], reuse_base=False, out=None, tag="x")["tiny"]
    assert at4["datasets"]["tiny"]["metrics"] == direct["metrics"]
    assert json.loads((results / "runs/ft/seed-1/result.json").read_text())["datasets"]["tiny"]["metrics"] != \
        at4["datasets"]["tiny"]["metrics"]
    # 100 is not below any arm's width: no results there; the training-free base encoder is cut to 4 too
    assert not (results / "dims/100/runs").exists() and (results / "dims/4/runs/base/fixed/result.json").is_file()
    assert (results / "dims/4/runs/ft-b/seed-2/tiny.per_query.json").is_file()
    report = (results / "dims/4/report.md").read_text()
    assert "# Ablation report: trunc, first 4 dims" in report and "no verdicts" in report
    assert "no tests, so no Holm correction" in report and "Holm corrects over these 0" not in report
    assert json.loads((results / "report.json").read_text())["verdicts"] is True  # the full width keeps its own
    assert json.loads((results / "dims/4/report.json").read_text())["verdicts"] is False


@pytest.mark.slow  # trains and evaluates twice: ~30 s
def test_a_run_set_aside_takes_its_truncated_results_with_it(plan):
    path, data = plan
    work = path.parent / "work"
    assert _invoke("ablation", "run", path, "--data-dir", data, "--work-dir", work, "--only", "ft",
                   "--seeds", "1", "--no-compare").exit_code == 0
    path.write_text(path.read_text().replace("steps = 1", "steps = 2"))
    refused = _invoke("ablation", "run", path, "--data-dir", data, "--work-dir", work, "--only", "ft", "--seeds", "1")
    assert refused.exit_code == 1 and "run.train.steps" in refused.output
    again = _invoke("ablation", "run", path, "--data-dir", data, "--work-dir", work, "--only", "ft", "--seeds", "1",
                    "--rerun-changed", "--no-compare")
    assert again.exit_code == 0, again.output
    results = path.parent / "results"
    [aside] = (results / "stale/dims/4/runs/ft").iterdir()  # beside the full width's, under the same name
    assert (results / "stale/runs/ft" / aside.name / "result.json").is_file()
    assert json.loads((aside / "result.json").read_text())["settings"]["run"]["train"]["steps"] == 1
    fresh = json.loads((results / "dims/4/runs/ft/seed-1/result.json").read_text())
    assert fresh["settings"]["run"]["train"]["steps"] == 2
