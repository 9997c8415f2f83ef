"""ragcun.launch: the one launcher (jobs in turn and side by side, their devices, threads and logs, signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragcun.launch import Job, job_env, placement, run_jobs, torchrun_command

# a job that records when it ran and what it saw, waits for FILE when given, then exits with CODE
CHILD = """
import json, os, sys, time
from pathlib import Path
out, wait_for, code = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
start = time.time()
out.with_suffix(".started").write_text("")
deadline = time.time() + 60
while wait_for and not Path(wait_for).exists() and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.2)
env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "EXTRA")}
out.write_text(json.dumps({"start": start, "end": time.time(), "env": env, "waited": Path(wait_for).exists()
                           if wait_for else None}))
print("hello from", out.stem, flush=True)
sys.exit(code)
"""


def _job(tmp_path: Path, name: str, *, wait_for: str = "", code: int = 0, **kw) -> Job:
    return Job(name, [sys.executable, "-c", CHILD, str(tmp_path / f"{name}.json"), wait_for, str(code)], **kw)


def _record(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.parametrize("jobs, gpus, parallel, slots, most, expected", [
    (3, 8, "auto", None, None, [[0, 1], [2, 3], [4, 5]]),  # equal shares: every run keeps the same global batch
    (3, 3, "auto", None, None, [[0], [1], [2]]),
    (2, 4, "auto", None, None, [[0, 1], [2, 3]]),           # two runs left to do (one finished earlier)
    (3, 2, "auto", None, None, [[0], [1]]),                 # fewer GPUs than runs: two at a time, the third waits
    (3, 1, "auto", None, None, None),                       # one GPU: one after another, in the calling process
    (3, 0, "auto", None, None, None),
    (3, 8, "no", None, None, None),
    (3, 0, "yes", None, None, [[], []]),                    # CPU processes side by side, 2 by default
    (3, 0, "yes", 3, None, [[], [], []]),
    (1, 0, "yes", None, None, [[]]),
    (5, 8, "auto", None, 1, [[0], [1], [2], [3], [4]]),     # the ablation's workers use one GPU each
    (None, 8, "auto", None, 1, [[i] for i in range(8)]),     # the number of jobs not known yet
    (5, 2, "yes", 4, 1, [[0], [1], [0], [1]]),              # more slots than GPUs: they share
    (0, 8, "yes", None, None, None),
])
def test_placement_is_the_one_meaning_of_parallel(jobs, gpus, parallel, slots, most, expected):
    assert placement(jobs, gpus, parallel, slots, most) == expected


def test_placement_refuses_bad_input():
    with pytest.raises(ValueError, match="--parallel must be auto, yes or no"):
        placement(3, 0, "maybe")
    with pytest.raises(ValueError, match="--slots must be a positive integer"):
        placement(3, 0, "yes", 0)


def test_job_commands():
    assert Job("a", ["x", "y"]).argv() == ["x", "y"]
    cmd = torchrun_command(2, ["train", "--config", "c.json"], master_port=29511)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert "--master-port=29511" in cmd and cmd[-5:] == ["-m", "ragcun", "train", "--config", "c.json"]
    assert torchrun_command(4, ["train"])[4:] == ["--standalone", "-m", "ragcun", "train"]
    with pytest.raises(ValueError, match="give a command"):
        Job("a").argv()
    assert job_env([0, 1], 4) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert job_env([], 4) == {"OMP_NUM_THREADS": "4", "TOKENIZERS_PARALLELISM": "false"}


def test_jobs_in_turn_with_their_environment_threads_and_logs(tmp_path):
    logs = tmp_path / "logs"
    jobs = [_job(tmp_path, "a", log=logs / "a.log", env={"EXTRA": "1"}), _job(tmp_path, "b", code=3,
                                                                                log=logs / "b.log")]
    seen = []
    codes = run_jobs(jobs, [[]], show=seen.append, poll_s=0.05)
    assert codes == {"a": 0, "b": 3}
    a, b = _record(tmp_path, "a"), _record(tmp_path, "b")
    assert a["end"] <= b["start"]  # one slot: in turn
    threads = str(max(1, os.cpu_count() or 1))
    assert a["env"] == {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES":
                        os.environ.get("CUDA_VISIBLE_DEVICES"), "EXTRA": "1"}
    assert b["env"]["EXTRA"] is None
    assert "hello from a" in (logs / "a.log").read_text() and "hello from b" in (logs / "b.log").read_text()
    assert seen[0].startswith("a: started on CPU") and "a.log" in seen[0]


def test_jobs_side_by_side_each_with_its_gpus(tmp_path):
    """Two slots: each job waits until the other has started, so they can only finish when run at once; each
    gets its slot's devices (set in the environment; no GPU is needed to check that)."""
    jobs = [_job(tmp_path, "a", wait_for=str(tmp_path / "b.started")),
            _job(tmp_path, "b", wait_for=str(tmp_path / "a.started")),
            _job(tmp_path, "c")]
    finished = []
    codes = run_jobs(jobs, [[0, 1], [2, 3]], show=lambda _: None, poll_s=0.05,
                     on_finish=lambda job, code: finished.append((job.name, code)))
    assert codes == {"a": 0, "b": 0, "c": 0} and sorted(finished) == [("a", 0), ("b", 0), ("c", 0)]
    a, b, c = (_record(tmp_path, n) for n in "abc")
    assert a["waited"] and b["waited"]
    assert {a["env"]["CUDA_VISIBLE_DEVICES"], b["env"]["CUDA_VISIBLE_DEVICES"]} == {"0,1", "2,3"}
    assert a["env"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")  # GPUs: the threads are left alone
    assert c["start"] >= min(a["end"], b["end"])  # the third waits for a free slot


# a job that saves (writes a file) on SIGTERM, like a training run
WORKER = """
import os, signal, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(0.5)  # saving takes a moment: the parent must wait for it
    (folder / f"stopped-{os.getpid()}").write_text(str(signum))
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(folder / f"started-{os.getpid()}").write_text("")
while True:
    time.sleep(0.1)
"""

PARENT = """
import sys
from ragcun.launch import Job, run_jobs, run_one
from ragcun.signals import Stopped
folder, how, worker = sys.argv[1], sys.argv[2], sys.argv[3]
cmd = [sys.executable, "-c", worker, folder]
if how == "one":
    code = run_one(cmd, grace=30)
    print("returned", code, flush=True)
    sys.exit(code)
try:
    run_jobs([Job("a", cmd), Job("b", cmd)], [[], []], poll_s=0.05, grace=30)
except Stopped as exc:
    print("stopped", exc.signum, flush=True)
    sys.exit(exc.exit_code)
"""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("how, workers", [("one", 1), ("jobs", 2)])
def test_sigterm_is_passed_on_and_the_parent_waits_for_the_children(tmp_path, how, workers):
    folder = tmp_path / "w"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(folder), how, WORKER], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("started-*"))) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(p.name.split("-")[1]) for p in folder.glob("started-*")]
        assert len(pids) == workers, parent.communicate(timeout=5)[0] if parent.poll() is not None else "no start"
        parent.send_signal(signal.SIGTERM)
        out = parent.communicate(timeout=60)[0].decode(errors="replace")
        assert parent.returncode == 143, out
        # every child was asked to stop and had saved by the time the parent exited
        assert sorted(int(p.name.split("-")[1]) for p in folder.glob("stopped-*")) == sorted(pids), out
        assert {p.read_text() for p in folder.glob("stopped-*")} == {str(int(signal.SIGTERM))}
        assert not any(_running(pid) for pid in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
