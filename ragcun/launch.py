"""Starting child processes: one job, or several side by side or in turn, each with its devices, threads and log.

The one launcher behind ``ragcun train --nproc-per-node`` (the torchrun relaunch) and ``ragcun ablation run
--parallel`` (``ragcun sweep`` is a plan it runs):

* a :class:`Job` is what to run: a command, its environment and its log file;
* :func:`placement` says where the jobs go (the one meaning of ``--parallel``, below);
* :func:`run_jobs` starts them, ``slots`` at a time, each with its GPUs (``CUDA_VISIBLE_DEVICES``) or its share
  of the cores (``OMP_NUM_THREADS``, ``TOKENIZERS_PARALLELISM=false``), and collects their exit codes;
* :func:`run_one` runs one command in the foreground (the torchrun relaunch).

Children die with this process (:class:`ragcun.signals.ChildProcesses`): a SIGTERM or SIGINT here is passed on
to them (a training child saves a checkpoint) and this process waits ``grace`` seconds for them to finish
before killing them; the kernel stops them if this process is killed.

``--parallel`` (``ragcun ablation run``, ``ragcun sweep``):

* ``no``: one after another, in the calling process;
* ``auto``: side by side when the node has at least two GPUs, else as ``no``;
* ``yes``: side by side; without a GPU, CPU processes sharing the cores.

Side by side, ``slots`` jobs run at once (``--slots``; by default one per GPU, at most one per job, and 2 CPU
processes without a GPU); each slot gets an equal share of the GPUs (``gpus // slots``, at most what a job can
use; a remainder stays idle, so every job has the same number of GPUs and the same global batch), and the other
jobs wait for a free slot.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PARALLEL_CHOICES = ("auto", "yes", "no")
PARALLEL_HELP = ("auto: side by side when the node has at least two GPUs, else one after another; yes: always side "
                 "by side (without a GPU, CPU processes sharing the cores); no: one after another")
SLOTS_HELP = ("how many runs at once side by side [default: one per GPU, at most one per run, or 2 on a CPU]")
CPU_SLOTS = 2  # processes side by side without a GPU, unless --slots says otherwise


def torchrun_command(nproc: int, args: Sequence[str], *, master_port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run`` with ``nproc`` ranks on this node running ``-m ragcun ARGS``
    (ragcun/__main__.py: the whole CLI, plugins included); ``--standalone`` unless ``master_port`` is given
    (jobs side by side each need their own port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += [f"--master-port={master_port}", "--rdzv-backend=static", "--master-addr=127.0.0.1",
            "--nnodes=1", "--node-rank=0"] if master_port else ["--standalone"]
    return [*cmd, "-m", "ragcun", *args]


@dataclass
class Job:
    """One child process: ``command``, with ``env`` added to this process's environment (and the slot's devices
    or threads, :func:`job_env`); the output goes to ``log`` (appended), or to this process's when ``None``."""

    name: str
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log: str | Path | None = None

    def argv(self) -> list[str]:
        if not self.command:
            raise ValueError(f"job {self.name}: give a command")
        return list(self.command)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placement(n_jobs: int | None, gpus: int, parallel: str = "auto", slots: int | None = None,
              max_gpus_per_job: int | None = None) -> list[list[int]] | None:
    """The GPUs of each slot when the jobs go side by side (``[]`` per slot: CPU processes), or ``None`` for one
    after another in the calling process (the module docstring says when). ``n_jobs=None``: not known yet
    (as many slots as the node allows)."""
    if parallel not in PARALLEL_CHOICES:
        raise ValueError(f"--parallel must be auto, yes or no, got {parallel!r}")
    if slots is not None and slots < 1:
        raise ValueError(f"--slots must be a positive integer, got {slots}")
    if parallel == "no" or n_jobs == 0 or (parallel == "auto" and gpus < 2):
        return None
    if not gpus:
        return [[] for _ in range(slots or min(n_jobs or CPU_SLOTS, CPU_SLOTS))]
    count = slots or min(n_jobs or gpus, gpus)
    per = max(1, gpus // count)
    if max_gpus_per_job:
        per = min(per, max_gpus_per_job)
    return [[(i * per + j) % gpus for j in range(per)] for i in range(count)]


def slot_count(n_jobs: int | None, parallel: str, slots: int | None = None, gpus: int | None = None,
               max_gpus_per_job: int | None = None) -> int:
    """How many jobs run at once (1: one after another, in the calling process)."""
    groups = placement(n_jobs, gpu_count() if gpus is None else gpus, parallel, slots, max_gpus_per_job)
    return 1 if groups is None else len(groups)


def job_env(devices: Sequence[int], threads: int) -> dict[str, str]:
    """A job's devices (``CUDA_VISIBLE_DEVICES``) or, without a GPU, its share of the cores."""
    if devices:
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
    # CPU processes side by side: share the cores instead of each spinning on all of them
    return {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def where(devices: Sequence[int], threads: int) -> str:
    return (f"GPU{'s' if len(devices) > 1 else ''} {','.join(map(str, devices))}" if devices
            else f"CPU ({threads} thread(s))")


def run_one(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, grace: float = 300.0) -> int:
    """Run ``cmd`` in the foreground with ``env`` added; its exit code, or ``128 + signal`` when a SIGINT or
    SIGTERM stopped this process (passed on to the child, which had ``grace`` seconds to finish)."""
    from ragcun.signals import ChildProcesses, exit_code

    try:
        with ChildProcesses(grace=grace) as children:
            return children.popen(list(cmd), env={**os.environ, **(env or {})}).wait()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the child has stopped (saved) by now
        return exit_code(getattr(exc, "signum", None))


def run_jobs(jobs: Sequence[Job], groups: Sequence[Sequence[int]], *, show: Callable[[str], None] = print,
             grace: float = 60.0, poll_s: float = 0.2,
             on_start: Callable[[Job, list[int], int], None] | None = None,
             on_finish: Callable[[Job, int], None] | None = None) -> dict[str, int]:
    """Run ``jobs``, ``len(groups)`` at a time, slot ``i`` with the GPUs ``groups[i]`` (``[]``: a CPU process
    with its share of the cores); returns each job's exit code, in the order they finished.

    A stop signal (or an error) here stops the jobs still running: SIGTERM, ``grace`` seconds to save, then
    SIGKILL (:class:`ragcun.signals.ChildProcesses`); the ``KeyboardInterrupt`` goes on to the caller.
    ``on_start(job, devices, threads)`` and ``on_finish(job, exit_code)`` say what happens (by default a line
    to ``show`` when a job starts)."""
    import subprocess  # here, not at the top: the CLI imports this module for its option texts

    from ragcun.signals import ChildProcesses

    if not groups:
        raise ValueError("run_jobs: no slots to run the jobs in")
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    queue, running, codes = list(jobs), {}, {}
    try:
        with ChildProcesses(grace=grace) as children:
            while queue or running:
                while queue and len(running) < len(groups):
                    job = queue.pop(0)
                    slot = next(i for i in range(len(groups)) if i not in {s for s, _, _, _ in running.values()})
                    devices = list(groups[slot])
                    env = {**os.environ, **job_env(devices, threads), **job.env}
                    out = None
                    if job.log is not None:
                        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
                        out = open(job.log, "a")  # noqa: SIM115 (closed when the job ends)
                    if on_start is not None:
                        on_start(job, devices, threads)
                    else:
                        show(f"{job.name}: started on {where(devices, threads)}"
                             + (f"; log {job.log}" if job.log else ""))
                    running[job.name] = (slot, children.popen(job.argv(), env=env, stdout=out,
                                                              stderr=subprocess.STDOUT if out else None), out, job)
                time.sleep(poll_s)
                for name, (_slot, proc, out, job) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    if out is not None:
                        out.close()
                    del running[name]
                    codes[name] = proc.returncode
                    if on_finish is not None:
                        on_finish(job, proc.returncode)
    finally:
        for _slot, _proc, out, _job in running.values():
            if out is not None:
                out.close()
    return codes
