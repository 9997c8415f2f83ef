"""A resumed run whose --steps changed: the learning rate continues where it was (issue 29, item 11); and a log
file shows the first steps at once (item 7)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _training_helpers import tiny_config, write_pairs

from ragcun.training.config import TrainConfig
from ragcun.training.loop import train
from ragcun.training.optim import lr_lambda, replanned_lr_lambda

pytestmark = pytest.mark.usefixtures("single_thread")


def _lrs(run) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "lr" in r}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_replanned_schedule_continues_from_the_resume_step(schedule):
    config = TrainConfig(train_data="x", steps=30, warmup=0.1, schedule=schedule)
    first = lr_lambda(config, 30)
    for new in (8, 60):
        factor = replanned_lr_lambda(config, new, planned_steps=30, resumed_at=5)
        assert factor(5) == pytest.approx(first(5))  # no jump
        assert all(factor(s) >= factor(s + 1) for s in range(5, new))  # then it decays ...
        assert factor(new) == pytest.approx(0.0, abs=1e-12)  # ... to 0 at the new last step
    early = replanned_lr_lambda(config, 60, planned_steps=30, resumed_at=1)  # still warming up (3 steps)
    assert [early(s) for s in range(3)] == [first(s) for s in range(3)] and early(3) == pytest.approx(1.0)
    constant = replanned_lr_lambda(dataclasses.replace(config, schedule="constant"), 8, planned_steps=30,
                                   resumed_at=5)
    assert constant(7) == 1.0


def test_a_run_resumed_with_fewer_steps_keeps_its_rate_and_ends_at_zero(tiny_model_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 64)
    config = tiny_config(tiny_model_dir, tmp_path / "run", pairs, steps=30, lr=5e-5, save_every=5, log_every=1)
    train(config, stop_after=5)
    train(dataclasses.replace(config, steps=8), resume=True)
    lrs = _lrs(tmp_path / "run")  # a record's lr is the rate its step used
    assert lrs[6] == pytest.approx(5e-5 * (1 - 5 / 30))  # the first step after the resume: the rate as planned
    assert lrs[7] == pytest.approx(lrs[6] * 2 / 3) and lrs[8] == pytest.approx(lrs[6] / 3)  # then down to 0 at 8
    # (the old code applied the 8-step schedule at once: 1.25e-5 at step 7, a drop of 70%)


def test_a_log_file_shows_the_first_steps_at_once(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    pairs = write_pairs(tmp_path / "pairs.jsonl", 64)
    proc = subprocess.run([sys.executable, "-m", "ragcun", "train", "--encoder", f"hf:{tiny_model_dir}",
                           "--train-data", str(pairs), "--output-dir", str(tmp_path / "run"), "--steps", "6",
                           "--batch-size", "4", "--log-every", "5", "--loss", "contrastive",
                           "--set", "head.gaussian.out_dim=16"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = [line.split(":")[0] for line in proc.stderr.splitlines() if line.startswith("step ")]
    assert shown == ["step 1", "step 2", "step 3", "step 5", "step 6"], proc.stderr[-3000:]
    assert "ETA" in proc.stderr
