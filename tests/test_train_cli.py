"""``ragcun train`` / ``sweep`` / ``preflight`` / ``data`` through click: bad input gives a clear error, no
traceback."""

from __future__ import annotations

import json

import pytest
from _training_helpers import write_pairs
from click.testing import CliRunner

from ragcun.cli.root import build_cli


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24)


def invoke(runner, *args):
    return runner.invoke(build_cli(), list(map(str, args)), catch_exceptions=False)


def tiny_args(model_dir, pairs, out, *extra):
    return ["train", "--encoder", f"hf:{model_dir}", "--set", "head.gaussian.out_dim=16",
            "--set", "loss.isotropy.num_slices=16", "--train-data", pairs, "--output-dir", out,
            "--batch-size", "4", "--no-progress", *extra]


@pytest.mark.parametrize("args, message", [
    (["--steps", "2"], "--train-data is required"),
    (["--train-data", "data.csv", "--steps", "2"], "--train-data 'data.csv': not a data spec"),
    (["--train-data", "missing.jsonl", "--steps", "2"], "missing.jsonl does not exist"),
    (["--train-data", "beir:scifact:train"], "give --steps"),
    (["--train-data", "x.jsonl", "--steps", "2", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--train-data", "x.jsonl", "--steps", "2", "--dtype", "fp8"], "Invalid value for '--dtype': 'fp8' is not one of"),
    (["--train-data", "x.jsonl", "--steps", "2", "--set", "loss.isotropy"], "KIND.NAME.PARAM=VALUE"),
    (["--train-data", "x.jsonl", "--steps", "2", "--eval-every", "5"], "--eval-every and --eval-data go together"),
    (["--train-data", "x.jsonl", "--steps", "2", "--mine-negatives", "bm25"], "--mine-negatives needs --negatives"),
    (["--resume", "--output-dir", "nowhere"], "nowhere has no train_config.json"),
    (["--train-data", "x.jsonl", "--steps", "2", "--nproc-per-node", "0"], "--nproc-per-node"),
    (["--train-data", "x.jsonl", "--steps", "2", "--config", "nope.toml"], "config file nope.toml does not exist"),
])
def test_bad_input_is_a_clear_error(runner, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths below land in the test's folder
    result = invoke(runner, "train", "--output-dir", "out", *args) if "--output-dir" not in args else \
        invoke(runner, "train", *args)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # a failed start leaves no half-made run folder


def test_bad_component_names_fail_with_a_hint(runner, tiny_model_dir, pairs, tmp_path):
    result = invoke(runner, *tiny_args(tiny_model_dir, pairs, tmp_path / "a", "--steps", "1", "--loss",
                                       "contrastive+isotrpy"))
    assert result.exit_code == 1 and "isotropy" in result.output and "Traceback" not in result.output
    result = invoke(runner, *tiny_args(tiny_model_dir, pairs, tmp_path / "b", "--steps", "1", "--set",
                                       "loss.isotropy.num_slicez=3"))
    assert result.exit_code == 1 and "num_slices" in result.output


def test_float16_needs_cuda(runner, tiny_model_dir, pairs, tmp_path):
    result = invoke(runner, *tiny_args(tiny_model_dir, pairs, tmp_path / "a", "--steps", "1", "--dtype", "float16"))
    assert result.exit_code == 1 and "float16 needs a CUDA device" in result.output


def test_toml_config_then_resume_with_more_steps(runner, tiny_model_dir, pairs, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'[train]\ntrain-data = "{pairs}"\nbatch-size = 4\nsteps = 2\nlr = 1e-3\n'
                      'save-every = 1\nlog-every = 1\n'
                      f'encoder = "hf:{tiny_model_dir}"\nshow-progress = false\n\n'
                      '[head.gaussian]\nout_dim = 8\n\n[loss.isotropy]\nnum_slices = 16\n')
    out = tmp_path / "run"
    result = invoke(runner, "train", "--config", config, "--output-dir", out)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["settings"]["head"]["gaussian"]["out_dim"] == 8 and saved["lr"] == 1e-3 and saved["steps"] == 2
    # continue the same run for two more steps: only --output-dir, --resume and the new --steps are needed
    result = invoke(runner, "train", "--output-dir", out, "--resume", "--steps", "4")
    assert result.exit_code == 0, result.output
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3, 4]
    # but changing what the run computes is refused (optimizer-side settings such as --lr may change)
    result = invoke(runner, "train", "--output-dir", out, "--resume", "--steps", "5", "--batch-size", "8")
    assert result.exit_code == 1 and "settings differ" in result.output and "batch_size" in result.output


def test_unknown_toml_setting(runner, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[train]\nbatch_sise = 4\n')
    result = invoke(runner, "train", "--config", config, "--output-dir", tmp_path / "x")
    assert result.exit_code == 1 and "batch_sise (did you mean batch_size?)" in result.output


def test_sweep_and_preflight_validate_input(runner, tmp_path):
    result = invoke(runner, "sweep", "--train-data", "x.jsonl", "--eval-data", "beir:scifact:test",
                    "--output-dir", tmp_path, "--steps", "1", "--runs", "baseline,nope")
    assert result.exit_code == 1 and "unknown run(s) nope" in result.output
    result = invoke(runner, "sweep", "--train-data", "x.jsonl", "--eval-data", "beir:scifact:test",
                    "--output-dir", tmp_path, "--steps", "1", "--isotropy-weight", "0")
    assert result.exit_code == 1 and "--isotropy-weight must be positive" in result.output
    result = invoke(runner, "preflight", "--train-data", "x.jsonl", "--steps", "0")
    assert result.exit_code != 0 and "--steps" in result.output


# the sweep's plan (its arms, [train] table, data and split): tests/test_sweep_plan.py
# where the sweep's runs go is ragcun.launch.placement, the one meaning of --parallel: tests/test_launch.py


@pytest.mark.slow  # two ablation worker processes: ~30 s
def test_sweep_runs_in_parallel_processes(runner, tiny_model_dir, data_dir, tmp_path):
    """The side-by-side launch (one process per run, as on a GPU node) exercised with CPU processes."""
    out = tmp_path / "sweep"
    result = invoke(runner, "sweep", "--train-data", "beir:scifact:train", "--eval-data", "beir:nq-utd:test",
                    "--data-dir", data_dir, "--output-dir", out, "--encoder", f"hf:{tiny_model_dir}",
                    "--runs", "baseline,frozen", "--parallel", "yes", "--dtype", "float32",
                    "--steps", "2", "--batch-size", "4", "--set", "head.gaussian.out_dim=16",
                    "--set", "loss.isotropy.num_slices=16", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "started in its own process (CPU" in result.output
    rows = {r["run"]: r for r in json.loads(result.output[result.output.index("{"):])["runs"]}
    assert set(rows) == {"baseline", "frozen"}
    for name in rows:
        records = [json.loads(x) for x in (out / "models" / name / "seed-42" / "metrics.jsonl").read_text()
                   .splitlines()]
        assert [r["step"] for r in records if "loss" in r][-1] == 2
        assert (out / "logs" / f"{name}-seed-42.log").is_file()
    assert rows["frozen"]["trainable_params"] < rows["baseline"]["trainable_params"]


def test_data_download_offline_says_what_to_do(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCUN_OFFLINE", "1")
    result = invoke(runner, "data", "download", "msmarco", "--data-dir", tmp_path)
    assert result.exit_code == 1
    assert "curl -L -o" in result.output and "triples.train.small.tar.gz" in result.output
    assert "--train-data triples:" in result.output


def test_cli_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from ragcun.cli.root import build_cli; build_cli(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # the example script in a subprocess: ~5.5 s
def test_train_then_evaluate_example_runs(tiny_model_dir, data_dir, tmp_path):
    """examples/train_then_evaluate.py (the Python API end to end) on a tiny model and nq-utd."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "train_then_evaluate.py"
    proc = subprocess.run([sys.executable, str(example), "--data-dir", str(data_dir), "--encoder",
                           f"hf:{tiny_model_dir}", "--train-data", "beir:scifact:train", "--dataset", "nq-utd",
                           "--output-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
                           "--sample", "50", "--set", "head.gaussian.out_dim=16",
                           "--set", "loss.isotropy.num_slices=16"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert set(report) == {"base", "trained"}
    for row in report.values():
        assert 0 <= row["NDCG@10"] <= 1 and row["sigreg_raw"] > 0
