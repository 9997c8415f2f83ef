"""Writing files so that a crash never leaves half of one: a temporary file beside the target, renamed over it.

The temporary name is unique (``tempfile.mkstemp``), so processes writing the same target at the same moment
(ablation runs side by side) never rename each other's temporary file. A target that is a symbolic link is
refused (ragcun never writes through a link it did not make).

Full disks and read-only folders: :class:`OutputError` is the one-line error (no traceback) naming the path and
the cause; :func:`output_error` turns an ``OSError`` (or the error torch or safetensors makes of one) into it,
:func:`check_writable` finds an unwritable output before the work starts, and :func:`torch_save` keeps the
errno that ``torch.save`` loses (it reports a full disk as ``inline_container.cc ... unexpected pos``).

Folders (a checkpoint, an export) get the same treatment from :func:`atomic_folder`: built in a temporary folder
beside the target, given ordinary permissions, fsynced, and renamed into place.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# the write errors that are about the place written to, not about ragcun: said in one line, no traceback
WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


class OutputError(ValueError):
    """A write failed because of the place written to (a full disk, a read-only or unwritable folder)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, errno_: int | None = None) -> None:
        super().__init__(message)
        self.path, self.errno = path, errno_


def write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write, when it is one of :data:`WRITE_ERRORS`: from an ``OSError``, or from the text
    safetensors makes of one (``... (os error 28)``)."""
    if isinstance(exc, OutputError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if found and int(found.group(1)) in WRITE_ERRORS:
        return int(found.group(1))
    return None


def output_error(exc: BaseException, path: str | os.PathLike, *, what: str | None = None,
                 then: str = "") -> OutputError | None:
    """``OutputError("cannot write PATH: no space left on the device (ENOSPC)THEN")`` for a write error of
    :data:`WRITE_ERRORS`; ``None`` for anything else (a bug, to be raised as it is)."""
    if isinstance(exc, OutputError):
        return exc
    code = write_errno(exc)
    if code is None:
        return None
    return OutputError(f"cannot write {what or path}: {WRITE_ERRORS[code]} ({errno.errorcode.get(code, code)})"
                       + then, path, code)


def check_writable(folder: str | os.PathLike, *, what: str | None = None) -> None:
    """Raise :class:`OutputError` unless a file can be created in ``folder`` (created when missing): an output
    that cannot be written fails before the work, not after it. The probe file is removed again."""
    folder = Path(folder)
    created = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".ragcun-write-test.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        error = output_error(exc, folder, what=what)
        if error is None:
            raise
        raise error from None
    finally:
        for made in created:  # only a probe: the command creates what it needs when it writes
            try:
                made.rmdir()
            except OSError:
                break


def _write(fh: Any, data: bytes) -> int:
    """Every byte :func:`torch_save` and :func:`write_text_atomic` write goes through here (tests inject a full
    disk at this point)."""
    return fh.write(data)


class _Recorder:
    """A file object for ``torch.save`` that remembers the OSError torch turns into a RuntimeError."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return _write(self.fh, data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, raising the real ``OSError`` (with its errno) when a write fails."""
    import torch

    with open(path, "wb") as fh:
        recorder = _Recorder(fh)
        try:
            torch.save(obj, recorder)
            fh.flush()
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class atomic_path:  # noqa: N801 (used as a context manager, like open)
    """Context manager yielding a temporary path beside ``target``; fsynced and renamed over it on success with
    the usual permissions (0666 less the umask, not mkstemp's 0600, which would hide a scored file or a report
    from the rest of a group), removed on failure."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        if self.target.is_symlink():
            raise ValueError(f"{self.target} is a symbolic link (to {os.readlink(self.target)}); ragcun does not "
                             "replace or write through links it did not make: remove it or write elsewhere")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        except OSError as exc:
            raise (output_error(exc, self.target) or exc) from None
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            error = output_error(exc, self.target)
            if error is not None and error is not exc:
                raise error from None
            return
        try:
            with self.tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            self.tmp.chmod(0o666 & ~current_umask())
            os.replace(self.tmp, self.target)
        except BaseException as failed:  # a failed rename (or a kill right then) must not leave the temporary file
            self.tmp.unlink(missing_ok=True)
            error = output_error(failed, self.target)
            if error is not None and error is not failed:
                raise error from None
            raise


def write_text_atomic(path: str | os.PathLike, text: str, *, skip_unchanged: bool = False) -> None:
    """``path.write_text(text)`` through :class:`atomic_path`; ``skip_unchanged`` leaves a file that already holds
    ``text`` alone."""
    path = Path(path)
    if skip_unchanged and path.is_file() and path.read_text() == text:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (output_error(exc, path.parent) or exc) from None
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            _write(fh, text.encode("utf-8"))


def ignored_by_git(path: str | os.PathLike) -> str | None:
    """The ``.gitignore`` rule that would keep ``path`` out of a commit (``"FILE:LINE:PATTERN"``), or None when
    git would track it, the path is outside a git work tree, or git is not installed.

    Results meant to be committed (an ablation's finished runs, which let another machine resume the plan) are
    silently lost when a broad pattern such as ``runs/`` matches them; callers warn with the rule this names.
    """
    import shutil
    import subprocess

    path = Path(path).absolute()
    probe_dir = path if path.is_dir() else path.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if shutil.which("git") is None:
        return None
    try:
        found = subprocess.run(["git", "check-ignore", "-v", "--no-index", str(path)], cwd=probe_dir,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if found.returncode != 0 or not found.stdout.strip():  # 1: not ignored; 128: not a work tree
        return None
    return found.stdout.split("\t", 1)[0]


def ordinary_permissions(root: Path, names: tuple[str, ...] | None = None) -> None:
    """Folders 0777 and files 0666 less the umask, as any tool's output (mkdtemp and mkstemp make 0700 and 0600):
    ``root`` itself and everything under it, or only ``names`` inside it (and everything under those). Links are
    left alone (chmod would follow them)."""
    mask = current_umask()
    for top in [root / n for n in names] if names is not None else [root]:
        if not top.exists():
            continue
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if not path.is_symlink():
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def fsync_tree(folder: Path) -> None:
    """Every file under ``folder`` on the disk, so the rename that publishes the folder cannot outrun its data."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


@contextmanager
def atomic_folder(target: str | os.PathLike, *, prefix: str | None = None,
                  on_error: Callable[[BaseException], BaseException | None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block succeeds it is given ordinary
    permissions, fsynced and renamed to ``target``. An existing non-empty ``target`` is moved aside first and
    deleted after (no POSIX call swaps two folders), and put back if the second rename fails; an empty one is
    replaced. On any failure, the block's or the rename's, the temporary folder is removed and ``target`` is as
    it was. ``prefix`` names the temporary folders (default ``.TARGET.``; readers of the parent skip them);
    ``on_error(exc)`` may turn the exception into another to raise instead (an :class:`OutputError` saying what
    is safe), or return None to let it through."""
    target = Path(target)
    prefix = prefix or f".{target.name}."

    def reraise(exc: BaseException) -> None:
        error = on_error(exc) if on_error is not None else None
        if error is not None and error is not exc:
            raise error from None

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    except OSError as exc:
        reraise(exc)
        raise
    try:
        yield tmp
        ordinary_permissions(tmp)
        fsync_tree(tmp)
        if target.is_dir() and not target.is_symlink() and any(target.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=target.parent))
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            if target.is_dir() and not target.is_symlink():
                target.rmdir()  # empty: nothing to lose
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reraise(exc)
        raise
