"""One writer per run folder: an exclusive lock held for the life of a training run, an export of that run, or
an ablation run's training.

The lock is ``fcntl.flock`` on ``FOLDER/.ragcun.lock`` (opened without following a symbolic link). The kernel
releases it when the holding process exits, however it exits (``kill -9`` included), so a crash never leaves a
folder locked. The file also holds a JSON record of the holder (pid, host, command, since when), which names it
in the error a second writer gets::

    --output-dir runs/x is in use by pid 4242 on host node7 (ragcun train --output-dir runs/x ..., since
    2025-01-02 10:11:12); wait for it to finish or stop it, then run this again

Where ``flock`` is not supported (some network filesystems), the record alone decides: a holder on this host
whose process is gone is a stale lock and is taken over; one on another host cannot be checked from here, and
the error says how to remove the lock once that process is known to be gone.

Locks are re-entrant within a process: the ablation runner locks a run's folder and then trains it with
:func:`ragcun.training.loop.train`, which locks the same folder again. The lock file is removed when the
outermost holder releases it (a waiting process notices and opens the new file).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".ragcun.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: dict[str, RunLock] = {}  # realpath of the folder -> this process's lock on it


class RunLocked(ValueError):
    """Another process holds the run folder (a ``ValueError``: the command line prints it as one line)."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a live holder from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool | None:
    """Is the recorded holder still running? ``None`` when it is on another host (cannot be checked here)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    recorded, now = holder.get("start_ticks"), _start_ticks(pid)
    return not (recorded is not None and now is not None and recorded != now)


def describe(holder: dict) -> str:
    """``pid 4242 on host node7 (ragcun train ..., since 2025-01-02 10:11:12)``."""
    if not holder:
        return "another process (it has not said which yet)"
    command = holder.get("command") or "?"
    if len(command) > 160:
        command = command[:157] + "..."
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} ({command}, since "
            f"{holder.get('since', '?')})")


def read_holder(folder: str | os.PathLike) -> dict:
    """The record of the process holding (or last holding) ``folder``'s lock; ``{}`` when there is none."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        holder = json.loads(data.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """This process's hold on a folder; :meth:`release` (or leaving the ``with`` block) lets go."""

    def __init__(self, folder: Path, fd: int, created: bool, what: str) -> None:
        self.folder, self.fd, self.created, self.what, self.depth = folder, fd, created, what, 1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.fd < 0:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        _held.pop(os.path.realpath(self.folder), None)
        try:
            os.unlink(self.folder / LOCK_FILE)  # while still holding it: a waiter re-checks the path it locked
        except OSError:
            pass
        fd, self.fd = self.fd, -1
        os.close(fd)  # releases the flock
        if self.created:  # nothing else was written (the run failed before writing): leave no empty folder
            try:
                self.folder.rmdir()
            except OSError:
                pass


def _program() -> str:
    """How this process was started, as a person would type it: ``ragcun`` for ``python -m ragcun``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if os.path.basename(argv0) == "__main__.py":  # python -m PACKAGE
        return os.path.basename(os.path.dirname(os.path.abspath(argv0)))
    return os.path.basename(argv0)


def _record(what: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "command": " ".join([_program(), *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "start_ticks": _start_ticks(os.getpid())}


def _write_record(fd: int, what: str) -> None:
    data = json.dumps(_record(what), sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def acquire(folder: str | os.PathLike, *, what: str = "ragcun", label: str | None = None) -> RunLock:
    """Lock ``folder`` for this process (creating it if needed), or raise :class:`RunLocked` naming the holder.

    ``what`` says what holds it (``ragcun train``, ``ragcun export``); ``label`` is how the error names the
    folder (e.g. ``--output-dir runs/x``). An unwritable folder raises :class:`ragcun.files.OutputError`.
    """
    from ragcun.files import output_error

    folder = Path(folder)
    label = label or str(folder)
    key = os.path.realpath(folder)
    if key in _held:  # this process holds it already (the ablation runner, then train)
        _held[key].depth += 1
        return _held[key]
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{label} is a file, not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (output_error(exc, folder, what=label) or exc) from None
    path = folder / LOCK_FILE
    for _ in range(100):  # only repeats when the holder removed the file while we waited on it
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if created:
                _rmdir_quietly(folder)
            if exc.errno == errno.ELOOP:
                raise ValueError(f"{path} is a symbolic link; ragcun does not write through links it did not "
                                 "make: remove it") from None
            raise (output_error(exc, folder, what=label) or exc) from None
        try:
            locked = _flock(fd, folder, label)
        except BaseException:
            os.close(fd)
            if created:
                _rmdir_quietly(folder)
            raise
        if locked and not _same_file(fd, path):  # the holder removed it as we got it: try the new one
            os.close(fd)
            continue
        _write_record(fd, what)
        lock = RunLock(folder, fd, created, what)
        _held[key] = lock
        return lock
    raise RunLocked(f"{label}: could not lock {path} (it keeps changing)")


def _flock(fd: int, folder: Path, label: str) -> bool:
    """Take the lock on ``fd`` or raise RunLocked; False when flock is unsupported and the record decided."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = _read_fd(fd)
        alive = _alive(holder) if holder else True
        extra = ("; that process is gone, but a process it started (a data loader worker?) still holds the "
                 "lock: stop it" if alive is False else "")
        raise RunLocked(f"{label} is in use by {describe(holder)}{extra}; wait for it to finish or stop it, then "
                        "run this again", holder) from None
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    # no flock on this filesystem: the record decides (a dead holder on this host is a stale lock)
    holder = _read_fd(fd)
    if not holder or holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return False
    alive = _alive(holder)
    if alive is False:
        return False
    hint = (f"; if that process is gone, delete {folder / LOCK_FILE} and run this again (this filesystem has no "
            "file locks, so a lock held on another host cannot be checked from here)" if alive is None else "")
    raise RunLocked(f"{label} is in use by {describe(holder)}{hint}; wait for it to finish or stop it, then run this "
                    "again", holder)


def _read_fd(fd: int) -> dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
        holder = json.loads(data.decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _rmdir_quietly(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def holds(folder: str | os.PathLike) -> bool:
    """Does this process hold ``folder``'s lock?"""
    return os.path.realpath(folder) in _held
