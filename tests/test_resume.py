"""A run killed with SIGKILL and resumed gives the same losses, from that step on, as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _training_helpers import write_pairs

from ragcun.training import checkpoint as ckpt

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from _training_helpers import tiny_config
    from ragcun.training.loop import train

    mode, out = sys.argv[1], sys.argv[2]
    config = tiny_config({model!r}, out, {data!r}, steps=8, save_every=2, keep_checkpoints=2, negatives=1)
    if mode == "kill":  # die hard in the middle of step 6 (after the step-4 checkpoint, before step 6's)
        calls = {{"n": 0}}
        original = torch.optim.AdamW.step
        def step(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *a, **k)
        torch.optim.AdamW.step = step
    train(config, resume=(mode == "resume"))
""")


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow  # three training subprocesses: ~21 s
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)  # 5 batches per epoch: the run crosses epochs
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir), data=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(mode: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), mode, str(out)], capture_output=True, text=True,
                              check=False, env=env, timeout=300)

    full = run("full", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = run("kill", tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ckpt.latest_checkpoint(tmp_path / "killed").step == 4
    assert not (tmp_path / "killed" / "ragcun.json").exists()
    resumed = run("resume", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr

    expected, got = losses(tmp_path / "full"), losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 9))  # the resumed run redid step 5 and dropped the killed run's record
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]  # bit-identical
    assert [got[s] for s in range(1, 5)] == [expected[s] for s in range(1, 5)]
