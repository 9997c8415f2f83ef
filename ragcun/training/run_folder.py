"""The run folder: its lock (one writer: :func:`hold_run_folder`), the checks before anything is written (a new
run never overwrites an old one, a resumed run must be the same run, damaged checkpoints are passed over, no
symbolic link the run would write through), restoring a checkpoint, writing the run's record, and saving
checkpoints (rank 0 writes; every rank contributes its RNG state, and every rank learns if rank 0's write
failed)."""

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


def gather_rng_states(ctx: D.DistributedContext) -> list:
    state = ckpt.rng_state(ctx.device)
    if not ctx.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * ctx.world_size
    with D.waiting("all_gather_object (the RNG states for a checkpoint)"):
        dist.all_gather_object(states, {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()})
    return states


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


def load_checkpoint_weights(model, folder: RunFolder) -> None:
    """The resumed checkpoint's weights into ``model`` (its checksum was verified by check_run_folder); a shape that
    differs (a train_config.json edited after the run started) is named, not a traceback."""
    from safetensors.torch import load_file

    from ragcun.model import WEIGHTS_FILE

    path = folder.latest.folder / ckpt.MODEL_FOLDER / WEIGHTS_FILE
    state = load_file(str(path))
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ValueError(f"--resume: {path} holds {key} of shape {tuple(tensor.shape)}, but the settings in "
                             f"{folder.path / 'train_config.json'} build {tuple(own[key].shape)}: the run's settings "
                             "were edited after it started; restore them, or start a new --output-dir")
    model.load_state_dict(state, strict=False)


def restore_trainer_state(folder: RunFolder, config: TrainConfig, ctx: D.DistributedContext, *, optimizer,
                          scheduler, scaler, loss_module, stream, total_steps: int) -> int:
    """Optimizer, loss, scheduler, scaler, data position and RNG states of the checkpoint; returns its step.
    Changed optimizer-side settings (a lower --lr after a divergence) are applied on top."""
    from ragcun.data.training import DataPosition
    from ragcun.training.config import OPTIMIZER_CHANGES
    from ragcun.training.optim import apply_optimizer_settings, lr_lambda, seed_everything

    fresh_groups = [(group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups]
    state = ckpt.load_trainer_state(folder.latest)
    optimizer.load_state_dict(state["optimizer"])
    if state.get("loss") and isinstance(loss_module, torch.nn.Module):
        loss_module.load_state_dict(state["loss"])
    scheduler.load_state_dict(state["scheduler"])
    if any(getattr(folder.saved, k) != getattr(config, k) for k in OPTIMIZER_CHANGES):
        apply_optimizer_settings(optimizer, scheduler, fresh_groups, lr_lambda(config, total_steps))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    step = int(state["step"])
    planned = _planned_steps(folder.latest.folder / ckpt.STATE_FILE)
    if planned and planned != total_steps:
        replan_schedule(config, ctx, optimizer, scheduler, planned_steps=int(planned), total_steps=total_steps,
                        resumed_at=step)
    stream.state = DataPosition(**state["data"])
    rngs = state["rng"]
    if len(rngs) == ctx.world_size:
        ckpt.set_rng_state(rngs[ctx.rank], ctx.device)
    else:  # another world size: the data order is the same, dropout masks cannot be
        seed_everything(config.seed + 1_000_003 * step + ctx.rank)
    return step


def _planned_steps(state_file: Path) -> int | None:
    """The run length the checkpoint was trained toward (its state file's ``total_steps``), if recorded."""
    try:
        value = json.loads(state_file.read_text()).get("total_steps")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def replan_schedule(config: TrainConfig, ctx: D.DistributedContext, optimizer, scheduler, *, planned_steps: int,
                    total_steps: int, resumed_at: int) -> None:
    """A run resumed with another --steps: the schedule continues from the current rate (see
    :func:`ragcun.training.optim.replanned_lr_lambda`), and rank 0 says so (config_history.json records the
    change of ``steps``)."""
    from ragcun.training.optim import replanned_lr_lambda

    factor = replanned_lr_lambda(config, total_steps, planned_steps=planned_steps, resumed_at=resumed_at)
    scheduler.lr_lambdas = [factor] * len(optimizer.param_groups)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor(resumed_at)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if ctx.is_main:
        from ragcun.console import stderr

        stderr.print(f"--steps changed from {planned_steps} to {total_steps} at step {resumed_at}: the learning rate "
                     f"continues from {scheduler._last_lr[0]:.3g} and follows the {config.schedule} schedule to the "
                     f"new last step (docs/training.md, 'Resuming')", highlight=False, soft_wrap=True)


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


class CheckpointSaver:
    """``save(step, loss)``: every rank hands over its RNG state, rank 0 writes the checkpoint atomically
    (ragcun.training.checkpoint), and all ranks wait for it."""

    def __init__(self, folder: Path, config: TrainConfig, ctx: D.DistributedContext, *, model, optimizer, scheduler,
                 scaler, loss_module, stream, total_steps: int) -> None:
        self.folder, self.config, self.ctx, self.total_steps = folder, config, ctx, total_steps
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.loss_module, self.stream = loss_module, stream

    def save(self, step: int, last_loss: float | None) -> Path | None:
        rngs = gather_rng_states(self.ctx)

        def write() -> Path:
            loss_state = self.loss_module.state_dict() if isinstance(self.loss_module, torch.nn.Module) else None
            return ckpt.save_checkpoint(self.folder, step, model=self.model, optimizer=self.optimizer,
                                        scheduler=self.scheduler, scaler=self.scaler, rng_states=rngs,
                                        loss_state=loss_state, data_position=self.stream.state.as_dict(),
                                        keep=self.config.keep_checkpoints,
                                        extra={"loss": last_loss, "total_steps": self.total_steps,
                                               "world_size": self.ctx.world_size,
                                               "global_batch": self.config.batch_size * self.ctx.world_size
                                               * self.config.grad_accum})

        # every rank waits for rank 0's write, and stops with its error (a full disk) instead of waiting forever
        return on_main(self.ctx, write, f"saving the checkpoint of step {step}")
