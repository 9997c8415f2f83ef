"""The run folder: its lock (one writer: :func:`hold_run_folder`), the checks before anything is written (a new
run never overwrites an old one, a resumed run must be the same run, damaged checkpoints are passed over, no
symbolic link the run would write through), writing the run's record, and :func:`on_main` (rank 0 writes, every
rank learns if its write failed). Saving a checkpoint and resuming from one are the training state's
(:mod:`ragcun.training.state`)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

import ragcun.distributed as D
from ragcun.training import checkpoint as ckpt
from ragcun.training.config import TrainConfig

# what a run writes in its folder: none of these may be a symbolic link (ragcun would write through it)
RUN_ENTRIES = ("train_config.json", "config_history.json", "metrics.jsonl", ckpt.CHECKPOINTS, "model.safetensors",
               "ragcun.json", "encoder", "tensorboard")
RUN_TREES = (ckpt.CHECKPOINTS, "encoder", "tensorboard")


@contextmanager
def hold_run_folder(config: TrainConfig, ctx: D.DistributedContext):
    """Hold ``--output-dir``'s lock for the run (rank 0 takes it; every rank fails when it cannot): a second
    ``ragcun train`` (or ``--resume``) on the same folder stops at once with the holder's pid, host, command and
    start time. Released on any exit; the kernel releases it when the process dies."""
    from ragcun.run_lock import RunLocked, acquire

    out_dir = Path(config.output_dir)
    lock, error = None, None
    if ctx.is_main and not (out_dir.exists() and not out_dir.is_dir()):  # a file: check_run_folder says so
        try:
            lock = acquire(out_dir, what="ragcun train", label=f"--output-dir {out_dir}")
        except ValueError as exc:
            error = exc
    message = D.broadcast_object(None if error is None else str(error), ctx)
    if message is not None:
        if error is not None:
            raise error
        raise RunLocked(message)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def refuse_links(out_dir: Path) -> None:
    """A symbolic link where the run writes (left there by someone else: ragcun makes none) is refused, so the
    run never writes through it into another folder or file."""
    for name in RUN_ENTRIES:
        path = out_dir / name
        found = [path] if path.is_symlink() else []
        if not found and name in RUN_TREES and path.is_dir():
            for root, dirs, files in os.walk(path):  # does not follow links
                found += [Path(root, n) for n in dirs + files if Path(root, n).is_symlink()]
        if found:
            raise ValueError(f"{found[0]} is a symbolic link (to {os.readlink(found[0])}); a run never writes "
                             f"through links it did not make: remove it, or choose another --output-dir")


def on_main(ctx: D.DistributedContext, fn, what: str):
    """``fn()`` on rank 0; if it raises, every rank raises (the others would otherwise wait for rank 0 until the
    process group's timeout): an OutputError (full disk, read-only folder) with its message on every rank."""
    from ragcun.files import OutputError

    value, failure = None, None
    if ctx.is_main:
        try:
            value = fn()
        except Exception as exc:
            failure = exc
    message = D.broadcast_object(None if failure is None else (isinstance(failure, OutputError), str(failure)), ctx)
    if failure is not None:
        raise failure
    if message is not None:
        output, text = message
        raise OutputError(text) if output else RuntimeError(f"rank 0 failed while {what}: {text}")
    return value



def remove_leftovers(out_dir: Path) -> None:
    """Temporary files of a write that a kill interrupted (the final model's, the config's, a checkpoint's)."""
    import shutil

    for folder in (out_dir, out_dir / "encoder"):
        for stale in folder.glob(".*.tmp"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
    (out_dir / "train_config.json.tmp").unlink(missing_ok=True)
    for stale in (out_dir / ckpt.CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def elastic_resume(out_dir: Path, config: TrainConfig, latest: ckpt.Checkpoint | None) -> str | None:
    """On a torchrun restart: a message saying this run resumes by itself, when ``out_dir`` holds a checkpoint
    of this same run (the same settings, begun or last resumed by this torchrun job: the run id recorded in
    config_history.json is this job's); ``None`` otherwise (then the usual checks say what is wrong)."""
    from ragcun.training.config import HISTORY_FILE

    if latest is None:  # died before its first checkpoint: the restart starts over, which is the same run
        return None
    try:
        saved = TrainConfig.load(out_dir)
        history = json.loads((out_dir / HISTORY_FILE).read_text())
        last_entry = history[-1] if isinstance(history, list) and history else {}
    except (OSError, ValueError):
        return None
    if saved.differences(config) or not isinstance(last_entry, dict):
        return None
    if last_entry.get("torchelastic_run_id") != D.elastic_run_id():
        return None  # a run some other launch left in this folder: not ours to continue
    return (f"torchrun restarted the workers (run id {D.elastic_run_id()}): resuming {out_dir} from its last "
            "checkpoint, as --resume would")


@dataclass
class RunFolder:
    """What the checks found in ``--output-dir``: whether this invocation resumes, from which checkpoint, the
    run's saved settings, and what to tell the user once the display is up."""

    path: Path
    resume: bool
    latest: ckpt.Checkpoint | None = None  # the checkpoint to resume from (verified)
    saved: TrainConfig | None = None  # the run's train_config.json when resuming
    warnings: list[str] = field(default_factory=list)  # damaged checkpoints passed over
    started_over: bool = False  # a run that failed before its first checkpoint, begun again


def check_run_folder(config: TrainConfig, ctx: D.DistributedContext, resume: bool) -> RunFolder:
    """A new run never overwrites an old one; a resumed run must be the same run (its settings, a checkpoint
    that verifies); a torchrun restart resumes its own run by itself. Every rank checks; nothing is written."""
    out_dir = Path(config.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output-dir {out_dir} is a file, not a folder; give a folder for the run")
    refuse_links(out_dir)
    latest = ckpt.latest_checkpoint(out_dir)
    has_final_model = (out_dir / "ragcun.json").exists() or (out_dir / "model.safetensors").exists()
    restarted = D.elastic_restart_count() > 0
    if ctx.enabled and not resume:
        # torchrun counts restarts per node: a node whose workers were restarted because another node's failed
        # may say 0, so any rank's count counts (every rank takes part, whatever its own count)
        flag = torch.tensor([float(restarted)], device=ctx.device)
        restarted = float(D.all_reduce_mean(flag, ctx)[0]) > 0
    if restarted and not resume:
        # torchrun restarted the workers after one failed (--max-restarts): the same command line comes back,
        # without --resume, so continue this run from its last checkpoint as --resume would. Rank 0 decides and
        # tells the others, so that every rank takes the same branch.
        why = elastic_resume(out_dir, config, latest) if ctx.is_main else None
        why = D.broadcast_object(why, ctx)
        if why is not None:
            resume = True
            if ctx.is_main:
                from ragcun.console import stderr

                stderr.print(why, highlight=False, soft_wrap=True)
    folder = RunFolder(out_dir, resume)
    if resume:
        if latest is None:
            started = (out_dir / "train_config.json").is_file()
            raise ValueError(f"--resume: {out_dir} has no checkpoint to resume from "
                             f"(looked in {out_dir / ckpt.CHECKPOINTS})"
                             + ("; the run stopped before its first checkpoint: start it again without --resume "
                                "(the same --output-dir is reused)" if started and not has_final_model else ""))
        bad: list[tuple[ckpt.Checkpoint, str]] = []
        folder.latest = ckpt.latest_good_checkpoint(out_dir, on_bad=lambda c, why: bad.append((c, why)))
        if folder.latest is None:
            listed = "; ".join(f"{c.folder}: {why}" for c, why in bad)
            raise ValueError(f"--resume: no good checkpoint in {out_dir / ckpt.CHECKPOINTS} ({listed}); "
                             "start a new --output-dir")
        folder.warnings = [f"--resume: skipping the damaged checkpoint {c.folder} ({why}); resuming from "
                           f"{folder.latest.folder} (step {folder.latest.step})" for c, why in bad]
        folder.saved = TrainConfig.load(out_dir)
        check_world_size(folder.latest, config, ctx)
        diff = folder.saved.differences(config)
        if diff:
            listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            memory = any(str(v).startswith("memory:") for v in diff.get("train_data", ()))
            raise ValueError(f"--resume: settings differ from the run in {out_dir} ({listed}); "
                             + ("the in-memory examples differ from the run's: a resumed run needs the same "
                                "examples it started with; " if memory else "")
                             + "resume with the run's settings or start a new --output-dir")
    elif latest is not None or has_final_model:
        raise ValueError(f"--output-dir {out_dir} already holds a training run; pass --resume to continue it "
                         "or choose another --output-dir")
    else:  # a run that failed before its first checkpoint left nothing to continue: start it over
        folder.started_over = (out_dir / "train_config.json").exists()
    D.barrier(ctx)  # every rank has checked the folder before rank 0 writes into it
    return folder


def check_world_size(latest: ckpt.Checkpoint, config: TrainConfig, ctx: D.DistributedContext) -> None:
    """A resumed run keeps its number of processes: another one would change the global batch (and so the loss,
    the in-batch negatives and the data order) without a word. Refused, naming both; checkpoints from before the
    world size was recorded are not checked."""
    try:
        saved = json.loads((latest.folder / ckpt.STATE_FILE).read_text()).get("world_size")
    except (OSError, ValueError):
        return
    if not isinstance(saved, int) or isinstance(saved, bool) or saved == ctx.world_size:
        return
    per_step = config.batch_size * config.grad_accum
    raise ValueError(f"--resume: the run trained with {saved} process(es) (a global batch of {per_step * saved} "
                     f"pairs) and this resume has {ctx.world_size} ({per_step * ctx.world_size} pairs); the global "
                     f"batch would change silently. Resume with {saved} process(es) (--nproc-per-node {saved}, or "
                     "torchrun's), or start a new --output-dir")


def write_run_record(folder: RunFolder, config: TrainConfig, ctx: D.DistributedContext, step: int) -> None:
    """Rank 0 creates the folder and writes train_config.json and the history entry (only now: bad data or
    settings have failed before, without leaving an empty run folder)."""
    from ragcun.training.config import record_history
    from ragcun.training.logs import METRICS_FILE

    def write() -> None:
        from ragcun.files import output_error

        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            remove_leftovers(folder.path)
            if folder.started_over:  # the records of a run that never reached a checkpoint
                (folder.path / METRICS_FILE).unlink(missing_ok=True)
            config.save(folder.path)
            record_history(folder.path, config, previous=folder.saved, step=step,
                           checkpoint=folder.latest.folder.name if folder.resume else None,
                           world_size=ctx.world_size)
        except OSError as exc:
            raise (output_error(exc, folder.path, what=f"--output-dir {folder.path}") or exc) from None

    on_main(ctx, write, "writing the run's train_config.json")  # every rank waits for it (and fails with it)
