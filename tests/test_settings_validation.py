"""Issue 14 point 5: a setting that would be ignored or misread fails before anything runs, naming the flag or
the TOML table, with a did-you-mean; booleans take true/false only, integers no fractions."""

from __future__ import annotations

import pytest
from _training_helpers import write_pairs
from click.testing import CliRunner

from ragcun.cli.root import build_cli


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False)


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 8)


BASE_TOML = '[train]\nsteps = 1\nbatch-size = 4\n'


@pytest.mark.parametrize("extra, toml, message", [
    (["--set", "head.gausian.out_dim=8"], None, "--set head.gausian.out_dim=8: unknown head 'gausian'; "
                                                "did you mean 'gaussian'?"),
    (["--set", "loss.isotrpy.num_slices=8"], None, "did you mean 'isotropy'"),
    (["--set", "head.linear.out_dim=10"], None, "--set head.linear.out_dim=10: this run does not use head 'linear' "
                                                "(it uses 'gaussian')"),
    (["--set", "loss.uniformity.t=2"], None, "this run does not use loss 'uniformity'"),
    (["--set", "head.gaussian.logvar=flase"], None, "--set head.gaussian.logvar=flase: head.gaussian.logvar must be "
                                                    "true or false, got 'flase'"),
    (["--set", "head.gaussian.logvar=no"], None, "head.gaussian.logvar must be true or false, got 'no'"),
    (["--set", "head.gaussian.logvar=1"], None, "head.gaussian.logvar must be true or false, got 1"),
    (["--set", "head.gaussian.out_dim=2.7"], None, "--set head.gaussian.out_dim=2.7: head.gaussian.out_dim must be "
                                                   "an integer (no fraction), got 2.7"),
    (["--set", "head.gaussian.out_dim=true"], None, "head.gaussian.out_dim must be an integer"),
    (["--set", "loss.contrastive.temperature=warm"], None, "loss.contrastive.temperature must be a number, got 'warm'"),
    (["--set", "head.gaussian.outdim=8"], None, "did you mean head.gaussian.out_dim?"),
    (["--set", "heads.gaussian"], None, "KIND.NAME.PARAM=VALUE"),
    (["--set", "hed.gaussian.out_dim=8"], None, "--set 'hed.gaussian.out_dim=8': unknown component kind 'hed'"),
    ([], "[los.isotropy]\nnum_slices = 8\n", "run.toml: unknown table [los.isotropy]; did you mean [loss.isotropy]?"),
    ([], "[optimizer]\nlr = 1e-3\n", "run.toml: unknown table [optimizer]"),
    ([], "[head.gausian]\nout_dim = 8\n", "run.toml [head.gausian]: unknown head 'gausian'; did you mean 'gaussian'?"),
    ([], "[head.linear]\nout_dim = 8\n", "run.toml [head.linear]: this run does not use head 'linear'"),
    ([], "[head.gaussian]\nlogvar = \"yes\"\n", "run.toml [head.gaussian]: head.gaussian.logvar must be true or false"),
    ([], "[head.gaussian]\nout_dim = 8.5\n", "run.toml [head.gaussian]: head.gaussian.out_dim must be an integer"),
    ([], "[train]\nlr = \"fast\"\n", "run.toml [train]: lr must be a number, got 'fast'"),
    ([], "[train]\nbatch-size = 2.5\n", "run.toml [train]: batch_size must be an integer"),
])
def test_bad_settings_fail_before_anything_runs(tiny_model_dir, pairs, tmp_path, extra, toml, message):
    out = tmp_path / "out"
    args = ["train", "--encoder", f"hf:{tiny_model_dir}", "--train-data", pairs, "--output-dir", out, "--no-progress",
            "--set", "loss.isotropy.num_slices=16", *extra]
    config = tmp_path / "run.toml"
    config.write_text(toml + ("\n" + BASE_TOML if "[train]" not in toml else "") if toml else BASE_TOML)
    result = invoke(*args, "--config", config)
    assert result.exit_code == 1, result.output
    assert message in result.output.replace("\n", " ").replace("  ", " ") or message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing ran


def test_good_settings_of_every_type_pass(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "out"
    result = invoke("train", "--encoder", f"hf:{tiny_model_dir}", "--train-data", pairs, "--output-dir", out,
                    "--no-progress", "--steps", "1", "--batch-size", "4", "--set", "head.gaussian.out_dim=8",
                    "--set", "head.gaussian.logvar=false", "--set", "loss.contrastive.temperature=1",
                    "--set", "loss.isotropy.num_slices=16", "--set", "encoder.hf.max_seq_length=32")
    assert result.exit_code == 0, result.output


def test_check_value_type_unit():
    import inspect

    from ragcun.spec import check_value_type

    def f(a: int = 1, b: bool = False, c: float | str = 1.0, d: int | None = None, e=True, g: list[int] = ()):
        pass

    params = inspect.signature(f).parameters
    check_value_type(params["a"], 3, "a")
    check_value_type(params["c"], "auto", "c")
    check_value_type(params["c"], 2, "c")
    check_value_type(params["d"], None, "d")
    check_value_type(params["g"], "anything", "g")  # not a simple annotation: left to the component
    for name, value in [("a", 2.7), ("a", True), ("b", "no"), ("b", 0), ("d", 1.5), ("e", "flase")]:
        with pytest.raises(ValueError, match=f"^{name} must be"):
            check_value_type(params[name], value, name)
