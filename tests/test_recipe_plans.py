"""The recipes' measurement plans (benchmarks/ablation/squad-distill.toml, matryoshka.toml), and how to continue one;
checked here by loading them and by building each trained arm's training config (the checks `ragcun train` does
before anything runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragcun.ablation.plan import load_plan

PLANS = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation"
COLLECTIONS = ["scifact", "nfcorpus", "nq-utd", "cranfield", "cacm", "cisi", "npl"]


@pytest.mark.parametrize("name,arms,comparison", [
    ("squad-distill", {"ft": "contrastive", "ft-distill": "margin-mse"}, "ft-distill vs ft"),
    ("matryoshka", {"ft": "contrastive", "ft-mrl": "matryoshka:contrastive"}, "ft-mrl vs ft"),
])
def test_the_plans_load_and_their_arms_would_train(name, arms, comparison, tmp_path):
    from ragcun.training.config import build_config

    path = PLANS / f"{name}.toml"
    plan = load_plan(path)
    assert {a: arm.loss for a, arm in plan.arms.items()} == arms
    assert plan.seeds == [1, 2, 3] and plan.datasets == COLLECTIONS and plan.train_data == "squad"
    assert [str(c) for c in plan.primary.comparisons] == [comparison]
    assert plan.primary.average == "macro" and plan.primary.margin == 0.01
    assert len({plan.train.get("steps")}) == 1  # one [train] recipe: the same steps for both arms
    for arm in plan.arms.values():
        flags = {**plan.train, "train_data": f"beir:{plan.train_data}:train", "loss": arm.loss,
                 "output_dir": str(tmp_path / arm.name), "seed": plan.seeds[0]}
        build_config(flags=flags, settings=[*plan.train_set, *arm.set])
    # a plan says it was not run exactly when no report of its runs is committed beside it
    assert ("NOT RUN" in path.read_text()) != (PLANS / plan.results.name / "report.json").is_file()


def test_the_distill_plan_trains_both_arms_on_the_scored_file_and_says_how_to_make_it():
    path = PLANS / "squad-distill.toml"
    plan = load_plan(path)
    # Both arms read the teacher-scored JSONL (same pairs, negatives and order); the plan names the command that
    # writes it and the commands that run the plan once it exists.
    assert plan.train_file == "jsonl:runs/ablation/squad-distill/data/squad-train-mpnet.jsonl"
    assert plan.dev_split is None
    text = path.read_text()
    assert "ragcun data score --teacher all-mpnet-base-v2 --train-data beir:squad:train --negatives 4" in text
    assert "--sample 16000 --dtype bfloat16-autocast" in text  # affordable on a CPU: the plan says why
    assert "--output runs/ablation/squad-distill/data/squad-train-mpnet.jsonl" in text
    assert "ragcun ablation run benchmarks/ablation/squad-distill.toml --dry-run" in text


def test_the_teacher_file_can_be_written_again_as_the_committed_runs_name_it():
    """rescore_teacher.sh re-creates the file the squad-distill runs were trained on: the same scoring command as
    the plan's header, the same output path as its train_file, and the SHA-256 its PROVENANCE.md records."""
    import re

    plan = load_plan(PLANS / "squad-distill.toml")
    header = (PLANS / "squad-distill.toml").read_text()
    script = (PLANS / "squad-distill" / "rescore_teacher.sh").read_text()
    provenance = (PLANS / "squad-distill" / "PROVENANCE.md").read_text()
    default = dict(re.findall(r"^(\w+)=\$\{\1:?-([^}]*)\}", script, re.M))
    assert f"--sample {default['SAMPLE']} --dtype {default['DTYPE']} --batch-size {default['BATCH_SIZE']}" in header
    assert f"ragcun data score --teacher {default['TEACHER']} --train-data beir:squad:train --negatives 4" in header
    assert "--train-data beir:squad:train --negatives 4" in script and "--mine-negatives bm25" in script
    assert "--negatives 4 \\\n#         --mine-negatives bm25" in header
    assert plan.train_file == f"jsonl:{default['OUTPUT']}"
    assert len(default["EXPECTED_SHA"]) == 64 and default["EXPECTED_SHA"] in provenance
    assert f"in two pieces on the same\n  machine: {int(default['CUT']):,} lines" in provenance  # where it was cut
