"""Write a whole output folder or nothing: files go into a temporary sibling, renamed into place at the end.

A crash, a Ctrl-C or a refused export leaves no half-written ``OUT`` that a later ``SentenceTransformer(OUT)``
would load. An export never deletes what it did not write: an existing non-empty ``OUT`` is replaced only when
asked (``overwrite``) and only when an earlier export wrote it (it holds :data:`EXPORT_MARKER`, which every
export writes); never when it is the folder being exported, or holds or lies inside a ragcun training run, a
checkpoint or an ablation folder (such a folder is someone's work, not an earlier export). A full disk or an
unwritable place is one line naming ``OUT`` and the cause, with ``OUT`` left as it was.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

EXPORT_MARKER = "ragcun_export.json"  # written by every export (st_export.EXPORT_INFO): "an export wrote this"
PROTECTED = ("ragcun.json", "train_config.json")
# what marks a folder as a training run, a checkpoint or an ablation's results: never replaced by an export
RUN_MARKS = {"train_config.json": "a training run", "config_history.json": "a training run",
             "checkpoints": "a training run", ".ragcun.lock": "a training run", "ragcun.json": "a ragcun checkpoint",
             "trainer.pt": "a ragcun checkpoint", "plan.json": "an ablation folder",
             "preregistration.json": "an ablation folder", "dev_split.json": "an ablation folder",
             "result.json": "an ablation folder", "run_log.jsonl": "an ablation folder"}


def _kind(folder: Path) -> tuple[str, str] | None:
    """``(what it is, the entry that says so)`` when ``folder`` is a run, a checkpoint or an ablation folder."""
    for name, what in RUN_MARKS.items():
        if os.path.lexists(folder / name):
            return what, name
    return None


def _holds(folder: Path) -> tuple[Path, str] | None:
    """A run, checkpoint or ablation folder somewhere inside ``folder`` (links are not followed)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name in RUN_MARKS:
                return Path(root), RUN_MARKS[name]
    return None


def _inside(folder: Path) -> tuple[Path, str] | None:
    """The run, checkpoint or ablation folder that ``folder`` lies inside, if any."""
    for parent in folder.resolve().parents:
        found = _kind(parent)
        if found is not None:
            return parent, found[0]
    return None


def check_target(out: Path, *, overwrite: bool, protect: Path | None = None) -> None:
    """Raise ``ValueError`` (naming the flag) when ``out`` may not be written, and
    :class:`ragcun.files.OutputError` when its folder cannot be written (before any work)."""
    from ragcun.files import check_writable

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
        found = _kind(out)
        if found is not None:
            raise ValueError(f"OUT {out} is {found[0]} (it has {found[1]}), not an export; refusing to replace it "
                             "even with --overwrite")
        around = _inside(out)
        if around is not None:
            raise ValueError(f"OUT {out} lies inside {around[1]} ({around[0]}); refusing to replace it even with "
                             "--overwrite: export to a folder of its own")
        if not (out / EXPORT_MARKER).is_file():
            raise ValueError(f"OUT {out} is not empty and no export wrote it (it has no {EXPORT_MARKER}); --overwrite "
                             "only replaces an earlier export: choose another folder, or empty this one yourself")
        held = _holds(out)  # (only walked for an earlier export: a small folder)
        if held is not None:
            raise ValueError(f"OUT {out} holds {held[1]} ({held[0]}); refusing to replace it even with --overwrite")
    check_writable(out.parent, what=f"OUT {out}")


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool = False, protect: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it becomes ``out``
    (:func:`ragcun.files.atomic_folder`, after :func:`check_target`: only an empty folder or an earlier export is
    ever replaced)."""
    from ragcun.files import atomic_folder as publish, output_error

    check_target(out, overwrite=overwrite, protect=protect)
    with publish(out, on_error=lambda exc: output_error(exc, out, what=f"OUT {out}",
                                                         then=f"; nothing was written ({out} is as it was)")) as tmp:
        yield tmp
