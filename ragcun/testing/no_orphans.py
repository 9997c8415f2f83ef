"""A pytest plugin: no process a test started outlives the test session, however the session ends.

Tests that start ``ragcun train``, torchrun or gloo workers end them on their own paths, but an interrupted
session (Ctrl-C, or SIGTERM from CI or a scheduler) skips those paths, and the children keep the cores busy after
pytest has gone. This plugin ends every descendant of the pytest process:

* after each test, what that test left running (a test that leaks a process is a bug, but the next test should
  not pay for it);
* when the session finishes, also after Ctrl-C;
* on SIGTERM, which is turned into the same interruption as Ctrl-C (pytest's default is to die at once).

Children get SIGTERM first (they may save, as ``ragcun train`` does), then SIGKILL after a grace period.
Use it with ``pytest_plugins = ["ragcun.testing.no_orphans"]`` or ``pytest -p ragcun.testing.no_orphans``.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

GRACE_S = 5.0


def end_descendants(grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace_s``, every process descended from this one; returns their pids."""
    try:
        children = [c for c in psutil.Process(os.getpid()).children(recursive=True) if not _interpreter_helper(c)]
    except psutil.Error:
        return []
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [c.pid for c in children]


def _interpreter_helper(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker and forkserver live as long as the interpreter, not a test."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return True
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in command


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):  # noqa: ARG001
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):  # noqa: ARG001
    end_descendants()


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    end_descendants()
