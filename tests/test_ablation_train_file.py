"""An ablation plan whose arms train on a file (issue 27's distillation plan: a scored JSONL from `ragcun data
score`) instead of a BEIR dataset's train split: both arms read the same file, the file's contents are part of
every run's settings, and a missing or rewritten file is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragcun.ablation.plan import load_plan
from ragcun.cli.root import build_cli

pytestmark = pytest.mark.usefixtures("single_thread")

MSMARCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msmarco-train-sample" / "train.jsonl"

PLAN = """
name = "distill-tiny"
results = "results"
baseline = "ft"
seeds = [1]
datasets = ["nq-utd"]
dtype = "float32"
k = 100
isotropy_sample = 50

[train]
data = "scifact"
train_file = "jsonl:{file}"
encoder = "hf:{model}"
steps = 2
batch_size = 4
negatives = 2
lr = 1e-3
set = ["head.gaussian.out_dim=16"]

[arms.ft]
loss = "contrastive"

[arms.ft-distill]
loss = "margin-mse"
"""


def _plan(tmp_path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, message", [
    ('train_file = "beir:scifact:train"', "a BEIR dataset goes in `data`"),
    ('train_file = 3', "expected a training file spec"),
])
def test_a_train_file_that_is_not_a_file_is_refused(tmp_path, extra, message):
    text = ('baseline = "ft"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\n' + extra
            + '\n[arms.ft]\nloss = "contrastive"\n')
    with pytest.raises(ValueError, match=message):
        load_plan(_plan(tmp_path, text))


def test_a_lambda_selection_with_a_train_file_needs_the_datasets_own_dev_split(tmp_path):
    text = ('baseline = "ft"\ndatasets = ["x"]\n[train]\ndata = "d"\nsteps = 1\ntrain_file = "jsonl:t.jsonl"\n'
            '[select]\narm = "iso"\nvalues = [0, 1]\n[arms.ft]\nloss = "contrastive"\n'
            '[arms.iso]\nloss = "contrastive+{lambda}*isotropy"\n')
    with pytest.raises(ValueError, match="with train_file, the lambda selection needs dev_split"):
        load_plan(_plan(tmp_path, text))
    with pytest.raises(ValueError, match="give dev_split"):
        load_plan(_plan(tmp_path, text.replace('train_file =', 'dev_fraction = 0.2\ntrain_file =')))


@pytest.mark.slow
@pytest.mark.skipif(not MSMARCO.is_file(), reason="needs ../shared/data/msmarco-train-sample")
def test_both_arms_train_on_the_scored_file_and_a_rewritten_file_is_refused(tiny_model_dir, data_dir, tmp_path):
    scored = tmp_path / "scored.jsonl"
    scored.write_text(MSMARCO.read_text())  # the sample's lines carry a teacher's pos_scores / neg_scores
    plan = _plan(tmp_path, PLAN.format(file=scored, model=tiny_model_dir))
    args = ["ablation", "run", str(plan), "--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work")]
    dry = CliRunner().invoke(build_cli(), [*args, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0 and f"training data: jsonl:{scored} for every trained arm" in dry.output, dry.output
    first = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    results = tmp_path / "results"
    for arm in ("ft", "ft-distill"):
        run = json.loads((results / "runs" / arm / "seed-1" / "result.json").read_text())
        assert run["settings"]["run"]["train_file"] == f"jsonl:{scored}"
        assert len(run["settings"]["run"]["train_file_sha256"]) == 64
        config = json.loads((tmp_path / "work" / "models" / arm / "seed-1" / "train_config.json").read_text())
        assert config["train_data"] == f"jsonl:{scored}" and config["negatives"] == 2
    assert not (results / "dev_split.json").exists()  # no lambda: no dev split was made
    scored.write_text("\n".join(MSMARCO.read_text().splitlines()[:-1]) + "\n")  # the same name, other contents
    again = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert again.exit_code != 0 and "train_file_sha256" in again.output, again.output
    scored.unlink()
    missing = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert missing.exit_code != 0 and "train_file" in missing.output and "does not exist" in missing.output
    # on a fresh machine the dry run says which file the finished runs need, not that the plan changed
    dry = CliRunner().invoke(build_cli(), [*args, "--dry-run"], catch_exceptions=False)
    text = " ".join(dry.output.split())
    assert dry.exit_code == 0 and "MISSING: write it before running" in text, dry.output
    assert f"trained on jsonl:{scored} with SHA-256 {run['settings']['run']['train_file_sha256']}: write" in text
    assert "other settings" not in text
