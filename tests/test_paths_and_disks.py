"""Issue 28, classes 2, 6 and 7: an export never deletes what it did not write; the files and paths a run reads
stay inside it (a model folder names only its own files, a checksum is required, no symbolic link is written
through, no plugin replaces a command); a full disk or a read-only folder is one line naming the path and the
cause, leaves no partial file and keeps what was already safe (fault injection: ENOSPC at the write)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import click
import pytest
from _training_helpers import tiny_config, write_pairs
from click.testing import CliRunner

import ragcun
from ragcun import files
from ragcun.training import checkpoint as ckpt
from ragcun.training.loop import train

pytestmark = pytest.mark.usefixtures("single_thread")


def invoke(*args):
    from ragcun.cli.root import build_cli

    result = CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24)


@pytest.fixture()
def saved(tiny_model, tmp_path):
    return tiny_model.save_pretrained(tmp_path / "model")


def edit(folder, change) -> None:
    config = json.loads((folder / "ragcun.json").read_text())
    change(config)
    (folder / "ragcun.json").write_text(json.dumps(config))


def tiny_cli(model_dir, pairs, out, *extra):
    return ["train", "--encoder", f"hf:{model_dir}", "--set", "head.gaussian.out_dim=16", "--set",
            "loss.isotropy.num_slices=16", "--train-data", pairs, "--output-dir", out, "--batch-size", "4",
            "--no-progress", "--lr", "1e-3", "--log-every", "1", *extra]


def leftovers(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".old" in p.name)


# == 6: a model folder names only its own files; a checksum is required ========================================
@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/elsewhere/model.safetensors", "link.safetensors"])
def test_a_model_folder_cannot_name_weights_outside_itself(saved, tmp_path, name):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(saved / "model.safetensors", outside)
    (saved / "link.safetensors").symlink_to(outside)  # inside by name, outside in fact
    edit(saved, lambda c: c["weights"].update(file=name))
    with pytest.raises(ValueError, match="may only name files inside itself"):
        ragcun.load(saved)
    assert "may only name files inside itself" in ckpt.verify_model_folder(saved)


@pytest.mark.parametrize("path", ["..", "/tmp", "encoder/../.."])
def test_a_model_folder_cannot_name_an_encoder_outside_itself(saved, path):
    edit(saved, lambda c: c["encoder"]["config"].update(path=path))
    with pytest.raises(ValueError, match="encoder.config.path.*inside itself"):
        ragcun.load(saved)


def test_a_missing_checksum_is_an_error_not_a_skipped_check(saved):
    edit(saved, lambda c: c["weights"].pop("sha256"))
    with pytest.raises(ValueError, match="has no checksum for model.safetensors") as refused:
        ragcun.load(saved)
    assert ckpt.verify_model_folder(saved) == str(refused.value)  # one verifier, one message


def test_resume_passes_over_a_checkpoint_without_its_checksum(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2, keep_checkpoints=3), stop_after=4)
    edit(ckpt.latest_checkpoint(run).folder / "model", lambda c: c["weights"].pop("sha256"))
    assert ckpt.latest_good_checkpoint(run).step == 2


# == 6: no symbolic link is written through =====================================================================
@pytest.mark.parametrize("name", ["metrics.jsonl", "train_config.json", "checkpoints", "encoder", "ragcun.json"])
def test_a_symlink_in_a_new_output_dir_is_refused_not_written_through(tiny_model_dir, pairs, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    if name in ("checkpoints", "encoder"):
        victim.mkdir()
        (victim / "precious.txt").write_text("keep me")
    else:
        victim.write_text("keep me")
    (run / name).symlink_to(victim)
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "2", "--save-every", "1"))
    assert code == 1 and f"{run / name} is a symbolic link" in output and "Traceback" not in output, output
    assert (victim / "precious.txt" if victim.is_dir() else victim).read_text() == "keep me"
    assert not victim.is_dir() or os.listdir(victim) == ["precious.txt"]


def test_a_symlink_inside_a_run_subfolder_is_refused(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "checkpoints" / "step-00000001").symlink_to(tmp_path)
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "1"))
    assert code == 1 and "is a symbolic link" in output and victim.read_text() == "keep me"


def test_the_atomic_writer_and_the_metrics_log_never_follow_a_link(tmp_path):
    from ragcun.training.logs import MetricsLog

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out.json").symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        files.write_text_atomic(tmp_path / "out.json", "{}")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        MetricsLog(tmp_path, True, None).write({"step": 1})
    assert victim.read_text() == "keep me" and (tmp_path / "out.json").is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_the_atomic_writer_gives_files_the_umasks_permissions_not_mkstemps(tmp_path, umask):
    old = os.umask(umask)
    try:
        with files.atomic_path(tmp_path / "scored.jsonl") as tmp:
            tmp.write_text("{}\n")
        files.write_text_atomic(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    for name in ("scored.jsonl", "report.json"):
        assert ((tmp_path / name).stat().st_mode & 0o777) == 0o666 & ~umask, name


# == 6: a plugin cannot replace a command =========================================================================
class _Replaces:
    @staticmethod
    @ragcun.hookimpl(tryfirst=True)  # even registered before the built-ins
    def register_commands(cli):
        @cli.command("my-extra")
        def extra():
            pass

        @cli.command("train")
        def train_():
            click.echo("not ragcun's train")


class _ReplacesASubcommand:
    @staticmethod
    @ragcun.hookimpl
    def register_commands(cli):
        @cli.commands["eval"].command("beir")
        def beir():
            pass


class _Adds:
    @staticmethod
    @ragcun.hookimpl
    def register_commands(cli):
        @cli.command("my-report")
        def report():
            pass


@pytest.mark.parametrize("plugin, name", [(_Replaces, "train"), (_ReplacesASubcommand, "eval beir")])
def test_a_plugin_that_replaces_a_command_is_refused_and_reported(plugin, name):
    from ragcun.plugins import PluginHost

    host = PluginHost(load_entry_points=False, extra_plugins=[("evil", plugin), ("fine", _Adds)])
    cli = click.Group("ragcun")
    host.add_commands(cli)
    records = {r.name: r for r in host.plugin_records()}
    assert f"the command '{name}' exists already (from ragcun)" in records["evil"].error
    assert records["evil"].as_dict()["status"] == "error"  # what `ragcun plugins` shows
    assert records["fine"].error is None and "my-report" in cli.commands
    assert cli.commands["train"].callback.__module__ == "ragcun.cli.train_cmd"
    assert cli.commands["eval"].commands["beir"].callback.__module__ == "ragcun.cli.eval_cmd"
    assert "my-extra" not in cli.commands  # a refused plugin contributes nothing


# == 2: an export never deletes what it did not write ============================================================
@pytest.fixture()
def run(tiny_model_dir, pairs, tmp_path):
    folder = tmp_path / "runs" / "a"
    train(tiny_config(tiny_model_dir, folder, pairs, steps=2, save_every=1))
    return folder


def test_export_overwrite_never_replaces_a_runs_checkpoints(run):
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, output = invoke("export", run, run / "checkpoints", "--overwrite")
    assert code == 1 and f"lies inside a training run ({run})" in output and "Traceback" not in output, output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert ckpt.latest_good_checkpoint(run) is not None


def test_export_overwrite_never_replaces_a_folder_of_runs(run, saved):
    runs = run.parent
    code, output = invoke("export", saved, runs, "--overwrite")  # no export wrote it
    assert code == 1 and "no export wrote it" in output, output
    (runs / "ragcun_export.json").write_text("{}")  # even one that looks like an earlier export
    code, output = invoke("export", saved, runs, "--overwrite")
    assert code == 1 and f"holds a training run ({run})" in output, output
    assert (run / "ragcun.json").is_file() and (run / "train_config.json").is_file()


def test_export_overwrite_never_replaces_an_export_inside_a_run(run):
    assert invoke("export", run, run / "st")[0] == 0  # a new folder inside the run is fine
    code, output = invoke("export", run, run / "st", "--overwrite")
    assert code == 1 and f"lies inside a training run ({run})" in output, output
    assert (run / "st" / "modules.json").is_file()


def test_export_overwrite_never_replaces_an_ablation_folder(saved, tmp_path):
    results = tmp_path / "results"
    (results / "runs" / "ft" / "seed-1").mkdir(parents=True)
    (results / "runs" / "ft" / "seed-1" / "result.json").write_text("{}")
    (results / "ragcun_export.json").write_text("{}")
    code, output = invoke("export", saved, results, "--overwrite")
    assert code == 1 and "holds an ablation folder" in output, output
    assert (results / "runs" / "ft" / "seed-1" / "result.json").is_file()


# == 7: full disks and read-only folders ==========================================================================
def _full_disk_after(monkeypatch, allowed: int = 1 << 10):
    """Every write through ragcun.files._write fails with ENOSPC once ``allowed`` more bytes have gone."""
    state = {"left": allowed, "on": False}
    real = files._write

    def write(fh, data):
        if not state["on"]:
            return real(fh, data)
        if len(data) > state["left"]:
            real(fh, data[:state["left"]])
            state["left"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        state["left"] -= len(data)
        return real(fh, data)

    monkeypatch.setattr(files, "_write", write)
    return state


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(tiny_model_dir, pairs, tmp_path,
                                                                             monkeypatch):
    state = _full_disk_after(monkeypatch)
    real_save = ckpt.torch_save
    saves = []

    def save(obj, path):  # the disk fills up during the second checkpoint's training state
        saves.append(path)
        state["on"] = len(saves) == 2
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "torch_save", save)
    run = tmp_path / "run"
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "6", "--save-every", "2"))
    assert code == 1 and "Traceback" not in output and "inline_container" not in output, output
    assert f"cannot write the checkpoint {run / 'checkpoints' / 'step-00000004'}: no space left on the device " \
           "(ENOSPC)" in output
    assert "step-00000002 (step 2) is intact" in output and "--resume" in output
    assert [c.step for c in ckpt.list_checkpoints(run)] == [2] and ckpt.latest_good_checkpoint(run).step == 2
    assert leftovers(run) == [] and not (run / ".ragcun.lock").exists()


def test_a_full_disk_during_the_final_model_keeps_the_last_checkpoint(tiny_model_dir, pairs, tmp_path,
                                                                      monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    run = tmp_path / "run"
    real = safetensors.torch.save_model

    def save_model(model, filename, *args, **kwargs):
        if os.path.dirname(filename) == str(run):  # the final model, not a checkpoint's
            with open(filename, "wb") as fh:
                fh.write(b"half a model")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(model, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_model", save_model)
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "2", "--save-every", "1"))
    assert code == 1 and "Traceback" not in output, output
    assert f"cannot write {run / 'model.safetensors'}: no space left on the device (ENOSPC)" in output
    assert "the final model was not written" in output and "step-00000002 (step 2), is intact" in output
    assert not (run / "model.safetensors").exists() and leftovers(run) == []
    monkeypatch.setattr(safetensors.torch, "save_model", real)
    code, output = invoke("train", "--output-dir", run, "--resume")  # space freed: --resume writes it
    assert code == 0, output
    assert ckpt.verify_model_folder(run) is None


def test_a_full_disk_during_an_export_leaves_the_earlier_export(saved, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    out = tmp_path / "exported"
    assert invoke("export", saved, out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, output = invoke("export", saved, out, "--overwrite")
    assert code == 1 and "Traceback" not in output, output
    assert f"cannot write OUT {out}: no space left on the device (ENOSPC); nothing was written" in output
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def _canned_report(*args, **kwargs):
    return {"model": "m", "settings": {"split": "test", "distance": "cosine", "dtype": "float32", "k_values": [10],
                                       "data_dir": "d"},
            "datasets": {"scifact": {"NDCG@10": 0.6543}}, "timings": {}}


def test_eval_output_that_cannot_be_written_fails_before_the_evaluation(tmp_path, monkeypatch):
    from ragcun.evaluation import beir_eval

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran although its output cannot be written")

    monkeypatch.setattr(beir_eval, "evaluate_beir", never)
    real = files.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    code, output = invoke("eval", "beir", "--model", "all-minilm-l6-v2", "--output", tmp_path / "ro" / "r.json")
    assert code == 1 and "Traceback" not in output, output
    assert f"cannot write --output {tmp_path / 'ro' / 'r.json'}: read-only file system (EROFS)" in output
    assert not (tmp_path / "ro").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
def test_eval_output_in_a_read_only_folder_fails_before_the_evaluation(tmp_path, monkeypatch):
    from ragcun.evaluation import beir_eval

    monkeypatch.setattr(beir_eval, "evaluate_beir", lambda *a, **k: pytest.fail("the evaluation ran"))
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not make this folder read-only here")
        code, output = invoke("eval", "beir", "--output", folder / "r.json")
        assert code == 1 and "permission denied (EACCES)" in output and "Traceback" not in output, output
    finally:
        folder.chmod(0o755)


def test_a_full_disk_writing_the_eval_report_shows_the_results_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from ragcun.evaluation import beir_eval

    monkeypatch.setattr(beir_eval, "evaluate_beir", _canned_report)
    _full_disk_after(monkeypatch, allowed=20)["on"] = True
    code, output = invoke("eval", "beir", "--output", tmp_path / "r.json")
    assert code == 1 and "Traceback" not in output, output
    assert "0.6543" in output  # the evaluation is not lost: its results are shown
    assert f"cannot write {tmp_path / 'r.json'}: no space left on the device (ENOSPC)" in output
    assert os.listdir(tmp_path) == []  # neither the report nor a partial or temporary file


def test_a_read_only_output_dir_fails_before_training(tiny_model_dir, pairs, tmp_path, monkeypatch):
    from pathlib import Path

    from ragcun.training import state

    monkeypatch.setattr(state, "build_training_model", lambda *a: pytest.fail("the model was built"))
    real = Path.mkdir
    target = tmp_path / "ro" / "run"

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, output = invoke(*tiny_cli(tiny_model_dir, pairs, target, "--steps", "1"))
    assert code == 1 and f"cannot write --output-dir {target}: read-only file system (EROFS)" in output, output
    assert "Traceback" not in output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_dir_fails_before_training_chmod(tiny_model_dir, pairs, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not make this folder read-only here")
        code, output = invoke(*tiny_cli(tiny_model_dir, pairs, folder / "run", "--steps", "1"))
        assert code == 1 and "permission denied (EACCES)" in output and "Traceback" not in output, output
    finally:
        folder.chmod(0o755)
