"""``ragcun sweep`` is a canned ablation plan (ragcun.ablation.sweep), and the plan keys it needs: a plan without a
lambda to choose trains on the whole split (nothing carved), ``[train] split`` picks the trained split, the top
level ``split`` the evaluated one, and a file alone (no ``data``) can be trained on."""

from __future__ import annotations

import json
import tomllib

import pytest
from _training_helpers import write_beir
from click.testing import CliRunner

from ragcun.ablation.plan import load_plan
from ragcun.ablation.runner import PlanRunner
from ragcun.ablation.sweep import arm_configs, sweep_plan
from ragcun.training.config import TrainConfig


def _data(tmp_path):
    data = tmp_path / "data"
    write_beir(data / "tiny", same_qrels_as=("train", "dev"))
    return data


def test_the_three_arms():
    configs = arm_configs(TrainConfig(output_dir="runs/s", train_data="x.jsonl", steps=1), 1.0)
    assert {n: (c.loss, c.freeze_encoder) for n, c in configs.items()} == {
        "baseline": ("contrastive+0*isotropy", False), "isotropy": ("contrastive+1*isotropy", False),
        "frozen": ("contrastive+1*isotropy", True)}
    assert configs["frozen"].head_lr == 1e-3 and configs["baseline"].head_lr is None
    assert list(arm_configs(TrainConfig(head_lr=5e-4), 0.5, ["frozen", "baseline"])) == ["baseline", "frozen"]
    assert arm_configs(TrainConfig(head_lr=5e-4), 0.5, ["frozen"])["frozen"].head_lr == 5e-4
    with pytest.raises(ValueError, match="unknown run"):
        arm_configs(TrainConfig(), 1.0, ["nope"])
    with pytest.raises(ValueError, match="--isotropy-weight must be positive"):
        arm_configs(TrainConfig(), 0.0)


def test_the_plan_carries_every_setting_and_loads(tmp_path):
    data = _data(tmp_path)
    base = TrainConfig(output_dir=str(tmp_path / "out"), train_data="beir:tiny:train", steps=3, lr=2e-4, seed=7,
                       batch_size=4, settings={"loss": {"isotropy": {"num_slices": 16}}}, data_dir=str(data))
    path = tmp_path / "out" / "sweep.toml"
    path.parent.mkdir()
    path.write_text(sweep_plan(base, "beir:tiny:test", data_dir=str(data), isotropy_weight=0.5, batch_size=8))
    raw = tomllib.loads(path.read_text())
    assert raw["train"]["data"] == "tiny" and raw["train"]["split"] == "train"
    assert {k: raw["train"][k] for k in ("steps", "lr", "batch_size", "encoder")} == {
        "steps": 3, "lr": 2e-4, "batch_size": 4, "encoder": "all-minilm-l6-v2"}
    assert raw["train"]["set"] == ["loss.isotropy.num_slices=16"] and "data_dir" not in raw["train"]
    plan = load_plan(path)
    assert plan.seeds == [7] and plan.datasets == ["tiny"] and plan.split == "test" and plan.dtype == "float32"
    assert plan.results == path.parent and plan.work_dir == (tmp_path / "out").resolve()
    assert {n: (a.loss, a.freeze_encoder, a.head_lr) for n, a in plan.arms.items()} == {
        "baseline": ("contrastive+0*isotropy", False, None), "isotropy": ("contrastive+0.5*isotropy", False, None),
        "frozen": ("contrastive+0.5*isotropy", True, 1e-3)}
    # what each arm trains is the arm's config the command built
    runner = PlanRunner(plan, data_dir=str(data))
    runner.describe_data()
    for name, expected in arm_configs(base, 0.5).items():
        config = runner.train_config(plan.arms[name], 7, None)
        assert config.train_data == f"beir:{data / 'tiny'}:train"
        assert _comparable(config) == _comparable(expected)


def _comparable(config: TrainConfig) -> dict:
    """What a run computes: its settings less the folders and the display, component settings without empty
    kinds (the runner lists every kind)."""
    out = {k: v for k, v in config.to_dict().items()
           if k not in ("output_dir", "train_data", "show_progress", "data_dir")}
    return {**out, "settings": {kind: v for kind, v in (out["settings"] or {}).items() if v}}


def test_a_training_file_and_a_bad_evaluation_folder(tmp_path):
    data = _data(tmp_path)
    (tmp_path / "pairs.jsonl").write_text('{"query": "q", "positive": "d"}\n')
    base = TrainConfig(output_dir=str(tmp_path / "out"), train_data=f"jsonl:{tmp_path / 'pairs.jsonl'}", steps=1)
    raw = tomllib.loads(sweep_plan(base, "beir:tiny:test", data_dir=str(data)))
    assert raw["train"] == {**raw["train"], "train_file": f"jsonl:{tmp_path / 'pairs.jsonl'}"}
    assert "data" not in raw["train"]
    with pytest.raises(ValueError, match="is not a dataset of the data folder .*--data-dir"):
        sweep_plan(base, f"beir:{data / 'tiny'}:test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cannot be written into a plan file"):
        sweep_plan(TrainConfig(output_dir=str(tmp_path), train_data="beir:tiny", steps=1,
                               settings={"head": {"gaussian": {"x": None}}}), "beir:tiny:test", data_dir=str(data))


PLAN = """
baseline = "a"
datasets = ["tiny"]
{top}
[train]
data = "tiny"
steps = 1
{train}
[arms.a]
loss = "contrastive"
"""


def _plan(tmp_path, top="", train=""):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(top=top, train=train))
    return load_plan(path, work_dir=tmp_path / "work")


def test_without_a_lambda_nothing_is_carved_and_the_whole_split_is_trained(tmp_path):
    data = _data(tmp_path)
    plan = _plan(tmp_path)
    runner = PlanRunner(plan, data_dir=str(data), show=lambda line: None)
    assert "training data: all of tiny train (no lambda to choose, so no dev split)" in runner.dry_run()
    runner.prepare()
    assert runner.train_config(plan.arms["a"], 1, None).train_data == f"beir:{data / 'tiny'}:train"
    assert plan.data_settings() == {"data": "tiny", "dev": None}
    assert not (tmp_path / "work" / "data").exists()  # no carved folder


def test_the_trained_and_the_evaluated_split_are_chosen(tmp_path):
    data = _data(tmp_path)
    plan = _plan(tmp_path, top='split = "dev"', train='split = "test"')
    runner = PlanRunner(plan, data_dir=str(data), show=lambda line: None)
    lines = runner.dry_run()
    assert "training data: all of tiny test (no lambda to choose, so no dev split)" in lines
    assert "evaluated on their dev split: tiny (dev splits present)" in lines
    assert runner.train_config(plan.arms["a"], 1, None).train_data == f"beir:{data / 'tiny'}:test"
    assert runner.dataset("tiny").name == "tiny" and len(runner.dataset("tiny").queries)
    assert plan.data_settings()["split"] == "test" and plan.evaluation_settings()["split"] == "dev"
    # the default splits leave the settings records as they were before the keys existed
    default = _plan(tmp_path)
    assert "split" not in default.data_settings() and "split" not in default.evaluation_settings()


@pytest.mark.parametrize("top, train, message", [
    ("", 'split = "test"', r"split = 'test' of 'tiny' is evaluated, and the plan trains on that split"),
    ('split = "dev"', 'dev_split = "dev"', "chooses lambda on that split"),
    ("", "dev_fraction = 0.2", "this plan has no \\[select\\], so nothing is carved"),
    ("", 'split = "a/b"', r"\[train\] split: 'a/b' is not a safe name"),
])
def test_splits_that_would_test_on_training_data_are_refused(tmp_path, top, train, message):
    with pytest.raises(ValueError, match=message):
        _plan(tmp_path, top, train)


def test_a_file_alone_is_trained_without_data(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "positive": "d"}\n')
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(top="", train=f'train_file = "jsonl:{pairs}"').replace('data = "tiny"\n', ""))
    plan = load_plan(path)
    assert plan.train_data is None and plan.data_settings()["train_file"] == f"jsonl:{pairs}"
    path.write_text(path.read_text().replace("train_file =", 'dev_split = "dev"\ntrain_file ='))
    with pytest.raises(ValueError, match="missing 'data'.*dev split scores the lambda candidates"):
        load_plan(path)


@pytest.mark.slow  # three tiny trainings and evaluations: ~40 s
def test_sweep_end_to_end_on_a_tiny_model(tiny_model_dir, data_dir, tmp_path):
    """The command runs its plan; the rows are the plan's results, scored as ``ragcun eval beir`` scores the
    saved models; a second call trains nothing; a changed setting is refused, naming it."""
    from ragcun.cli.root import build_cli
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.model import load

    out = tmp_path / "sweep"
    args = ["sweep", "--train-data", "beir:scifact:train", "--eval-data", "beir:nq-utd:test", "--data-dir",
            str(data_dir), "--output-dir", str(out), "--encoder", f"hf:{tiny_model_dir}", "--steps", "2",
            "--batch-size", "4", "--set", "head.gaussian.out_dim=16", "--set", "loss.isotropy.num_slices=16",
            "--format", "json"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    rows = {r["run"]: r for r in report["runs"]}
    assert set(rows) == {"baseline", "isotropy", "frozen"} and report["plan"] == str(out / "sweep.toml")
    assert rows["frozen"]["trainable_params"] < rows["isotropy"]["trainable_params"]
    assert rows["baseline"]["final_train"]["isotropy"] == 0.0  # weight 0: the weighted term is 0
    assert rows["isotropy"]["final_train"]["isotropy"] > 0
    model = load(out / "models" / "baseline" / "seed-42")
    direct = evaluate_beir(model, "nq-utd", data_dir, batch_size=64, download=False, device="cpu",
                           show_progress=False)["datasets"]["nq-utd"]
    assert rows["baseline"]["NDCG@10"] == pytest.approx(direct["NDCG@10"], abs=2e-5)
    again = CliRunner().invoke(build_cli(), args)
    assert again.exit_code == 0 and again.output.count("already finished") == 3 and ": training (" not in again.output
    changed = CliRunner().invoke(build_cli(), [*args[:-2], "--lr", "1e-3", "--format", "json"])
    assert changed.exit_code == 1 and "run.train.lr" in changed.output and "--rerun-changed" in changed.output
