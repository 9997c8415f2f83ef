"""Issue 28, class 3: signals and dead peers. SIGTERM saves a checkpoint like Ctrl-C, on every rank, and exits
143; a closed stdout/stderr (``ragcun train | tee log``, then Ctrl-C) never costs the run; the ablation runner's
workers die with it; a stopped rank makes the others fail after RAGCUN_DIST_TIMEOUT, naming the collective.
The processes here are real ones, ended on any exit of a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _training_helpers import write_pairs

from ragcun.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("single_thread")
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def processes():
    """``start(argv, **popen)``: processes that are killed when the test ends, however it ends."""
    started: list[subprocess.Popen] = []

    def start(argv, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("env", ENV)
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=60)
        except (ValueError, OSError, subprocess.TimeoutExpired):
            pass


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", 24)


def train_argv(model_dir, pairs, out, *extra) -> list[str]:
    return [sys.executable, "-m", "ragcun", "train", "--encoder", f"hf:{model_dir}", "--set",
            "head.gaussian.out_dim=16", "--set", "loss.isotropy.num_slices=16", "--train-data", str(pairs),
            "--output-dir", str(out), "--batch-size", "4", "--log-every", "1", "--save-every", "100000",
            "--lr", "1e-4", *extra]


def read_until(stream, text: bytes, timeout: float = 240.0) -> bytes:
    """Read lines from ``stream`` until one holds ``text``; everything read."""
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n{seen.decode(errors='replace')[-3000:]}")


def running(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie waiting to be reaped)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


# -- the pieces ------------------------------------------------------------------------------------------------
def test_a_repeated_signal_is_one_request_and_a_later_one_stops_at_once(monkeypatch):
    from ragcun import signals
    from ragcun.signals import Stopped, StopRequests

    clock = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    seen = []
    with StopRequests(lambda: seen.append("first")) as stop:
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGINT, None)  # torchrun forwarding what the terminal already sent: the same request
        assert stop.requested and stop.signum == signal.SIGTERM and seen == ["first"]
        clock[0] += signals.REPEAT_S + 1
        with pytest.raises(Stopped) as caught:
            stop._handle(signal.SIGTERM, None)
    assert caught.value.exit_code == 143 and signals.exit_code(signal.SIGINT) == 130


def test_the_dist_timeout_comes_from_the_environment(monkeypatch):
    from ragcun import distributed as D

    monkeypatch.delenv(D.DIST_TIMEOUT_ENV, raising=False)
    assert D.dist_timeout_s() == 1800
    monkeypatch.setenv(D.DIST_TIMEOUT_ENV, "90")
    assert D.dist_timeout_s() == 90
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv(D.DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match="RAGCUN_DIST_TIMEOUT"):
            D.dist_timeout_s()


# -- SIGTERM during training -------------------------------------------------------------------------------------
@pytest.mark.slow  # a training subprocess: ~10 s
def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_model_dir, pairs, tmp_path, processes):
    out = tmp_path / "run"
    proc = processes(train_argv(tiny_model_dir, pairs, out, "--steps", "100000"), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    read_until(proc.stdout, b"step 2:")
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=240)[0].decode(errors="replace")
    assert proc.returncode == 143, rest
    assert "stopping on SIGTERM" in rest and "Traceback" not in rest
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and latest.step >= 2 and ckpt.verify_checkpoint(latest) is None
    assert not (out / ".ragcun.lock").exists()  # the lock went with the run


def _sigterm_on_rank_1(rank: int, world_size: int, config_dict: dict):
    """Rank 1 gets SIGTERM during its second optimizer step (a scheduler signalling one process)."""
    import torch

    from ragcun.run_lock import read_holder
    from ragcun.training.callbacks import Callback
    from ragcun.training.config import TrainConfig
    from ragcun.training.loop import train

    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    holder = {}

    class Holder(Callback):
        def on_start(self, state):
            holder.update(read_holder(config_dict["output_dir"]))

    result = train(TrainConfig(**config_dict), callbacks=[Holder()])
    return {"step": result.step, "interrupted": result.interrupted, "signal": result.signal,
            "holder_is_me": holder.get("pid") == os.getpid(), "model": result.model_dir}


@pytest.mark.distributed
@pytest.mark.slow  # a 2-rank gloo run: ~15 s
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tiny_model_dir, tmp_path, pairs):
    from _training_helpers import tiny_config

    from ragcun.testing.distributed import run_on_ranks

    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, pairs, steps=50, save_every=1000, negatives=1)
    first, second = run_on_ranks(_sigterm_on_rank_1, 2, config.to_dict())
    assert first["interrupted"] and second["interrupted"] and first["step"] == second["step"] >= 2
    assert first["signal"] == second["signal"] == signal.SIGTERM  # rank 0 saw none itself: agreed
    assert first["holder_is_me"] and not second["holder_is_me"]  # rank 0 holds the run folder's lock
    latest = ckpt.latest_checkpoint(out)
    assert latest.step == first["step"] and ckpt.verify_checkpoint(latest) is None
    assert first["model"] is None and not (out / "ragcun.json").exists()


@pytest.mark.distributed
@pytest.mark.slow  # torchrun with 2 gloo ranks: ~30 s
def test_sigterm_to_ragcun_train_nproc_per_node_reaches_every_rank(tiny_model_dir, pairs, tmp_path, processes):
    out = tmp_path / "run"
    proc = processes(train_argv(tiny_model_dir, pairs, out, "--steps", "100000", "--nproc-per-node", "2"),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    read_until(proc.stdout, b"step 2:", timeout=400)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=400)[0].decode(errors="replace")
    assert proc.returncode == 143, rest
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and latest.step >= 2 and ckpt.verify_checkpoint(latest) is None, rest
    assert rest.count("stopping on SIGTERM") == 1 and f"stopped at step {latest.step} (SIGTERM)" in rest, rest
    frames = [line for line in rest.splitlines() if line.strip().startswith("File ")]
    assert not any("/ragcun/" in frame for frame in frames)  # torchrun prints its SignalException; ragcun nothing
    assert not (out / ".ragcun.lock").exists()


# -- a closed stdout/stderr --------------------------------------------------------------------------------------
@pytest.mark.slow  # two training subprocesses: ~20 s
def test_a_closed_output_pipe_never_costs_the_run(tiny_model_dir, pairs, tmp_path, processes):
    """`ragcun train ... | tee log`, then Ctrl-C: tee is gone when the run says it is saving. The run saves and
    exits 130 as without the pipe; and with the reader gone and no signal, it trains to the end."""
    out = tmp_path / "ctrl-c"
    proc = processes(train_argv(tiny_model_dir, pairs, out, "--steps", "100000"), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    read_until(proc.stdout, b"step 1:")
    proc.stdout.close()  # the reader exits
    time.sleep(1.0)  # a few writes into the closed pipe
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=240) == 130
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and ckpt.verify_checkpoint(latest) is None

    out = tmp_path / "no-signal"
    proc = processes(train_argv(tiny_model_dir, pairs, out, "--steps", "25"), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    read_until(proc.stdout, b"step 1:")
    proc.stdout.close()
    assert proc.wait(timeout=240) == 0
    assert ckpt.verify_model_folder(out) is None  # trained to the end, final model written


# -- the ablation runner's workers -------------------------------------------------------------------------------
WORKER = """#!{python}
import os, signal, sys, time
from pathlib import Path
folder = Path(os.environ["FAKE_WORKER_DIR"])
def stop(signum, frame):
    (folder / f"stopped-{{os.getpid()}}").write_text(str(signum))
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(folder / f"started-{{os.getpid()}}").write_text("")
while True:
    time.sleep(0.1)
"""

PARENT = """
import sys, types
from pathlib import Path
from ragcun.ablation import runner
from ragcun.signals import Stopped
work, worker = Path(sys.argv[1]), sys.argv[2]
sys.executable = worker  # the workers run_side_by_side starts are `worker ... ablation run ...`
plan = types.SimpleNamespace(work_dir=work, path=work / "plan.toml", results=work / "results")
parent = types.SimpleNamespace(plan=plan, data_dir=None, show=lambda m: print(m, flush=True))
arms = [(types.SimpleNamespace(name=n), 1) for n in ("a", "b")]
try:
    runner.run_side_by_side(parent, arms, 2)
except Stopped as exc:
    sys.exit(exc.exit_code)
"""


@pytest.mark.slow  # two parents with two workers each: ~10 s
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_ablation_workers_die_with_their_parent(tmp_path, processes, how):
    folder = tmp_path / "workers"
    folder.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(python=sys.executable))
    worker.chmod(0o755)
    parent = processes([sys.executable, "-c", PARENT, str(tmp_path / "work"), str(worker)],
                       env={**ENV, "FAKE_WORKER_DIR": str(folder)}, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.name.split("-")[1]) for p in folder.glob("started-*")]
    try:
        assert len(pids) == 2, parent.stdout.read() if parent.poll() is not None else "workers did not start"
        parent.send_signal(getattr(signal, how))
        parent.communicate(timeout=120)
        assert parent.returncode == (143 if how == "SIGTERM" else -signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(pid) for pid in pids)
        # each worker was asked to stop (SIGTERM: a training worker saves its checkpoint), not left running
        assert sorted(int(p.name.split("-")[1]) for p in folder.glob("stopped-*")) == sorted(pids)
    finally:
        for pid in pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# -- a stopped rank ------------------------------------------------------------------------------------------------
COLLECTIVE = """
import os, signal, torch
from ragcun import distributed as D
ctx = D.setup("cpu")
D.barrier(ctx)
if ctx.rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
try:
    D.all_reduce_mean(torch.ones(1), ctx)
except D.CollectiveTimeout as exc:
    print("CollectiveTimeout:", exc, flush=True)
    os._exit(3)
"""


def _rank_env(rank: int, port: int, timeout_s: int) -> dict:
    return {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RAGCUN_DIST_TIMEOUT": str(timeout_s)}


@pytest.mark.distributed
@pytest.mark.slow  # two processes and a 10 s timeout: ~20 s
def test_a_stopped_rank_makes_the_other_fail_naming_the_collective(processes):
    from ragcun.distributed import free_port

    port = free_port()
    ranks = [processes([sys.executable, "-c", COLLECTIVE], env=_rank_env(r, port, 10), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True) for r in range(2)]
    t0 = time.monotonic()
    output = ranks[0].communicate(timeout=300)[0]
    assert ranks[0].returncode == 3, output
    assert "rank 0 of 2: all_reduce (mean) (called from <string>" in output and "waited more than 10 s" in output
    assert "RAGCUN_DIST_TIMEOUT" in output and time.monotonic() - t0 < 200
    assert running(ranks[1].pid)  # still stopped: the fixture kills it


STOPPED_TRAINING = """
import os, signal, sys
import torch
if os.environ["RANK"] == "1":  # rank 1 stops (SIGSTOP) in its second optimizer step
    calls = {"n": 0}
    original = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self, *args, **kwargs)
    torch.optim.AdamW.step = step
from ragcun.cli.root import main
sys.argv = ["ragcun", *sys.argv[1:]]
main()
"""


@pytest.mark.distributed
@pytest.mark.slow  # two training processes and a 20 s timeout: ~45 s
def test_a_stopped_rank_during_training_is_named_not_waited_for_forever(tiny_model_dir, pairs, tmp_path, processes):
    from ragcun.distributed import free_port

    port = free_port()
    argv = [sys.executable, "-c", STOPPED_TRAINING, *train_argv(tiny_model_dir, pairs, tmp_path / "run", "--steps",
                                                                 "50", "--no-progress")[3:]]
    ranks = [processes(argv, env=_rank_env(r, port, 20), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) for r in range(2)]
    output = ranks[0].communicate(timeout=400)[0]
    assert ranks[0].returncode == 1, output
    said = " ".join(output.split())
    assert "rank 0 of 2:" in said and "waited more than 20 s for the other ranks" in said, output[-3000:]
    assert "called from ragcun/" in said and "Traceback" not in said
    assert running(ranks[1].pid)  # still stopped: the fixture kills it
