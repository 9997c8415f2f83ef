"""The training loop on a tiny model: losses fall and stay finite, checkpoints, NaN stops cleanly, Ctrl-C saves."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _training_helpers import NaNAtStep, tiny_config, write_pairs

from ragcun.training import checkpoint as ckpt
from ragcun.training.config import TrainConfig
from ragcun.training.loop import TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("single_thread")  # one torch thread, restored after the module


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 48)


def test_short_run_losses_fall_and_files_are_written(tiny_model_dir, tmp_path, pairs):
    config = tiny_config(tiny_model_dir, tmp_path / "run", pairs, steps=12, batch_size=8, negatives=1,
                         save_every=4, keep_checkpoints=2)
    result = train(config)
    assert result.step == 12 and len(result.losses) == 12 and result.peak_rss_mb > 0
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert set(result.terms[0]) == {"contrastive", "isotropy"}
    run = tmp_path / "run"
    assert [c.step for c in ckpt.list_checkpoints(run)] == [8, 12]  # keep the last 2
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert TrainConfig.load(run) == config
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert records[0]["step"] == 0 and records[0]["calibration"]["factor"] > 0  # the gaussian head calibrated
    steps = [r for r in records if "loss" in r]
    assert {"lr", "pairs_per_s", "terms", "grad_norm", "peak_rss_mb"} <= set(steps[0])
    # host memory after each phase, then every step: the high-water mark only rises, and the current resident
    # set never exceeds it
    memory = next(r["memory"] for r in records if "memory" in r)
    phases = ["start", "model", "data", "calibration"]  # in the order they run (the log sorts its keys)
    assert sorted(memory) == sorted(phases)
    marks = [memory[p]["peak_rss_mb"] for p in phases] + [r["peak_rss_mb"] for r in steps]
    assert marks == sorted(marks) and marks[0] > 0
    assert all(0 < m["rss_mb"] <= m["peak_rss_mb"] + 1 for m in memory.values())
    final = next(r["final"] for r in records if "final" in r)
    assert final["peak_rss_mb"] >= marks[-1]
    from ragcun.model import load

    model = load(run)  # the finished run is itself a checkpoint
    assert model.encode(["a query"]).shape == (1, 16)
    state = json.loads((run / "checkpoints" / "step-00000012" / "state.json").read_text())
    assert state["step"] == 12 and set(state["data"]) == {"epoch", "position"}


def test_frozen_encoder_trains_only_the_head(tiny_model_dir, tmp_path, pairs):
    from ragcun.model import load

    config = tiny_config(tiny_model_dir, tmp_path / "frozen", pairs, steps=3, freeze_encoder=True, save_every=100)
    train(config)
    trained = load(tmp_path / "frozen")
    from ragcun.model import EmbeddingModel

    fresh = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16}}})
    for (name, a), (_, b) in zip(trained.encoder.state_dict().items(), fresh.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(trained.head.mean.weight, fresh.head.mean.weight)


def test_nan_stops_with_a_clear_message_and_the_last_good_checkpoint_intact(tiny_model_dir, tmp_path, pairs):
    from ragcun.losses.composite import build_loss
    from ragcun.model import load

    config = tiny_config(tiny_model_dir, tmp_path / "nan", pairs, steps=8, save_every=2)
    loss = NaNAtStep(build_loss("contrastive+isotropy"), step=4)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 4.*step-00000002.*--resume"):
        train(config, loss_fn=loss)
    found = ckpt.list_checkpoints(tmp_path / "nan")
    assert [c.step for c in found] == [2]
    load(found[0].folder / "model")  # checksum verified: intact
    assert ckpt.load_trainer_state(found[0])["step"] == 2
    assert not (tmp_path / "nan" / "ragcun.json").exists()  # no final model from a diverged run


def test_existing_run_is_never_overwritten(tiny_model_dir, tmp_path, pairs):
    config = tiny_config(tiny_model_dir, tmp_path / "run", pairs, steps=1)
    train(config)
    with pytest.raises(ValueError, match="already holds a training run; pass --resume"):
        train(config)
    changed = tiny_config(tiny_model_dir, tmp_path / "run", pairs, steps=2, negatives=1)
    with pytest.raises(ValueError, match="settings differ.*negatives"):
        train(changed, resume=True)


@pytest.mark.slow  # a training subprocess, interrupted: ~4.5 s
def test_sigint_saves_and_exits_cleanly(tiny_model_dir, tmp_path, pairs):
    """Ctrl-C: the step finishes, a checkpoint is written, exit code 130, and --resume continues."""
    out = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "ragcun", "train", "--encoder", f"hf:{tiny_model_dir}",
           "--set", "head.gaussian.out_dim=16", "--set", "loss.isotropy.num_slices=32", "--train-data", str(pairs),
           "--output-dir", str(out), "--batch-size", "4", "--steps", "100000", "--save-every", "100000",
           "--log-every", "1", "--lr", "1e-4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.2)
        assert (out / "metrics.jsonl").is_file(), proc.stderr.read() if proc.poll() is not None else "no progress"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted at step" in err
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and latest.step >= 1


def test_learnable_temperature_is_trained_and_checkpointed(tiny_model_dir, tmp_path, pairs):
    import math as _math

    config = tiny_config(tiny_model_dir, tmp_path / "temp", pairs, steps=3, save_every=3, lr=1e-2,
                         settings={"head": {"gaussian": {"out_dim": 16}},
                                   "loss": {"contrastive": {"learnable_temperature": True},
                                            "isotropy": {"num_slices": 16}}})
    train(config)
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "temp"))
    log_scale = state["loss"]["losses.contrastive.log_scale"]
    assert abs(float(log_scale) - _math.log(20.0)) > 1e-4  # it moved from 1/0.05


def test_mined_negatives_grad_accum_and_grad_cache_together(tiny_model_dir, tmp_path, data_dir, monkeypatch):
    """BEIR pairs with BM25 negatives, 2 micro-batches per step, GradCache chunks of 3: runs and logs."""
    pytest.importorskip("bm25s")
    monkeypatch.setenv("RAGCUN_CACHE", str(tmp_path / "cache"))
    config = tiny_config(tiny_model_dir, tmp_path / "mined", "beir:nq-utd:test", data_dir=str(data_dir), steps=2,
                         negatives=2, mine_negatives="bm25", grad_accum=2, grad_cache_chunk=3, qrels_threshold=2)
    result = train(config)
    assert result.step == 2 and all(math.isfinite(x) for x in result.losses)
    assert list((tmp_path / "cache" / "negatives").glob("nq-utd-test-bm25-*.json"))


def test_tensorboard_gets_the_same_scalars_as_the_jsonl(tiny_model_dir, tmp_path, pairs):
    """TensorBoard is optional for users, installed by the test extra: when present the run writes every
    logged number there too, equal to metrics.jsonl."""
    pytest.importorskip("tensorboard", reason="the test extra installs tensorboard; pip install -e '.[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    train(tiny_config(tiny_model_dir, run, pairs, steps=3, save_every=100))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "terms/contrastive", "terms/isotropy", "grad_norm", "final/pairs_per_s"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in records if "loss" in r])
    assert [e.value for e in events.Scalars("terms/isotropy")] == pytest.approx(
        [r["terms"]["isotropy"] for r in records if "loss" in r])


def test_isotropy_scale_warning():
    from ragcun.distances.euclidean import EuclideanDistance
    from ragcun.losses.composite import build_loss
    from ragcun.training.loop import isotropy_scale_warning

    torch.manual_seed(0)
    unit_sphere = torch.nn.functional.normalize(torch.randn(64, 384), dim=1)  # spread ~1/sqrt(384)
    with_isotropy = build_loss("contrastive+isotropy", distance=EuclideanDistance())
    warning = isotropy_scale_warning(with_isotropy, unit_sphere)
    assert warning and "spread 0.051" in warning and "by about 19.7" in warning
    assert isotropy_scale_warning(with_isotropy, torch.randn(64, 384)) is None  # unit scale: SIGReg can act
    assert isotropy_scale_warning(build_loss("contrastive+0*isotropy"), unit_sphere) is None  # weight 0
    assert isotropy_scale_warning(build_loss("contrastive", distance=EuclideanDistance()), unit_sphere) is None


def test_a_run_whose_embeddings_are_too_small_for_sigreg_says_so(tiny_model_dir, tmp_path, pairs):
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli

    args = ["train", "--encoder", f"hf:{tiny_model_dir}", "--set", "head.gaussian.out_dim=16",
            "--set", "loss.isotropy.num_slices=16", "--train-data", str(pairs), "--batch-size", "4",
            "--steps", "1", "--no-progress", "--loss", "contrastive+isotropy"]
    small = CliRunner().invoke(build_cli(), [*args, "--output-dir", str(tmp_path / "a"),
                                             "--set", "head.gaussian.init_scale=0.01"], catch_exceptions=False)
    assert small.exit_code == 0, small.output
    assert "the isotropy term will barely act" in small.output
    fine = CliRunner().invoke(build_cli(), [*args, "--output-dir", str(tmp_path / "b"),
                                            "--set", "head.gaussian.init_scale=3"], catch_exceptions=False)
    assert fine.exit_code == 0 and "barely act" not in fine.output
