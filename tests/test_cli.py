import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.console import stdout  # noqa: F401  made before any test sets COLUMNS: its width follows them


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args))


def test_list_json_has_every_builtin_kind():
    result = invoke("list", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"encoder", "head", "loss", "distance", "evaluator"}
    gaussian = next(r for r in rows if r["kind"] == "head" and r["name"] == "gaussian")
    assert gaussian["provider"] == "ragcun" and gaussian["target"] == "ragcun.heads.gaussian:GaussianHead"


def test_list_by_kind_and_pattern():
    rows = json.loads(invoke("list", "distances", "*euclid*", "--format", "json").output)
    assert [r["name"] for r in rows] == ["euclidean", "expected-sqeuclidean", "sqeuclidean"]
    rows = json.loads(invoke("list", "distances", "sq*", "--format", "json").output)
    assert [r["name"] for r in rows] == ["sqeuclidean"]
    rows = json.loads(invoke("list", "l2", "--format", "json").output)  # a bare pattern across kinds
    assert [r["name"] for r in rows] == ["euclidean"]


def test_a_misspelt_kind_says_what_to_type():
    result = invoke("list", "heda")
    assert result.exit_code == 2 and "did you mean heads?" in result.output


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_list_fits_the_terminal_and_never_breaks_a_word(columns):
    """At 80 columns (a terminal or a pipe) one block per entry, wider a table: no line longer than the terminal,
    and every name, alias and word of every summary whole (issue 29, item 8)."""
    result = CliRunner().invoke(build_cli(), ["list"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= columns, [line for line in lines if len(line) > columns]

    def words(text: str) -> set[str]:
        return {w.strip("()") for w in text.replace("│", " ").replace(",", " ").split()} - {""}

    entries = json.loads(invoke("list", "--format", "json").output)
    expected = words(" ".join(w for e in entries for w in [e["name"], *e["aliases"], e["summary"]]))
    assert expected <= words(result.output), sorted(expected - words(result.output))


def test_list_bad_kind_is_a_usage_error():
    result = invoke("list", "optimizers", "adam")
    assert result.exit_code == 2 and "choose one of" in result.output


@pytest.mark.needs_plugins("ragcun-mlp")  # the installed example plugin, listed by `ragcun plugins`
def test_plugins_json_lists_the_example_plugin():
    result = invoke("plugins", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["mlp"]["distribution"] == "ragcun-mlp" and rows["mlp"]["status"] == "ok"
    assert "head:mlp" in rows["mlp"]["components"]


@pytest.mark.needs_plugins("ragcun-mlp")  # the installed example plugin (its `params` command)
def test_help_lists_plugin_commands_and_groups():
    result = invoke("--help")
    assert result.exit_code == 0
    # the names in the Commands section, not words of the root docstring (which mentions train, eval, ...)
    listed = {line.split()[0] for line in result.output.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert {"train", "eval", "isotropy", "list", "plugins", "encode", "export", "ablation", "sweep", "preflight",
            "data", "params"} <= listed


def test_encode_json(tiny_model_dir):
    result = invoke("encode", "--model", f"hf:{tiny_model_dir}", "--distance", "euclidean", "--format", "json",
                    "one text", "another text")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["distance"] == "euclidean" and report["dim"] == 32
    assert report["matrix"][0][0] < 1e-3 and report["matrix"][0][1] > 0


def test_bad_input_is_one_line_error_and_nonzero_exit(tmp_path):
    result = invoke("encode", "--model", str(tmp_path), "text")
    assert result.exit_code == 1
    assert "neither a ragcun checkpoint" in result.output and "Traceback" not in result.output
    result = invoke("encode", "--model", "nonexistent-encoder", "text")
    assert result.exit_code == 1 and "ragcun list encoders" in result.output


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_and_list_do_not_import_torch():
    for argv in (["--help"], ["list"], ["list", "--format", "json"], ["plugins"]):
        code = (f"import sys; sys.argv = ['ragcun'] + {argv!r}\n"
                "from ragcun.cli import main\n"
                "try:\n    main()\nexcept SystemExit:\n    pass")
        modules = _modules_after(code)
        assert "torch" not in modules, argv
        assert "transformers" not in modules, argv


def test_settings_that_would_be_ignored_are_errors(tiny_model_dir):
    result = invoke("encode", "--model", f"hf:{tiny_model_dir}", "--set", "head.gaussian.out_dim=3", "x")
    assert result.exit_code == 1 and "does not use head 'gaussian'" in result.output
    result = invoke("encode", "--model", f"hf:{tiny_model_dir}", "--set", "head.gaussian.outdim=3", "x")
    assert result.exit_code == 1 and "did you mean head.gaussian.out_dim" in result.output


def test_progress_in_a_log_prints_plain_lines_every_few_seconds(monkeypatch, capsys):
    from ragcun import console

    monkeypatch.setenv(console.PROGRESS_EVERY_ENV, "0")
    with console.progress_tasks(True) as start:  # stderr is captured, so not a terminal: plain lines
        advance = start("corpus", 4)
        for _ in range(4):
            advance(1)
    err = capsys.readouterr().err
    assert "corpus: 1/4 (25%)" in err and "corpus: 4/4 (100%)" in err
    with console.progress_tasks(False) as start:
        start("silent", 2)(2)
    assert capsys.readouterr().err == ""
