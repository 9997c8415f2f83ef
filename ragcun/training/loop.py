"""The training loop: one function, read top to bottom.

    setup (process group, seeds, model, loss, data, optimizer, schedule, resume)
    for each optimizer step:
        for each micro-batch (gradient accumulation):
            embed queries, positives, negatives -> loss -> backward      (or the same through GradCache)
        agree across ranks on the loss (logging) and on faults (NaN, Ctrl-C)
        clip, step, schedule; log; checkpoint every K steps; evaluate every E steps
    save the final model

Gradient bookkeeping under DDP: each rank computes its loss on its own slice of the global batch; the
losses gather candidates / all-reduce statistics *with gradient* (ragcun.distributed), and DDP averages
parameter gradients, so the step equals one process's step on the concatenated batch
(tests/test_training_distributed.py). The logged loss is the mean of the ranks' losses, which is the
single-process loss of the global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragcun.training import checkpoint as ckpt
from ragcun.training import distributed as D
from ragcun.training.config import OPTIMIZER_CHANGES, TrainConfig, record_history

METRICS_FILE = "metrics.jsonl"
DIAGNOSTIC_SAMPLE = 256  # texts embedded for the periodic isotropy diagnostics


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and the last good checkpoint was left intact."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int  # optimizer steps completed
    total_steps: int
    losses: list[float] = field(default_factory=list)  # per step of this invocation: the global mean loss
    terms: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    already_finished: bool = False  # --resume on a run that had finished: nothing was done or changed
    resumed_from: int | None = None
    model_dir: Path | None = None  # the final model (None when interrupted)
    pairs_per_s: float = 0.0
    peak_memory_mb: float | None = None


# -- small helpers ---------------------------------------------------------------------------------------
def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("--dtype float16 needs a CUDA device (loss scaling); on a CPU use bfloat16 or float32")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--dtype bfloat16: this GPU does not support bfloat16; use float16 or float32")
    return dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(config.warmup) if config.warmup >= 1 else round(config.warmup * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def make_optimizer(model, config: TrainConfig, device: torch.device, loss_module=None) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; the head may have its own learning rate; a loss's own
    parameters (e.g. a learnable temperature) train with the head's rate and no decay."""
    groups: dict[tuple[bool, bool], list] = {}
    loss_params = [p for p in (loss_module.parameters() if isinstance(loss_module, torch.nn.Module) else [])
                   if p.requires_grad]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2
        is_head = name.startswith("head.")
        groups.setdefault((decay, is_head), []).append(param)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    param_groups = [{"params": params, "weight_decay": config.weight_decay if decay else 0.0,
                     "lr": (config.head_lr or config.lr) if is_head else config.lr}
                    for (decay, is_head), params in sorted(groups.items())]
    if loss_params:
        param_groups.append({"params": loss_params, "weight_decay": 0.0, "lr": config.head_lr or config.lr})
    # the fused kernel updates every tensor in one pass; on a CPU it is ~8x faster than torch's default
    # per-tensor loop (MiniLM: 14 ms against 112 ms a step, one thread; benchmarks/bench_optimizer.py)
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=config.lr, fused=fused or None)


class MetricsLog:
    """JSON lines (always) and TensorBoard (when installed), written by rank 0 only."""

    def __init__(self, folder: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = folder / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():  # drop records the resumed run will redo
            kept = [line for line, record in self._records() if record.get("step", 0) <= resume_step]
            # written aside and renamed: a kill at any moment leaves the old file or the new one, never less
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                with tmp.open("w") as fh:
                    fh.write("".join(line + "\n" for line in kept))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def _records(self) -> list[tuple[str, dict]]:
        """The file's (line, record) pairs. A torn last line (a kill mid-write) is dropped; any other line
        that is not a JSON object is an error naming the file and line."""
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if number == len(lines):  # the record being written when the run was killed
                    continue
                raise ValueError(f"{self.path} line {number}: not a metrics record ({exc}); fix or remove "
                                 "that line, then --resume again") from None
            out.append((line, record))
        return out

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


class LiveDisplay:
    """A rich progress line on stderr (rank 0): step, loss terms, lr, samples/s, ETA. Plain lines when stderr
    is not a terminal (CI logs)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ragcun.console import stderr

        self.console = stderr
        if stderr.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"), console=stderr)
            self.progress.start()
            self.task = self.progress.add_task("", total=total, completed=start)

    def update(self, step: int, text: str, log_line: bool) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, description=text)
        elif log_line:
            self.console.print(f"step {step}: {text}", highlight=False, soft_wrap=True)

    def print(self, text: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress is not None else self.console).print(text, highlight=False,
                                                                                         soft_wrap=True)

    def warn(self, text: str) -> None:
        """Shown even with --no-progress: a warning must not depend on the progress display."""
        from ragcun.console import stderr

        (self.progress.console if self.progress is not None else stderr).print(
            f"[yellow]warning:[/yellow] {text}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _format_terms(loss: float, terms: dict[str, float], lr: float, rate: float, eta_s: float | None) -> str:
    parts = [f"loss {loss:.4f}"] + [f"{k} {v:.4f}" for k, v in terms.items()]
    parts += [f"lr {lr:.2e}", f"{rate:.1f} pairs/s"]
    if eta_s is not None:
        parts.append(f"ETA {int(eta_s // 60)}m{int(eta_s % 60):02d}s")
    return "  ".join(parts)


def build_training_model(config: TrainConfig):
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(config.encoder, config.head, config.distance, config.settings or None)
    if config.freeze_encoder:
        for param in model.encoder.parameters():
            param.requires_grad_(False)
    return model


def freeze_unused_parameters(model) -> list[str]:
    """Stop training parameters the embedding never uses (e.g. a BERT pooler beside mean pooling).

    They would never receive a gradient (so AdamW would skip them anyway), but DDP requires every trained
    parameter to get one each step. One tiny forward/backward finds them.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    was_training = model.training
    model.eval()
    try:
        out = model.embed(["a"])
        total = out.mean.sum() + (out.logvar.sum() if out.logvar is not None else 0.0)
        grads = torch.autograd.grad(total, [p for _, p in trainable], allow_unused=True)
    finally:
        model.train(was_training)
    unused = [n for (n, p), g in zip(trainable, grads) if g is None]
    for name, param in trainable:
        if name in unused:
            param.requires_grad_(False)
    return unused


def build_training_loss(config: TrainConfig, model):
    from ragcun.components import check_compatible
    from ragcun.losses.composite import build_loss

    loss = build_loss(config.loss, config.settings or None, distance=model.distance, dim=model.dim)
    check_compatible(model.head, loss, head_name=config.head, distance_name=f"loss {config.loss}")
    return loss


# SIGReg measures the distance of every 1-D projection from N(0, 1): embeddings whose coordinates spread far
# less than 1 look nearly collapsed to it, and its gradient then barely moves them (measured: benchmarks/RESULTS.md)
SMALL_SPREAD = 0.2
SCALE_PROBE = 32  # documents embedded once before training to check that spread


def isotropy_weight(loss_module) -> float:
    """The total weight a (composite) loss gives SIGReg terms."""
    from ragcun.losses.isotropy import IsotropyLoss

    weights = getattr(loss_module, "weights", {})
    modules = getattr(loss_module, "losses", {})
    return sum(weight for name, weight in weights.items() if name in modules and isinstance(modules[name], IsotropyLoss))


def isotropy_scale_warning(loss_module, embeddings: torch.Tensor) -> str | None:
    """A warning when the loss gives the isotropy term a weight but the embeddings (N, D) are too small for it
    to act (e.g. an identity head, or a gaussian head with ``init_scale=1``, on an encoder that outputs unit
    vectors; the default ``init_scale="auto"`` calibrates them to spread 1); else ``None``."""
    if isotropy_weight(loss_module) <= 0 or embeddings.shape[0] < 2:
        return None
    spread = float(embeddings.detach().float().std(dim=0).mean())  # mean per-coordinate std over the sample
    if spread >= SMALL_SPREAD:
        return None
    factor = 1.0 / max(spread, 1e-6)
    return (f"the isotropy term will barely act: the embeddings' coordinates spread {spread:.3f} on average, "
            "while SIGReg measures the distance from N(0, I) (spread 1), so it sees a nearly collapsed batch. "
            "To let it act, use --head gaussian with its default --set head.gaussian.init_scale=auto (calibrated "
            f"from the training data before the first step), or scale the embeddings by about {factor:.3g} "
            "yourself (a head whose outputs are that much larger, with the contrastive temperature multiplied "
            "by the same factor for euclidean distance)")


def _as_output(result):
    from ragcun.losses.base import LossOutput

    return result if isinstance(result, LossOutput) else LossOutput(result, {})


# -- the loop ----------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, loss_fn: Callable | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train as ``config`` says; with ``resume`` continue the run in ``config.output_dir`` exactly.

    ``loss_fn`` overrides the loss built from ``config.loss`` (tests). ``stop_after`` ends this invocation
    after that many optimizer steps without finishing the run (tests of resumption).
    """
    config.validate()
    ctx = D.setup(config.device)
    try:
        return _train(config, ctx, resume=resume, loss_fn=loss_fn, stop_after=stop_after)
    finally:
        D.teardown(ctx)


def _train(config: TrainConfig, ctx: D.DistributedContext, *, resume: bool, loss_fn, stop_after) -> TrainResult:
    from ragcun.data.training import BatchStream, DataPosition, open_source
    from ragcun.losses.base import LossInputs
    from ragcun.training.grad_cache import GradCache, forward_texts, touch

    device = ctx.device
    out_dir = Path(config.output_dir)
    # -- the run folder: a new run never overwrites an old one; a resumed run must be the same run ---------
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output-dir {out_dir} is a file, not a folder; give a folder for the run")
    latest = ckpt.latest_checkpoint(out_dir)
    saved = None
    skipped: list[str] = []  # damaged checkpoints passed over on resume, said once the display is up
    has_final_model = (out_dir / "ragcun.json").exists() or (out_dir / "model.safetensors").exists()
    started_over = False
    restarted = D.elastic_restart_count() > 0
    if ctx.enabled and not resume:
        # torchrun counts restarts per node: a node whose workers were restarted because another node's failed
        # may say 0, so any rank's count counts (every rank takes part, whatever its own count)
        flag = torch.tensor([float(restarted)], device=device)
        restarted = float(D.all_reduce_mean(flag, ctx)[0]) > 0
    if restarted and not resume:
        # torchrun restarted the workers after one failed (--max-restarts): the same command line comes back,
        # without --resume, so continue this run from its last checkpoint as --resume would. Rank 0 decides and
        # tells the others, so that every rank takes the same branch.
        why = _elastic_resume(out_dir, config, latest) if ctx.is_main else None
        why = D.broadcast_object(why, ctx)
        if why is not None:
            resume = True
            if ctx.is_main:
                from ragcun.console import stderr

                stderr.print(why, highlight=False, soft_wrap=True)
    if resume:
        if latest is None:
            started = (out_dir / "train_config.json").is_file()
            raise ValueError(f"--resume: {out_dir} has no checkpoint to resume from "
                             f"(looked in {out_dir / ckpt.CHECKPOINTS})"
                             + ("; the run stopped before its first checkpoint: start it again without --resume "
                                "(the same --output-dir is reused)" if started and not has_final_model else ""))
        bad: list[tuple[ckpt.Checkpoint, str]] = []
        latest = ckpt.latest_good_checkpoint(out_dir, on_bad=lambda c, why: bad.append((c, why)))
        if latest is None:
            listed = "; ".join(f"{c.folder}: {why}" for c, why in bad)
            raise ValueError(f"--resume: no good checkpoint in {out_dir / ckpt.CHECKPOINTS} ({listed}); "
                             "start a new --output-dir")
        skipped = [f"--resume: skipping the damaged checkpoint {c.folder} ({why}); resuming from "
                   f"{latest.folder} (step {latest.step})" for c, why in bad]
        saved = TrainConfig.load(out_dir)
        diff = saved.differences(config)
        if diff:
            listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"--resume: settings differ from the run in {out_dir} ({listed}); "
                             "resume with the run's settings or start a new --output-dir")
    elif latest is not None or has_final_model:
        raise ValueError(f"--output-dir {out_dir} already holds a training run; pass --resume to continue it "
                         "or choose another --output-dir")
    else:  # a run that failed before its first checkpoint left nothing to continue: start it over
        started_over = (out_dir / "train_config.json").exists()
    D.barrier(ctx)  # every rank has checked the folder before rank 0 writes into it

    # -- model, loss, precision (same seed on every rank: identical initial weights) ---------------------
    seed_everything(config.seed)
    model = build_training_model(config)
    if resume:
        from safetensors.torch import load_file

        from ragcun.model import WEIGHTS_FILE

        state = load_file(str(latest.folder / ckpt.MODEL_FOLDER / WEIGHTS_FILE))
        model.load_state_dict(state, strict=False)
    model.to(device)
    freeze_unused_parameters(model)
    loss_module = loss_fn if loss_fn is not None else build_training_loss(config, model)
    if isinstance(loss_module, torch.nn.Module):
        loss_module.to(device)
    dtype = resolve_dtype(config.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not torch.float32 else None
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # -- data ------------------------------------------------------------------------------------------------
    mined = None
    if config.mine_negatives:
        from ragcun.training.negatives import mined_negatives_for

        mined = mined_negatives_for(config, model, ctx)
    source = open_source(config.train_data, data_dir=config.data_dir, seed=config.seed, negatives=config.negatives,
                         qrels_threshold=config.qrels_threshold, shuffle_buffer=config.shuffle_buffer, mined=mined)
    if next(iter(source.examples(0)), None) is None:  # an empty file: say so, not an IndexError downstream
        raise ValueError(f"--train-data {config.train_data}: {source.description} holds no training examples")
    stream = BatchStream(source, config.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    if config.steps is not None:
        total_steps = int(config.steps)
    else:
        per_epoch = stream.steps_per_epoch()
        if per_epoch == 0:
            raise ValueError(f"{source.description}: fewer examples than one global batch "
                             f"({ctx.world_size} x --batch-size {config.batch_size})")
        total_steps = max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))

    # -- calibration (new runs only): a head with init_scale="auto" gets unit-scale outputs -----------------
    from ragcun.training.calibration import calibrate, probe_texts

    calibration = None if resume else calibrate(model, loss_module, probe_texts(source), ctx)

    _name_loss_failures(loss_module)

    # -- optimizer, schedule, resume state -------------------------------------------------------------------
    optimizer = make_optimizer(model, config, device, loss_module)
    loss_params = [p for p in (loss_module.parameters() if isinstance(loss_module, torch.nn.Module) else [])
                   if p.requires_grad]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    step = 0
    if resume:
        fresh_groups = [(group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups]
        state = ckpt.load_trainer_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("loss") and isinstance(loss_module, torch.nn.Module):
            loss_module.load_state_dict(state["loss"])
        scheduler.load_state_dict(state["scheduler"])
        if any(getattr(saved, k) != getattr(config, k) for k in OPTIMIZER_CHANGES):
            _apply_optimizer_settings(optimizer, scheduler, fresh_groups, lr_lambda(config, total_steps))
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        stream.state = DataPosition(**state["data"])
        rngs = state["rng"]
        if len(rngs) == ctx.world_size:
            ckpt.set_rng_state(rngs[ctx.rank], device)
        else:  # another world size: the data order is the same, dropout masks cannot be
            seed_everything(config.seed + 1_000_003 * step + ctx.rank)
    else:
        seed_everything(config.seed + ctx.rank)  # different dropout masks per rank
    if resume and step >= total_steps and ckpt.verify_model_folder(out_dir) is None:
        # a finished run (its final model verifies): nothing to do, and nothing in the folder changes
        D.barrier(ctx)
        return TrainResult(out_dir, step, total_steps, resumed_from=step, model_dir=out_dir, already_finished=True)
    if ctx.is_main:  # only now: bad data or settings fail above without leaving an empty run folder
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out_dir)
        if started_over:  # the records of a run that never reached a checkpoint
            (out_dir / METRICS_FILE).unlink(missing_ok=True)
        config.save(out_dir)
        record_history(out_dir, config, previous=saved, step=step,
                       checkpoint=latest.folder.name if resume else None)
    D.barrier(ctx)

    forward_module = D.wrap(model, ctx)
    grad_cache = GradCache(model, forward_module, config.grad_cache_chunk, autocast) if config.grad_cache_chunk else None
    trainable = [p for p in model.parameters() if p.requires_grad] + loss_params
    named_trainable = ([(n, p) for n, p in model.named_parameters() if p.requires_grad]
                       + [(f"loss.{i}", p) for i, p in enumerate(loss_params)])
    log = MetricsLog(out_dir, ctx.is_main, step if resume else None)
    display = LiveDisplay(ctx.is_main and config.show_progress, total_steps, step)
    for message in skipped if ctx.is_main else ():
        display.warn(message)
    display.print(f"training {config.encoder} + {config.head} head, loss {config.loss}, on {source.description}; "
                  f"{ctx.world_size} process(es) x batch {config.batch_size} x accumulation {config.grad_accum}, "
                  f"{total_steps} steps, {device}, {str(dtype).replace('torch.', '')}"
                  + (f", resuming at step {step}" if resume else ""))
    if calibration is not None:
        log.write({"step": 0, "calibration": calibration.as_dict()})
        display.print(f"calibrated the {config.head} head from {calibration.probe_texts} training texts: outputs x "
                      f"{calibration.factor:.4g}{', centred' if calibration.centered else ''}; contrastive "
                      f"temperature x {calibration.temperature_factor:.4g} (the same initial logits)")
    diag_texts = _diagnostic_texts(source) if config.diagnostics_every else None
    if ctx.is_main and isotropy_weight(loss_module) > 0:  # say so now if SIGReg cannot act on these embeddings
        probe = (diag_texts or _diagnostic_texts(source, limit=SCALE_PROBE))[:SCALE_PROBE]
        model.eval()
        with torch.no_grad():
            warning = isotropy_scale_warning(loss_module, model.embed(probe).mean)
        if warning:
            display.warn(warning)
    eval_set = _load_eval_set(config) if config.eval_every else None

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        if interrupted["flag"]:  # a second Ctrl-C: stop now (the last checkpoint is intact)
            raise KeyboardInterrupt
        interrupted["flag"] = True
        display.print("interrupted: finishing this step, saving a checkpoint, then exiting "
                      "(Ctrl-C again to stop at once)")

    previous_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None

    def save(current_step: int, last_loss: float | None) -> Path | None:
        rngs = _gather_rng_states(ctx)
        path = None
        if ctx.is_main:
            path = ckpt.save_checkpoint(out_dir, current_step, model=model, optimizer=optimizer,
                                        scheduler=scheduler, scaler=scaler, rng_states=rngs,
                                        loss_state=(loss_module.state_dict()
                                                    if isinstance(loss_module, torch.nn.Module) else None),
                                        data_position=stream.state.as_dict(), keep=config.keep_checkpoints,
                                        extra={"loss": last_loss, "total_steps": total_steps})
        D.barrier(ctx)
        return path

    result = TrainResult(out_dir, step, total_steps, resumed_from=step if resume else None)
    pairs_per_step = config.batch_size * ctx.world_size * config.grad_accum
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    steps_this_run = 0
    term_names: list[str] | None = None
    try:
        while step < total_steps and (stop_after is None or steps_this_run < stop_after):
            t0 = time.perf_counter()
            model.train()
            if config.freeze_encoder:
                model.encoder.eval()  # a frozen encoder gives deterministic features: no dropout
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            terms_sum: dict[str, torch.Tensor] = {}
            nonfinite = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                batch = stream.next_batch()
                sync = micro == config.grad_accum - 1
                if grad_cache is not None:
                    out = grad_cache.step(batch, lambda inputs: _as_output(loss_module(inputs)), step,
                                          scale=1.0 / config.grad_accum, sync=sync, scaler=scaler)
                else:
                    no_sync = getattr(forward_module, "no_sync", None)
                    with no_sync() if (no_sync is not None and not sync) else nullcontext():
                        q = forward_texts(forward_module, model.tokenize, batch.queries, device, autocast)
                        p = forward_texts(forward_module, model.tokenize, batch.positives, device, autocast)
                        n = (forward_texts(forward_module, model.tokenize, batch.negatives, device, autocast)
                             if batch.negatives else None)
                        out = _as_output(loss_module(LossInputs(q, p, n, positive_ids=batch.positive_ids,
                                                                negative_ids=batch.negative_ids, step=step)))
                        total = out.total / config.grad_accum + touch(q) + touch(p) + (touch(n) if n is not None else 0.0)
                        (scaler.scale(total) if scaler is not None else total).backward()
                value = out.total.detach().float()
                nonfinite = nonfinite + (~torch.isfinite(value)).float()
                loss_sum = loss_sum + value / config.grad_accum
                for key, term in out.terms.items():
                    terms_sum[key] = terms_sum.get(key, 0.0) + term.detach().float() / config.grad_accum
            # -- agree across ranks: mean loss and terms (for the log), any NaN, any Ctrl-C ---------------
            if term_names is None:
                term_names = list(terms_sum)
            flags = torch.stack([loss_sum, *[terms_sum[k] for k in term_names], nonfinite,
                                 torch.tensor(float(interrupted["flag"]), device=device)])
            flags = torch.where(torch.isfinite(flags), flags, torch.full_like(flags, float("nan")))
            agreed = D.all_reduce_mean(flags, ctx).tolist()
            loss_value, term_values = agreed[0], dict(zip(term_names, agreed[1:1 + len(term_names)]))
            if agreed[-2] > 0 or not math.isfinite(loss_value):
                raise TrainingDiverged(f"the loss is {loss_value} at step {step + 1}: training stopped; "
                                       + _last_good(out_dir))
            if loss_params and ctx.enabled:  # DDP averages the model's gradients; the loss's are ours to average
                for param in loss_params:
                    if param.grad is not None:
                        param.grad = D.all_reduce_mean(param.grad, ctx)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = None
            if config.max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
                if not math.isfinite(grad_norm) and scaler is None:
                    raise TrainingDiverged(f"the gradient norm is {grad_norm} at step {step + 1}: training stopped; "
                                           + _last_good(out_dir))
            lr = scheduler.get_last_lr()[0]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            # a checkpoint or final model is only ever written from finite weights: check every step
            # (one device sync), so the run stops at the step that broke them
            broken = ckpt.nonfinite_tensors(named_trainable)
            if broken:
                raise TrainingDiverged(
                    f"the weights became non-finite at step {step + 1} ({len(broken)} of {len(named_trainable)} "
                    f"trained tensors, e.g. {', '.join(broken[:3])}): the optimizer step overflowed (is --lr "
                    f"{config.lr:g} too high?); training stopped and nothing was saved from this step; "
                    + _last_good(out_dir))
            scheduler.step()
            step += 1
            steps_this_run += 1
            dt = time.perf_counter() - t0
            elapsed = time.perf_counter() - t_start
            rate = pairs_per_step * steps_this_run / elapsed
            result.losses.append(loss_value)
            result.terms.append(term_values)
            record = {"step": step, "loss": loss_value, "terms": term_values, "lr": lr, "step_s": dt,
                      "pairs_per_s": rate, "epoch": stream.state.epoch}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if step % config.log_every == 0 or step == total_steps:
                log.write(record)
            eta = elapsed / steps_this_run * (total_steps - step)
            display.update(step, _format_terms(loss_value, term_values, lr, rate, eta),
                           step % config.log_every == 0 or step == total_steps)
            # -- periodic work --------------------------------------------------------------------------------
            if step % config.save_every == 0 or step == total_steps or agreed[-1] > 0:
                save(step, loss_value)
            if eval_set is not None and step % config.eval_every == 0:
                log.write({"step": step, "eval": _evaluate(model, eval_set, config, autocast)})
            if diag_texts is not None and step % config.diagnostics_every == 0:
                diagnostics = _diagnostics(model, diag_texts, config, ctx)
                if diagnostics is not None:
                    log.write({"step": step, "diagnostics": diagnostics})
            if agreed[-1] > 0:  # some rank saw Ctrl-C; every rank saved above and stops here
                result.interrupted = True
                display.print(f"interrupted at step {step}; checkpoint saved in {out_dir / ckpt.CHECKPOINTS}; "
                              "continue with --resume")
                break
    finally:
        display.close()
        log.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    result.step = step
    elapsed = time.perf_counter() - t_start
    result.pairs_per_s = pairs_per_step * steps_this_run / elapsed if elapsed > 0 else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if step >= total_steps and not result.interrupted:
        if ctx.is_main:
            model.save_pretrained(out_dir)  # `ragcun eval beir --model OUTPUT_DIR` works on a finished run
            ckpt.apply_umask(out_dir, ("model.safetensors", "ragcun.json", "encoder"))
            log.write({"step": step, "final": {"pairs_per_s": result.pairs_per_s, "elapsed_s": elapsed,
                                               "peak_memory_mb": result.peak_memory_mb}})
        D.barrier(ctx)
        result.model_dir = out_dir
    return result


class LossFailed(ValueError):
    """A loss term raised while computing; the message names the term and the package that supplies it."""


def _name_loss_failures(loss_module) -> None:
    """Make an exception inside a loss term's forward name that term and its provider (a plugin's bug then
    reads as such, not as a traceback from deep inside ragcun's loop). ValueErrors pass unchanged."""
    from ragcun.components import provenance

    terms = getattr(loss_module, "losses", None)
    modules = dict(terms.items()) if isinstance(terms, (dict, torch.nn.ModuleDict)) else {"": loss_module}
    for name, module in modules.items():
        if not isinstance(module, torch.nn.Module) or getattr(module, "_ragcun_named_failures", False):
            continue
        info = provenance(module)
        label = info["name"] or name or type(module).__name__
        forward = module.forward

        def named(*args, _forward=forward, _label=label, _provider=info["provider"], **kwargs):
            try:
                return _forward(*args, **kwargs)
            except (ValueError, KeyboardInterrupt, TrainingDiverged):
                raise
            except Exception as exc:
                raise LossFailed(f"loss {_label!r} (from the package {_provider!r}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc

        module.forward = named
        module._ragcun_named_failures = True


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary files of a write that a kill interrupted (the final model's, the config's, a checkpoint's)."""
    import shutil

    for folder in (out_dir, out_dir / "encoder"):
        for stale in folder.glob(".*.tmp"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
    (out_dir / "train_config.json.tmp").unlink(missing_ok=True)
    for stale in (out_dir / ckpt.CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _elastic_resume(out_dir: Path, config: TrainConfig, latest: ckpt.Checkpoint | None) -> str | None:
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


def _last_good(out_dir: Path) -> str:
    """Where a stopped run can continue from: the newest checkpoint that verifies (checksum, finite weights)."""
    good = ckpt.latest_good_checkpoint(out_dir)
    if good is None:
        return "no checkpoint had been written yet" + (" (none of the existing ones verifies)"
                                                       if ckpt.list_checkpoints(out_dir) else "")
    return (f"the last good checkpoint is {good.folder} (step {good.step}, verified); continue from it with "
            "--resume, e.g. with a lower --lr")


def _apply_optimizer_settings(optimizer, scheduler, fresh_groups, factor) -> None:
    """A resumed run with a new --lr / --head-lr / --weight-decay / schedule: the restored optimizer and scheduler
    take the new base rates and decay, and the current rate is the new schedule's at this step."""
    if len(fresh_groups) != len(optimizer.param_groups):
        raise ValueError("--resume: the checkpoint's optimizer has other parameter groups than this run builds")
    for group, (base, decay) in zip(optimizer.param_groups, fresh_groups):
        group["initial_lr"] = base
        group["weight_decay"] = decay
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler.base_lrs = [base for base, _ in fresh_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _gather_rng_states(ctx: D.DistributedContext) -> list:
    state = ckpt.rng_state(ctx.device)
    if not ctx.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * ctx.world_size
    dist.all_gather_object(states, {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()})
    return states


def _diagnostic_texts(source, limit: int = DIAGNOSTIC_SAMPLE) -> list[str]:
    texts = []
    for example in source.examples(0):
        texts.append(example.positive)
        if len(texts) >= limit:
            break
    return texts


def _diagnostics(model, texts: list[str], config: TrainConfig, ctx) -> dict | None:
    """Isotropy diagnostics of the current document embeddings (encoding sharded over the ranks)."""
    from ragcun.encoding import encode

    emb = encode(model, texts, config.eval_batch_size)
    if not ctx.is_main:
        return None
    try:
        from ragcun.diagnostics.report import embedding_diagnostics
    except ImportError:
        return None
    return _jsonable(embedding_diagnostics(emb.mean))


def _load_eval_set(config: TrainConfig):
    from ragcun.data.beir import load_beir
    from ragcun.data.training import resolve_eval_split

    folder, split = resolve_eval_split(config.eval_data, config.data_dir)
    dataset = load_beir(folder, split, name=folder.name)
    if config.max_eval_queries and len(dataset.queries) > config.max_eval_queries:
        keep = sorted(dataset.queries)[:config.max_eval_queries]
        dataset.queries = {q: dataset.queries[q] for q in keep}
        dataset.qrels = {q: dataset.qrels[q] for q in keep}
    return dataset


def _evaluate(model, dataset, config: TrainConfig, autocast) -> dict[str, float]:
    """NDCG/Recall on the dev split (every rank encodes its share; rank 0 logs)."""
    from ragcun.evaluation.beir_eval import evaluate_dataset

    out = evaluate_dataset(model, dataset, k=100, k_values=[10, 100], batch_size=config.eval_batch_size,
                           autocast_dtype=autocast.fast_dtype if autocast is not None else None,
                           query_prefix=model.query_prefix, document_prefix=model.document_prefix)
    keep = ("NDCG@10", "MRR@10", "Recall@10", "Recall@100")
    return {"dataset": f"{dataset.name}:{dataset.split}",
            **{k: float(v) for k, v in out["metrics"].items() if k in keep}}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
