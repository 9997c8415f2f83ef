"""Issue 14: nothing lost, nothing misread. Fault injection on a tiny model: a diverging run never leaves a
non-finite checkpoint or model, a resumed run verifies what it resumes from, metrics survive a torn write, and a
resumed run may change its optimizer settings (recorded in the run's config history)."""

from __future__ import annotations

import json

import pytest
import torch
from _training_helpers import tiny_config, write_pairs
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.training import checkpoint as ckpt
from ragcun.training.config import TrainConfig
from ragcun.training.loop import TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24)


class _Result:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.output = " ".join(result.output.split())  # rich wraps long lines


def invoke(*args):
    return _Result(CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False))


def all_finite(folder) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(folder / "model.safetensors")).values())


def loss_steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


# -- 1: a checkpoint or final model is written only when every parameter is finite ---------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_tensors_names_exactly_the_broken_ones(dtype):
    """The sum screens, the element-wise test decides: a sum that overflows (huge finite weights) or an
    infinity next to a minus infinity (a NaN sum) are told apart correctly."""
    big = torch.finfo(dtype).max
    tensors = {"ok": torch.ones(3, 4), "nan": torch.tensor([1.0, float("nan")]), "inf": torch.tensor([float("inf")]),
               "-inf": torch.tensor([2.0, -float("inf")]), "both": torch.tensor([float("inf"), -float("inf")]),
               "overflowing sum": torch.tensor([big, big, big]), "ints": torch.tensor([1, 2])}
    named = [(n, t if n == "ints" else t.to(dtype)) for n, t in tensors.items()]
    assert ckpt.nonfinite_tensors(named) == ["nan", "inf", "-inf", "both"]
    assert ckpt.nonfinite_tensors([("ok", torch.zeros(2, dtype=dtype))]) == []
    assert ckpt.nonfinite_tensors([]) == []


def test_a_huge_lr_never_leaves_a_nonfinite_checkpoint(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "huge"
    with pytest.raises(TrainingDiverged, match=r"non-finite.*step 1.*no checkpoint had been written"):
        train(tiny_config(tiny_model_dir, run, pairs, lr=1e39, steps=4, save_every=1))
    assert ckpt.list_checkpoints(run) == []  # step 1's weights were non-finite: not saved
    assert not (run / "ragcun.json").exists()


def test_a_huge_lr_on_a_one_step_run_saves_no_final_model(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "one"
    result = invoke("train", "--encoder", f"hf:{tiny_model_dir}", "--set", "head.gaussian.out_dim=16",
                    "--set", "loss.isotropy.num_slices=16", "--train-data", pairs, "--output-dir", run,
                    "--batch-size", "4", "--no-progress", "--steps", "1", "--lr", "1e39")
    assert result.exit_code == 1 and "non-finite" in result.output and "Traceback" not in result.output
    assert not (run / "model.safetensors").exists() and not (run / "ragcun.json").exists()


def test_the_last_good_checkpoint_named_after_a_divergence_is_verified(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2, keep_checkpoints=3), stop_after=4)
    newest = ckpt.latest_checkpoint(run)
    weights = newest.folder / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a bit flip in the newest checkpoint
    weights.write_bytes(bytes(data))
    good = ckpt.latest_good_checkpoint(run)
    assert good.step == 2
    assert ckpt.verify_checkpoint(newest) is not None and "checksum" in ckpt.verify_checkpoint(newest)


# -- 2: resume with a changed learning rate (optimizer-side settings) -----------------------------------------
def test_resume_with_a_lower_lr_applies_it_and_records_it(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2, lr=1e-3, schedule="constant"),
          stop_after=2)
    result = invoke("train", "--output-dir", run, "--resume", "--lr", "1e-5", "--weight-decay", "0.1")
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1]["lr"] == pytest.approx(1e-3) and records[2]["lr"] == pytest.approx(1e-5)
    assert TrainConfig.load(run).lr == 1e-5
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(run))
    assert all(g["lr"] == pytest.approx(1e-5) and g["initial_lr"] == pytest.approx(1e-5)
               for g in state["optimizer"]["param_groups"])
    assert state["scheduler"]["base_lrs"] == pytest.approx([1e-5] * len(state["scheduler"]["base_lrs"]))
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 0.1}
    history = json.loads((run / "config_history.json").read_text())
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["step"] == 2
    assert history[1]["changes"]["lr"] == {"from": 1e-3, "to": 1e-5}
    assert history[1]["changes"]["weight_decay"] == {"from": 0.01, "to": 0.1}


def test_resume_still_refuses_a_change_of_what_the_run_computes(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2), stop_after=2)
    with pytest.raises(ValueError, match="settings differ.*batch_size"):
        train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2, batch_size=8), resume=True)


# -- 3: resume verifies its checkpoint and falls back to the newest good one ---------------------------------
@pytest.mark.parametrize("damage", ["bitflip", "truncate", "trainer"])
def test_resume_from_a_damaged_newest_checkpoint_falls_back(tiny_model_dir, tmp_path, pairs, damage):
    run = tmp_path / "run"
    config = tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2, keep_checkpoints=3)
    train(config, stop_after=4)
    newest = ckpt.latest_checkpoint(run)
    assert newest.step == 4
    target = newest.folder / ("trainer.pt" if damage == "trainer" else "model/model.safetensors")
    data = target.read_bytes()
    if damage == "bitflip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(flipped))
    else:
        target.write_bytes(data[:len(data) // 3])
    result = invoke("train", "--output-dir", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "step-00000004" in result.output and "step-00000002" in result.output  # says so, and where it went
    assert loss_steps(run) == [1, 2, 3, 4, 5, 6]
    assert all_finite(run)


def test_resume_with_no_good_checkpoint_stops_naming_them(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2, keep_checkpoints=2), stop_after=4)
    for c in ckpt.list_checkpoints(run):
        weights = c.folder / "model" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    result = invoke("train", "--output-dir", run, "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("step-00000002" in result.output and "step-00000004" in result.output
            and "no good checkpoint" in result.output)


# -- 4: metrics.jsonl survives resume start-up and a torn last line --------------------------------------------
def test_metrics_rewrite_on_resume_is_atomic(tiny_model_dir, tmp_path, pairs, monkeypatch):
    from ragcun import files
    from ragcun.training import logs

    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2), stop_after=3)
    before = (run / "metrics.jsonl").read_text()
    real_replace = files.os.replace  # the rewrite goes through ragcun.files' atomic write

    def crash(*args, **kwargs):  # a kill right while the metrics are being rewritten
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        logs.MetricsLog(run, True, 2)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert (run / "metrics.jsonl").read_text() == before  # nothing lost
    assert not list(run.glob(".metrics.jsonl*"))


def test_a_torn_last_metrics_line_is_tolerated(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2), stop_after=3)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "loss": 0.12')  # killed mid-write
    train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2), resume=True)
    assert loss_steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_corrupt_metrics_line_names_the_file_and_line(tiny_model_dir, tmp_path, pairs):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2), stop_after=3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2"):
        train(tiny_config(tiny_model_dir, run, pairs, steps=6, save_every=2), resume=True)


def tiny_cli(model_dir, pairs, out, *extra):
    return ["train", "--encoder", f"hf:{model_dir}", "--set", "head.gaussian.out_dim=16",
            "--set", "loss.isotropy.num_slices=16", "--train-data", pairs, "--output-dir", out,
            "--batch-size", "4", "--no-progress", "--lr", "1e-3", "--log-every", "1", *extra]


# -- 9: tracebacks become messages --------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("empty-jsonl", "holds no training examples"),
    ("output-dir-is-a-file", "is a file, not a folder"),
    ("device-gpu0", "--device must be cpu, cuda, cuda:N"),
])
def test_bad_input_gives_a_message_not_a_traceback(tiny_model_dir, pairs, tmp_path, case, message):
    out, extra = tmp_path / "out", ["--steps", "1"]
    if case == "empty-jsonl":
        pairs = tmp_path / "empty.jsonl"
        pairs.write_text("\n")
    elif case == "output-dir-is-a-file":
        out.write_text("not a folder")
    else:
        extra += ["--device", "gpu0"]
    result = invoke(*tiny_cli(tiny_model_dir, pairs, out, *extra))
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


# -- 11: no dead ends ------------------------------------------------------------------------------------------
def test_a_run_that_failed_before_its_first_checkpoint_can_start_over(tiny_model_dir, pairs, tmp_path):
    from _training_helpers import NaNAtStep

    from ragcun.losses.composite import build_loss

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=100),
              loss_fn=NaNAtStep(build_loss("contrastive+isotropy"), step=2))
    assert (run / "train_config.json").exists() and ckpt.list_checkpoints(run) == []
    result = invoke("train", "--output-dir", run, "--resume")
    assert result.exit_code == 1 and "stopped before its first checkpoint" in result.output
    result = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "2"))  # a fresh start over it works
    assert result.exit_code == 0, result.output
    assert loss_steps(run) == [1, 2]  # the failed run's records are gone


def test_resume_accepts_the_same_folder_spelt_differently(tiny_model_dir, pairs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*tiny_cli(tiny_model_dir, pairs, "runs/x", "--steps", "4", "--save-every", "2"))
    assert result.exit_code == 0, result.output
    for spelling in ("./runs/x", str(tmp_path / "runs" / "x") + "/", "runs/x/"):
        result = invoke("train", "--output-dir", spelling, "--resume", "--steps", "5")
        assert result.exit_code == 0, (spelling, result.output)


def test_a_second_ctrl_c_says_what_is_true(tiny_model_dir, pairs, tmp_path, monkeypatch):
    from ragcun.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train", interrupted)
    result = invoke(*tiny_cli(tiny_model_dir, pairs, tmp_path / "none", "--steps", "2"))
    assert result.exit_code == 130 and "before any checkpoint was written" in result.output
    assert "is intact" not in result.output


def test_leftover_tmp_files_are_cleaned_up_on_the_next_start(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2), stop_after=2)
    (run / ".model.safetensors.abc123.tmp").write_bytes(b"half a model")  # a kill during the final save
    (run / "checkpoints" / ".tmp-step-00000004-xyz").mkdir()
    train(tiny_config(tiny_model_dir, run, pairs, steps=4, save_every=2), resume=True)
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".tmp-*"))


# -- 13: resume compares resolved paths; a moved run resumes ------------------------------------------------
def test_a_moved_run_resumes_and_data_dir_is_compared_resolved(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    relative_data = os.path.relpath(data_dir, tmp_path)
    args = ["train", "--encoder", f"hf:{tiny_model_dir}", "--set", "head.gaussian.out_dim=16",
            "--set", "loss.isotropy.num_slices=16", "--train-data", "beir:scifact:train", "--batch-size", "4",
            "--no-progress", "--steps", "4", "--save-every", "2", "--log-every", "1"]
    result = invoke(*args, "--output-dir", "runs/a", "--data-dir", str(data_dir), "--steps", "2")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("RAGCUN_DATA", relative_data)  # the same folder, spelt relative, through the environment
    result = invoke("train", "--output-dir", "./runs/a", "--resume", "--steps", "3")
    assert result.exit_code == 0, result.output
    shutil.move(tmp_path / "runs" / "a", tmp_path / "moved")
    result = invoke("train", "--output-dir", "moved", "--resume", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert loss_steps(tmp_path / "moved") == [1, 2, 3, 4]
    assert TrainConfig.load(tmp_path / "moved").output_dir == "moved"
    history = json.loads((tmp_path / "moved" / "config_history.json").read_text())
    assert history[-1]["changes"]["output_dir"] == {"from": "./runs/a", "to": "moved"}


def test_differences_compare_paths_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = TrainConfig(train_data="jsonl:data/x.jsonl", data_dir="beir", encoder="hf:models/m", steps=1)
    b = TrainConfig(train_data=f"jsonl:{tmp_path}/data/./x.jsonl", data_dir=f"{tmp_path}/beir/",
                    encoder=f"hf:{tmp_path}/models/m", steps=1, output_dir="elsewhere")
    assert a.differences(b) == {}
    assert set(a.differences(TrainConfig(train_data="jsonl:data/y.jsonl", data_dir="beir", encoder="hf:models/m",
                                         steps=1))) == {"train_data"}


# -- 14: resuming a finished run changes nothing ----------------------------------------------------------
def test_resume_on_a_finished_run_says_so_and_changes_nothing(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    result = invoke(*tiny_cli(tiny_model_dir, pairs, run, "--steps", "2", "--save-every", "1"))
    assert result.exit_code == 0, result.output
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    result = invoke("train", "--output-dir", run, "--resume")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "is already finished (2 of 2 steps" in said and "pairs/s" not in said
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_resume_after_a_kill_during_the_final_save_writes_the_model(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, run, pairs, steps=2, save_every=1))
    (run / "model.safetensors").write_bytes(b"torn")  # the final model never completed
    result = invoke("train", "--output-dir", run, "--resume")
    assert result.exit_code == 0 and "already finished" not in result.output, result.output
    from ragcun.model import load

    load(run)


# -- 15: output files get the user's umask -----------------------------------------------------------------
def test_saved_models_and_checkpoints_follow_the_umask(tiny_model_dir, pairs, tmp_path):
    import os
    import stat

    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        train(tiny_config(tiny_model_dir, run, pairs, steps=2, save_every=1))
    finally:
        os.umask(old)
    checkpoint = ckpt.latest_checkpoint(run).folder
    for path in [run / "model.safetensors", run / "ragcun.json", checkpoint, checkpoint / "trainer.pt",
                 checkpoint / "model" / "model.safetensors"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_a_loss_that_raises_is_named_with_its_package(tiny_model_dir, pairs, tmp_path, monkeypatch):
    from ragcun.losses.isotropy import IsotropyLoss

    def broken(self, inputs):
        raise RuntimeError("shape mismatch in my plugin")

    monkeypatch.setattr(IsotropyLoss, "forward", broken)
    result = invoke(*tiny_cli(tiny_model_dir, pairs, tmp_path / "run", "--steps", "1"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("loss 'isotropy' (from the package 'ragcun') raised RuntimeError: shape mismatch in my plugin"
            in result.output)


def test_loss_failures_are_named_without_touching_the_loss():
    """The composite names a failing term through its own ``on_failure`` (issue 26, section 5): no term's
    ``forward`` is replaced, and outside training the exception passes unchanged."""
    import torch
    from torch import nn

    from ragcun.embedding import Embedding
    from ragcun.losses.base import LossInputs
    from ragcun.losses.composite import CompositeLoss, build_loss
    from ragcun.training.faults import LossFailed
    from ragcun.training.setup import with_named_failures

    class Broken(nn.Module):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def forward(self, inputs):
            raise self.error

    contrastive = build_loss("contrastive").losses["contrastive"]
    loss = CompositeLoss([("contrastive", 1.0, contrastive), ("broken", 0.5, Broken(RuntimeError("boom")))])
    assert [(name, weight) for name, weight, _ in loss.terms()] == [("contrastive", 1.0), ("broken", 0.5)]
    inputs = LossInputs(Embedding(torch.randn(4, 8)), Embedding(torch.randn(4, 8)), step=0)
    with pytest.raises(LossFailed, match=r"loss 'broken' \(from the package 'unknown'\) raised RuntimeError: boom"):
        with_named_failures(loss)(inputs)
    assert all("forward" not in vars(module) for _, _, module in loss.terms())
    with pytest.raises(RuntimeError, match="boom"):
        loss(inputs)
    refusing = CompositeLoss([("broken", 1.0, Broken(ValueError("bad data")))])
    with pytest.raises(ValueError, match="bad data") as info:
        with_named_failures(refusing)(inputs)
    assert not isinstance(info.value, LossFailed)
    single = Broken(KeyError("k"))
    with pytest.raises(LossFailed, match="loss 'Broken'.*raised KeyError"):
        with_named_failures(single)(inputs)
