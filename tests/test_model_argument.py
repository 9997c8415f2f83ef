"""What ``--model`` (and ``ragcun export``'s RUN_OR_MODEL) makes of a string, and what it says when it is wrong
(issue 29, item 2): a string that looks like a path is a path, and an error says what it is and what to pass;
an unknown registry name is echoed exactly as typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import ragcun
from ragcun.cli.root import build_cli
from ragcun.resolve import classify, looks_like_path, resolve_model


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _checkpoint(tiny_model_dir: Path, folder: Path) -> Path:
    return ragcun.build_model(f"hf:{tiny_model_dir}", "identity", "cosine").save_pretrained(folder)


def _unfinished_run(tiny_model_dir: Path, run: Path, steps=(2, 4)) -> Path:
    """A run interrupted after its checkpoints: no ragcun.json of its own yet."""
    for step in steps:
        folder = run / "checkpoints" / f"step-{step:08d}"
        _checkpoint(tiny_model_dir, folder / "model")
        (folder / "trainer.pt").write_bytes(b"")
    (run / "train_config.json").write_text("{}")
    return run


def test_what_looks_like_a_path():
    for text in ("runs/x", "./x", "../x", "~/x", ".x", "/abs/x"):
        assert looks_like_path(text), text
    for text in ("all-minilm-l6-v2", "runs_nf-ddp", "hf:/models/x", "hf:./models/x", "minilm"):
        assert not looks_like_path(text), text


@pytest.mark.parametrize("text", ["runs/doesnotexist", "./doesnotexist", "~/ragcun-no-such-folder-29"])
def test_a_missing_path_says_it_does_not_exist(workdir, text):
    with pytest.raises(ValueError) as info:
        classify(text)
    message = str(info.value)
    assert f"--model {text}: no such folder" in message and "cannot parse" not in message, message


def test_a_near_miss_gets_a_suggestion(workdir):
    (workdir / "runs" / "nf-ddp").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"did you mean runs/nf-ddp\?"):
        classify("runs/nf-dp")
    with pytest.raises(ValueError) as info:  # no separator: a registry name, echoed as typed
        resolve_model("runs_nf-ddp")
    message = str(info.value)
    assert "unknown encoder 'runs_nf-ddp'" in message and "runs-nf-ddp" not in message, message
    assert "no file or folder named 'runs_nf-ddp'" in message and "did you mean runs/nf-ddp?" in message


@pytest.mark.parametrize("typed", ["Mini_LM_X", "ALL_minilm", "runs_nf-ddp"])
def test_unknown_names_are_echoed_exactly_as_typed(workdir, typed):
    with pytest.raises(ValueError) as info:
        resolve_model(typed)
    assert f"unknown encoder {typed!r}" in str(info.value), str(info.value)
    with pytest.raises(ValueError) as info:
        resolve_model(f"{typed}+gaussian")
    assert f"unknown encoder {typed!r}" in str(info.value), str(info.value)


def test_an_unfinished_run_points_at_its_latest_checkpoint(workdir, tiny_model_dir):
    _unfinished_run(tiny_model_dir, workdir / "runs" / "nf")
    with pytest.raises(ValueError) as info:
        classify("runs/nf")
    message = str(info.value)
    assert "this run has no final model yet" in message, message
    assert "its latest checkpoint is runs/nf/checkpoints/step-00000004: pass that" in message, message
    # ... and passing that works: a checkpoint's step folder stands for the model saved in it
    assert classify("runs/nf/checkpoints/step-00000004") == (
        "checkpoint", "runs/nf/checkpoints/step-00000004/model", None)
    model = resolve_model("runs/nf/checkpoints/step-00000004")
    assert model.encode(["a query"]).shape[0] > 0


def test_a_run_without_any_checkpoint(workdir):
    (workdir / "runs" / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no final model yet .* and no complete checkpoint either.*--resume"):
        classify("runs/fresh")


def test_files_and_other_folders_say_what_they_are(workdir, tiny_model_dir):
    _checkpoint(tiny_model_dir, workdir / "model")
    assert classify("model/ragcun.json") == ("checkpoint", "model", None)  # a file of a model: its folder
    (workdir / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"--model notes.txt: a file, not a model folder"):
        classify("notes.txt")
    (workdir / "empty").mkdir()
    with pytest.raises(ValueError, match=r"neither a ragcun checkpoint .* nor a transformers model"):
        classify("empty")
    assert classify(str(tiny_model_dir)) == ("base", f"hf:{tiny_model_dir}", None)
    assert classify(f"{tiny_model_dir}+gaussian") == ("fresh-head", f"hf:{tiny_model_dir}", "gaussian")
    with pytest.raises(ValueError, match=r"the encoder: no such folder"):
        classify("runs/nothing+gaussian")


def test_export_uses_the_same_classifier(workdir, tiny_model_dir):
    from ragcun.resolve import resolve_model_and_folder

    _unfinished_run(tiny_model_dir, workdir / "runs" / "nf")
    with pytest.raises(ValueError, match=r"RUN_OR_MODEL runs/nf: this run has no final model yet.*step-00000004"):
        resolve_model_and_folder("runs/nf", label="RUN_OR_MODEL")
    model, source = resolve_model_and_folder("runs/nf/checkpoints/step-00000004", label="RUN_OR_MODEL")
    assert source == Path("runs/nf/checkpoints/step-00000004/model")
    with pytest.raises(ValueError, match=r"RUN_OR_MODEL runs/none: no such folder"):
        resolve_model_and_folder("runs/none", label="RUN_OR_MODEL")


def test_the_command_line_says_it(workdir, data_dir, tiny_model_dir):
    _unfinished_run(tiny_model_dir, workdir / "runs" / "nf")
    runner = CliRunner()
    for argv, expected in [
        (["--model", "runs/doesnotexist"], "--model runs/doesnotexist: no such folder"),
        (["--model", "runs_nf-ddp"], "unknown encoder 'runs_nf-ddp'"),
        (["--model", "runs/nf"], "its latest checkpoint is runs/nf/checkpoints/step-00000004: pass that"),
    ]:
        result = runner.invoke(build_cli(), ["eval", "beir", *argv, "--datasets", "nq-utd", "--data-dir",
                                             str(data_dir)])
        assert result.exit_code != 0 and expected in result.output, result.output
        assert "cannot parse" not in result.output and "Traceback" not in result.output
