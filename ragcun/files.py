"""Writing files so that a crash never leaves half of one: a temporary file beside the target, renamed over it.

The temporary name is unique (``tempfile.mkstemp``), so processes writing the same target at the same moment
(ablation runs side by side) never rename each other's temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class atomic_path:  # noqa: N801 (used as a context manager, like open)
    """Context manager yielding a temporary path beside ``target``; fsynced and renamed over it on success,
    removed on failure."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        try:
            with self.tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.target)
        except BaseException:  # a failed rename (or a kill right then) must not leave the temporary file
            self.tmp.unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | os.PathLike, text: str, *, skip_unchanged: bool = False) -> None:
    """``path.write_text(text)`` through :class:`atomic_path`, with the usual permissions (0666 less the umask,
    not mkstemp's 0600); ``skip_unchanged`` leaves a file that already holds ``text`` alone."""
    path = Path(path)
    if skip_unchanged and path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o666 & ~current_umask())


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
