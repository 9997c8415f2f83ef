"""Write a whole output folder or nothing: files go into a temporary sibling, renamed into place at the end.

A crash, a Ctrl-C or a refused export leaves no half-written ``OUT`` that a later ``SentenceTransformer(OUT)``
would load. An existing non-empty ``OUT`` is replaced only when asked (``overwrite``), never when it is the
folder being exported or a ragcun checkpoint or training run (an export never holds ``ragcun.json`` or
``train_config.json``, so such a folder is someone's model, not an earlier export).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROTECTED = ("ragcun.json", "train_config.json")


def check_target(out: Path, *, overwrite: bool, protect: Path | None = None) -> None:
    """Raise ``ValueError`` (naming the flag) when ``out`` may not be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {out} exists and is not a folder")
    if protect is not None:
        source, target = protect.resolve(), out.resolve()
        if target == source or target in source.parents:
            raise ValueError(f"OUT {out} holds the model being exported; choose another folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"OUT {out} already exists and is not empty; pass --overwrite to replace it")
        kept = [name for name in PROTECTED if (out / name).exists()]
        if kept:
            raise ValueError(f"OUT {out} is a ragcun checkpoint or training run (it has {kept[0]}), not an export; "
                             "refusing to replace it even with --overwrite")


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool = False, protect: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it becomes ``out``."""
    check_target(out, overwrite=overwrite, protect=protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        _ordinary_permissions(tmp, umask)
        if out.is_dir() and any(out.iterdir()):
            # No POSIX call swaps two folders, so: move the old one aside, move the new one in, then delete the old
            # one. If the second rename fails the old folder is put back.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()  # empty: nothing to lose
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ordinary_permissions(folder: Path, umask: int) -> None:
    """mkdtemp (and some writers' own temporary files) make entries private; an export is an ordinary folder."""
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
