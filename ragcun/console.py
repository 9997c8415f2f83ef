"""Shared rich consoles: tables and results on stdout, progress and logs on stderr; one progress helper."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

stdout = Console()
stderr = Console(stderr=True)


class _PipeSafe:
    """``sys.stdout`` / ``sys.stderr`` whose writes never fail because the reader went away (``ragcun train |
    tee log`` after a Ctrl-C, ``| head``): the first EPIPE points the stream's descriptor at /dev/null and the
    command carries on (training keeps training, a signal still saves and exits as it would)."""

    def __init__(self, stream) -> None:
        self._stream, self._gone = stream, False

    def _lost(self) -> None:
        self._gone = True
        try:  # later writes, the buffer still pending and the interpreter's flush at exit all go nowhere quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        if self._gone:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            if not _broken_pipe(exc):
                raise
            self._lost()
            return len(text)

    def flush(self) -> None:
        if self._gone:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            if not _broken_pipe(exc):
                raise
            self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _broken_pipe(exc: OSError) -> bool:
    import errno

    return isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.ECONNRESET)


def guard_closed_streams() -> None:
    """Make a closed stdout or stderr (its reader exited) harmless for the rest of this process. Python already
    ignores SIGPIPE, so such writes raise BrokenPipeError, which :class:`_PipeSafe` absorbs."""
    import signal
    import sys

    if hasattr(signal, "SIGPIPE") and signal.getsignal(signal.SIGPIPE) != signal.SIG_IGN:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a write to a closed pipe must raise, not kill
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _PipeSafe):
            setattr(sys, name, _PipeSafe(stream))

PROGRESS_EVERY_ENV = "RAGCUN_PROGRESS_EVERY"  # seconds between plain progress lines in logs (default 30)


def make_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False)


Advance = Callable[[int], None]
Start = Callable[[str, int], Advance]


class _PlainLines:
    """Progress for logs (stderr is not a terminal): one line per task every ``every`` seconds and when it
    ends, so a long phase in a CI log or a nohup file says where it is instead of staying silent."""

    def __init__(self, every: float) -> None:
        self.every = every

    def start(self, description: str, total: int) -> Advance:
        state = {"done": 0, "t0": time.monotonic(), "last": time.monotonic()}

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            finished = total and state["done"] >= total
            if finished or now - state["last"] >= self.every:
                state["last"] = now
                elapsed = now - state["t0"]
                rate = state["done"] / elapsed if elapsed > 0 else 0.0
                eta = f", ETA {int((total - state['done']) / rate)}s" if rate > 0 and not finished else ""
                pct = f" ({100 * state['done'] / total:.0f}%)" if total else ""
                stderr.print(f"{description}: {state['done']}/{total}{pct}, {elapsed:.0f}s{eta}", highlight=False,
                             soft_wrap=True)

        return advance


@contextmanager
def progress_tasks(enabled: bool = True) -> Iterator[Start]:
    """Yield ``start(description, total) -> advance(n)``: a rich bar on a terminal, plain lines every
    ``$RAGCUN_PROGRESS_EVERY`` seconds (default 30) in a log, nothing when not ``enabled``."""
    if not enabled:
        yield lambda description, total: (lambda n: None)
        return
    if not stderr.is_terminal:
        yield _PlainLines(float(os.environ.get(PROGRESS_EVERY_ENV, "30"))).start
        return
    with make_progress() as progress:
        def start(description: str, total: int) -> Advance:
            task = progress.add_task(description, total=total)
            return lambda n: progress.update(task, advance=n)

        yield start
