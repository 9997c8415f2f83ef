"""Stopping on a signal: SIGTERM (schedulers, ``docker stop``, preemption) is treated like Ctrl-C (SIGINT), and
child processes never outlive the process that started them.

* :class:`Stopped` is the ``KeyboardInterrupt`` a stop signal raises, carrying the signal: the command line
  exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
* :class:`StopRequests` is what the training loop installs: the first SIGINT or SIGTERM only sets
  ``requested`` (the loop finishes the step, every rank saves a checkpoint, then it stops); a second one, at
  least :data:`REPEAT_S` seconds later, raises :class:`Stopped` at once. A signal that arrives again within
  that time is the same request delivered twice (torchrun forwards the signal a terminal or a scheduler already
  sent to every process), not an impatient second one.
* :func:`raise_on_stop` makes SIGTERM raise :class:`Stopped` like SIGINT raises ``KeyboardInterrupt`` (outside
  the loop, before the first step: nothing to save yet).
* :class:`ChildProcesses` starts processes that die with this one: the kernel sends them SIGTERM when this
  process dies, even of SIGKILL (Linux's ``PR_SET_PDEATHSIG``), and leaving the ``with`` block in any way
  (a signal, an error) stops the ones still running: SIGTERM, time to save, then SIGKILL.

Signal handlers can only be installed in the main thread; elsewhere these do nothing to the handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_S = 2.0  # a stop signal repeated within this time is the same request, delivered again


class Stopped(KeyboardInterrupt):
    """A stop signal: ``signum``, and the exit code a command returns for it (``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code(signum: int | None) -> int:
    """The shell's convention for a process stopped by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(int(signum or signal.SIGINT)).name
    except ValueError:
        return f"signal {signum}"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Handlers:
    """Install handlers for some signals; put the previous ones back on exit."""

    def __init__(self, signals: tuple[int, ...], handler: Callable) -> None:
        self.signals, self.handler, self.previous = signals, handler, {}

    def __enter__(self):
        if _main_thread():
            for signum in self.signals:
                self.previous[signum] = signal.signal(signum, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous = {}


class raise_on_stop(_Handlers):  # noqa: N801 (a context manager, used like a function)
    """SIGINT and SIGTERM raise :class:`Stopped` at once (SIGTERM would otherwise end the process silently)."""

    def __init__(self) -> None:
        super().__init__(STOP_SIGNALS, self._raise)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise Stopped(signum)


class StopRequests(_Handlers):
    """The first SIGINT or SIGTERM sets ``requested`` and ``signum`` and calls ``on_first()``; a second one
    (:data:`REPEAT_S` seconds or more later) raises :class:`Stopped` at once."""

    def __init__(self, on_first: Callable[[], Any] = lambda: None) -> None:
        super().__init__(STOP_SIGNALS, self._handle)
        self.on_first, self.requested, self.signum, self._at = on_first, False, None, 0.0

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested:
            if now - self._at < REPEAT_S:  # the same request delivered again (torchrun forwards it)
                return
            raise Stopped(signum)
        self.requested, self.signum, self._at = True, signum, now
        self.on_first()


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: ChildProcesses still stops them on every exit it sees
        pass


def foreground_on_terminal() -> bool:
    """Is this process in the foreground process group of a terminal? Then a Ctrl-C reached the children too."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class ChildProcesses(_Handlers):
    """Processes started with :meth:`popen` inside the ``with`` block never outlive it.

    While inside, SIGTERM and SIGHUP raise :class:`Stopped` here (SIGINT raises ``KeyboardInterrupt`` as usual).
    Leaving the block in any way stops every child still running: SIGTERM (a training child saves a checkpoint;
    not sent again after a Ctrl-C at a terminal, which reached the children already), up to ``grace`` seconds to
    exit, then SIGKILL. The kernel sends them SIGTERM if this process dies without leaving the block (SIGKILL).
    """

    def __init__(self, grace: float = 60.0) -> None:
        super().__init__((signal.SIGTERM, signal.SIGHUP), raise_on_stop._raise)
        self.grace, self.children = grace, []

    def popen(self, cmd, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kwargs)  # noqa: PLW1509 (before exec only)
        self.children.append(proc)
        return proc

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            running = [p for p in self.children if p.poll() is None]
            if running:
                interrupted_here = exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and (
                    getattr(exc, "signum", signal.SIGINT) == signal.SIGINT)
                if not (interrupted_here and foreground_on_terminal()):
                    for proc in running:
                        _signal(proc, signal.SIGTERM)
                deadline = time.monotonic() + self.grace
                for proc in running:
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                    except KeyboardInterrupt:  # impatient: stop waiting, kill them now
                        break
                for proc in running:
                    if proc.poll() is None:
                        _signal(proc, signal.SIGKILL)
                        proc.wait()
        finally:
            super().__exit__(exc_type, exc, tb)


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass
