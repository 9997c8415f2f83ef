"""Issue 28, class 1: a run folder has one writer. A second `ragcun train` (or `--resume`, or an export, or an
ablation run) on a folder that a live process holds stops at once, naming the holder; the kernel releases the
lock when the holder dies (kill -9 included); without file locks a dead holder's record is a stale lock.
Every holder here is a real second process."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _training_helpers import write_pairs
from click.testing import CliRunner

from ragcun import run_lock
from ragcun.run_lock import LOCK_FILE, RunLocked, acquire, read_holder
from ragcun.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("single_thread")

HOLD = """
import sys, time
from ragcun.run_lock import acquire
lock = acquire(sys.argv[1], what="ragcun train")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def holders():
    """Start processes (``start(argv, ready)``) and end every one of them however the test ends."""
    procs: list[subprocess.Popen] = []

    def start(argv, ready: str, timeout: float = 240.0) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        procs.append(proc)
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if ready in line:
                return proc
        raise AssertionError(f"{argv[:4]} never said {ready!r}:\n{''.join(seen)[-3000:]}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def hold(holders, folder: Path) -> subprocess.Popen:
    return holders([sys.executable, "-c", HOLD, str(folder)], "locked")


def invoke(*args):
    from ragcun.cli.root import build_cli

    result = CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


# -- the lock itself ------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_with_the_holders_pid_host_command_and_time(holders, tmp_path):
    folder = tmp_path / "run"
    proc = hold(holders, folder)
    with pytest.raises(RunLocked) as caught:
        acquire(folder, label="--output-dir run")
    message = str(caught.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message and "--output-dir run is in use" in message
    assert "-c" in message and "since 20" in message  # the holder's command line and start time
    assert caught.value.holder["pid"] == proc.pid and caught.value.holder["what"] == "ragcun train"


def test_the_lock_dies_with_its_holder_even_on_sigkill(holders, tmp_path):
    folder = tmp_path / "run"
    proc = hold(holders, folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert read_holder(folder)["pid"] == proc.pid  # its record is still there: a stale lock
    with acquire(folder, what="ragcun train") as lock:  # the kernel released the flock: taken over
        assert read_holder(folder)["pid"] == os.getpid() and lock.fd >= 0
    assert not (folder / LOCK_FILE).exists()  # released: the file goes with it


def test_reentrant_in_one_process_and_no_empty_folder_left(tmp_path):
    folder = tmp_path / "new" / "run"
    outer = acquire(folder, what="ragcun ablation run")
    inner = acquire(folder, what="ragcun train")  # the ablation runner's lock, then train's own: the same holder
    assert inner is outer and run_lock.holds(folder)
    inner.release()
    assert (folder / LOCK_FILE).exists() and run_lock.holds(folder)
    outer.release()
    assert not run_lock.holds(folder) and not folder.exists()  # it made the folder and nothing was written


def test_a_symlinked_lock_file_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (folder / LOCK_FILE).symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        acquire(folder)
    assert victim.read_text() == "precious"


def test_without_flock_the_record_decides_stale_or_live(holders, tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "ragcun train", "since": "then"}
    (folder / LOCK_FILE).write_text(json.dumps(record))
    with acquire(folder):  # its holder is gone: a stale lock, taken over
        assert read_holder(folder)["pid"] == os.getpid()

    sleeper = holders([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(600)"], "up")
    (folder / LOCK_FILE).write_text(json.dumps({**record, "pid": sleeper.pid}))
    with pytest.raises(RunLocked, match=f"pid {sleeper.pid}"):
        acquire(folder)
    (folder / LOCK_FILE).write_text(json.dumps({**record, "host": "elsewhere"}))
    with pytest.raises(RunLocked, match=f"on host elsewhere.*delete {folder / LOCK_FILE}"):
        acquire(folder)


# -- who takes it: train, export, the ablation runner ----------------------------------------------------------
@pytest.mark.slow  # a real `ragcun train` process, and the commands run against it: ~25 s
def test_resume_and_export_while_the_run_is_alive_are_refused(holders, tiny_model_dir, tmp_path):
    """The issue's case: `ragcun train --resume` while the original run is alive used to train it twice."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    run = tmp_path / "run"
    train = [sys.executable, "-m", "ragcun", "train", "--encoder", f"hf:{tiny_model_dir}", "--set",
             "head.gaussian.out_dim=16", "--set", "loss.isotropy.num_slices=16", "--train-data", str(pairs),
             "--output-dir", str(run), "--batch-size", "4", "--log-every", "1", "--save-every", "1",
             "--steps", "100000"]
    first = holders(train, "step 2:")
    code, output = invoke("train", "--output-dir", run, "--resume")
    assert code == 1 and f"--output-dir {run} is in use by pid {first.pid}" in output, output
    assert "ragcun train" in output and "Traceback" not in output
    code, output = invoke(*train[3:])  # the same command again: refused too (not "already holds a run")
    assert code == 1 and f"pid {first.pid}" in output, output
    code, output = invoke("export", list_checkpoints(run)[-1].folder / "model", tmp_path / "exported")
    assert code == 1 and f"is in use by pid {first.pid}" in output and not (tmp_path / "exported").exists(), output
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    code, output = invoke("train", "--output-dir", run, "--resume", "--steps", str(_latest(run) + 1))
    assert code == 0, output  # the dead run's lock went with it


def _latest(run: Path) -> int:
    return list_checkpoints(run)[-1].step


def test_the_ablation_runner_locks_each_runs_model_folder(holders, tmp_path):
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.runner import PlanRunner

    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('name = "t"\nbaseline = "ft"\ndatasets = ["x"]\nseeds = [1]\n[train]\ndata = "d"\n'
                         'steps = 2\n[arms.ft]\nloss = "contrastive"\n')
    plan = load_plan(plan_file)
    runner = PlanRunner(plan, show=lambda _: None)
    runner.train_folder = tmp_path / "data"
    arm = plan.arms["ft"]
    folder = Path(runner.train_config(arm, 1, None).output_dir)
    proc = hold(holders, folder)
    with pytest.raises(RunLocked, match=f"the ablation run {folder} is in use by pid {proc.pid}"):
        runner.trained_model(arm, 1, None)
    assert not (folder / "train_config.json").exists()  # nothing trained into the folder the other one holds
