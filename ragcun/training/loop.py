"""The training loop, read top to bottom:

    check the run folder (run_folder.py)          a new run never overwrites; a resumed one is the same run
    build the model and loss (setup.py), the data, the calibration (calibration.py)
    optimizer, schedule, resume state (optim.py, run_folder.py)
    for each optimizer step:
        forward/backward over the micro-batches (step.accumulate: plain or GradCache)
        agree across ranks on the loss and on faults (step.agree)
        clip, step, schedule; log (logs.py); checkpoint every K steps (run_folder.CheckpointSaver)
        callbacks: periodic evaluation, diagnostics (callbacks.py; ragcun.evaluation.training_callbacks)
    save the final model

Where a step happens: the ``while`` loop in :func:`_train`. Where a checkpoint is written:
``saver.save(...)`` in that loop. Where evaluation is triggered: ``callback.on_step(...)`` right after it.
"""

from __future__ import annotations

import math
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ragcun.distributed as D
from ragcun.memory import peak_resident_mib, resident_mib
from ragcun.precision import precision_warning
from ragcun.signals import signal_name
from ragcun.training import checkpoint as ckpt
from ragcun.training.callbacks import Callback, CtrlC, TrainingState, check_callbacks
from ragcun.training.config import TrainConfig
from ragcun.training.faults import LossFailed, TrainingDiverged, last_good
from ragcun.training.logs import METRICS_FILE, LiveDisplay, MetricsLog, format_terms
from ragcun.training.setup import (SCALE_PROBE, build_training_loss, build_training_model, check_batch_can_teach,
                                   diagnostic_texts, fit_head_on_training_documents, freeze_unused_parameters,
                                   isotropy_scale_warning, isotropy_weight, training_data, with_named_failures)

__all__ = ["train", "TrainResult", "TrainingDiverged", "LossFailed", "isotropy_scale_warning", "METRICS_FILE"]


FIRST_STEPS_SHOWN = 3  # shown in a log file at once, before --log-every's rhythm
ETA_WINDOW = 20  # the ETA is the mean of this many recent steps x the steps left

@dataclass
class TrainResult:
    output_dir: Path
    step: int  # optimizer steps completed
    total_steps: int
    losses: list[float] = field(default_factory=list)  # per step of this invocation: the global mean loss
    terms: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False  # a SIGINT or SIGTERM: every rank saved a checkpoint at the same step and stopped
    signal: int | None = None  # which (the largest number any rank saw): the command exits with 128 + signal
    already_finished: bool = False  # --resume on a run that had finished: nothing was done or changed
    resumed_from: int | None = None
    model_dir: Path | None = None  # the final model (None when interrupted)
    pairs_per_s: float = 0.0
    peak_memory_mb: float | None = None  # CUDA: the largest allocation on the device
    peak_rss_mb: float | None = None  # host: this process's resident-set high-water mark


def train(config: TrainConfig, *, resume: bool = False, loss_fn: Callable | None = None,
          stop_after: int | None = None, callbacks: Sequence[Callback] = (), data: Any = None) -> TrainResult:
    """Train as ``config`` says; with ``resume`` continue the run in ``config.output_dir`` exactly.

    ``callbacks`` do the periodic work between steps (``ragcun.train`` passes the evaluation and diagnostics
    the config asks for). ``loss_fn`` overrides the loss built from ``config.loss`` (tests). ``stop_after``
    ends this invocation after that many optimizer steps without finishing the run (tests of resumption).
    ``data``: in-memory examples instead of ``config.train_data`` (:mod:`ragcun.data.in_memory`; a resumed
    run needs the same examples).
    """
    from ragcun.signals import raise_on_stop
    from ragcun.training.run_folder import hold_run_folder

    if data is not None:
        from ragcun.data.in_memory import in_memory_config

        config, data = in_memory_config(config, data)
    config.validate()
    check_callbacks(config, callbacks)
    ctx = D.setup(config.device)
    try:
        # SIGTERM stops like Ctrl-C (before the loop: at once; in it: after the step, with a checkpoint), and the
        # run folder has one writer (its lock) for as long as this runs
        with raise_on_stop(), hold_run_folder(config, ctx):
            return _train(config, ctx, resume=resume, loss_fn=loss_fn, stop_after=stop_after, callbacks=callbacks,
                          in_memory=data)
    finally:
        D.teardown(ctx)


def _train(config: TrainConfig, ctx: D.DistributedContext, *, resume: bool, loss_fn, stop_after,
           callbacks: Sequence[Callback], in_memory=None) -> TrainResult:
    from ragcun.training.calibration import calibrate, probe_texts
    from ragcun.training.grad_cache import GradCache
    from ragcun.training.optim import lr_lambda, make_optimizer, precision, seed_everything
    from ragcun.training.run_folder import (CheckpointSaver, check_run_folder, load_checkpoint_weights, on_main,
                                            restore_trainer_state, write_run_record)
    from ragcun.training.step import accumulate, agree

    device = ctx.device
    folder = check_run_folder(config, ctx, resume)
    out_dir, resume = folder.path, folder.resume

    # -- model, loss, precision (same seed on every rank: identical initial weights) ---------------------
    memory = {"start": _memory_mark()}  # host memory after each phase: which one raised the peak
    seed_everything(config.seed)
    model = build_training_model(config)
    if resume:
        load_checkpoint_weights(model, folder)
    model.to(device)
    freeze_unused_parameters(model)
    loss_module = loss_fn if loss_fn is not None else build_training_loss(config, model)
    check_batch_can_teach(config, loss_module, ctx.world_size)
    if isinstance(loss_module, torch.nn.Module):
        loss_module.to(device)
    prec = precision(config.dtype, device)
    memory["model"] = _memory_mark()

    # -- data ------------------------------------------------------------------------------------------------
    source, stream = training_data(config, model, ctx, in_memory)
    total_steps = _total_steps(config, stream, source, ctx)
    memory["data"] = _memory_mark()

    # -- calibration (new runs only): a head with init_scale="auto" gets unit-scale outputs -----------------
    head_fit = None if resume else fit_head_on_training_documents(model, source, config)  # center / whiten heads
    calibration = None if resume else calibrate(model, loss_module, probe_texts(source), ctx)
    loss_call = with_named_failures(loss_module)  # a term that raises is named with its package
    memory["calibration"] = _memory_mark()

    # -- optimizer, schedule, resume state -------------------------------------------------------------------
    optimizer = make_optimizer(model, config, device, loss_module)
    loss_params = [p for p in (loss_module.parameters() if isinstance(loss_module, torch.nn.Module) else [])
                   if p.requires_grad]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    step = 0
    if resume:
        step = restore_trainer_state(folder, config, ctx, optimizer=optimizer, scheduler=scheduler,
                                     scaler=prec.scaler, loss_module=loss_module, stream=stream,
                                     total_steps=total_steps)
    else:
        seed_everything(config.seed + ctx.rank)  # different dropout masks per rank
    if resume and step >= total_steps and ckpt.verify_model_folder(out_dir) is None:
        # a finished run (its final model verifies): nothing to do, and nothing in the folder changes
        D.barrier(ctx)
        return TrainResult(out_dir, step, total_steps, resumed_from=step, model_dir=out_dir, already_finished=True)
    write_run_record(folder, config, ctx, step)

    # -- what runs beside the steps: DDP, GradCache, the log, the display, checkpoints, callbacks ------------
    forward_module = D.wrap(model, ctx)
    grad_cache = (GradCache(model, forward_module, config.grad_cache_chunk, prec.autocast)
                  if config.grad_cache_chunk else None)
    trainable = [p for p in model.parameters() if p.requires_grad] + loss_params
    named_trainable = ([(n, p) for n, p in model.named_parameters() if p.requires_grad]
                       + [(f"loss.{i}", p) for i, p in enumerate(loss_params)])
    log = MetricsLog(out_dir, ctx.is_main, step if resume else None)
    display = LiveDisplay(ctx.is_main and config.show_progress, total_steps, step)
    # from here on a Ctrl-C or SIGTERM is a request: the step under way (or the first one) finishes, every rank
    # saves a checkpoint, then the run stops (left in place until train() puts the previous handlers back)
    ctrl_c = CtrlC(lambda: display.print(
        ("interrupted" if ctrl_c.signum == signal.SIGINT else f"stopping on {signal_name(ctrl_c.signum)}")
        + ": finishing this step, saving a checkpoint, then exiting ("
        + ("Ctrl-C" if ctrl_c.signum == signal.SIGINT else signal_name(ctrl_c.signum)) + " again to stop at once)"))
    ctrl_c.__enter__()
    _announce(config, ctx, folder, display, log, source, total_steps, step, prec, calibration, head_fit)
    log.write({"step": step, "memory": memory})
    _warn_if_sigreg_cannot_act(model, loss_module, source, ctx, display)
    saver = CheckpointSaver(out_dir, config, ctx, model=model, optimizer=optimizer, scheduler=scheduler,
                            scaler=prec.scaler, loss_module=loss_module, stream=stream, total_steps=total_steps)
    state = TrainingState(model, config, ctx, source, prec.autocast)
    for callback in callbacks:
        callback.on_start(state)

    result = TrainResult(out_dir, step, total_steps, resumed_from=step if resume else None)
    pairs_per_step = config.batch_size * ctx.world_size * config.grad_accum
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    steps_this_run = 0
    recent: deque[float] = deque(maxlen=ETA_WINDOW)  # the last steps' durations, for the ETA
    term_names: list[str] | None = None
    try:
        while step < total_steps and (stop_after is None or steps_this_run < stop_after):
            t0 = time.perf_counter()
            model.train()
            if config.freeze_encoder:
                model.encoder.eval()  # a frozen encoder gives deterministic features: no dropout
            optimizer.zero_grad(set_to_none=True)
            with D.waiting(f"step {step + 1}'s forward and backward (the loss's collectives, DDP's gradient "
                           "all-reduce)"):
                out = accumulate(model=model, forward_module=forward_module, loss_module=loss_call,
                                 stream=stream, step=step, grad_accum=config.grad_accum, device=device,
                                 autocast=prec.autocast, scaler=prec.scaler, grad_cache=grad_cache)
            term_names = list(out.terms) if term_names is None else term_names
            agreed = agree(out, term_names, ctrl_c.requested, ctx)
            if agreed.diverged:
                raise TrainingDiverged(f"the loss is {agreed.loss} at step {step + 1}: training stopped; "
                                       + last_good(out_dir))
            grad_norm, lr = _optimizer_step(config, ctx, step, optimizer, scheduler, prec.scaler, trainable,
                                            loss_params, named_trainable, out_dir)
            step += 1
            steps_this_run += 1
            elapsed = time.perf_counter() - t_start
            rate = pairs_per_step * steps_this_run / elapsed
            result.losses.append(agreed.loss)
            result.terms.append(agreed.terms)
            record = {"step": step, "loss": agreed.loss, "terms": agreed.terms, "lr": lr,
                      "step_s": time.perf_counter() - t0, "pairs_per_s": rate, "epoch": stream.state.epoch,
                      "peak_rss_mb": peak_resident_mib()}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            due = step % config.log_every == 0 or step == total_steps
            if due:
                log.write(record)
            recent.append(record["step_s"])
            # a log file shows the first steps at once (not only after --log-every), and the ETA comes from the
            # recent steps (the first ones include warm-up costs)
            display.update(step, format_terms(agreed.loss, agreed.terms, lr, rate,
                                              sum(recent) / len(recent) * (total_steps - step)),
                           due or steps_this_run <= FIRST_STEPS_SHOWN)
            # -- periodic work: a checkpoint, then the callbacks (evaluation, diagnostics) --------------
            if step % config.save_every == 0 or step == total_steps or agreed.interrupted:
                saver.save(step, agreed.loss)
            for callback in callbacks:
                record = callback.on_step(state, step)
                if record is not None:
                    log.write(record)
            if agreed.interrupted:  # some rank saw Ctrl-C or SIGTERM; every rank saved above and stops here
                result.interrupted = True
                result.signal = int(D.all_reduce_max(float(ctrl_c.signum or 0), ctx)) or signal.SIGINT
                display.print(f"{'interrupted' if result.signal == signal.SIGINT else 'stopped'} at step {step} "
                              f"({signal_name(result.signal)}); checkpoint saved in {out_dir / ckpt.CHECKPOINTS}; "
                              "continue with --resume")
                break
    finally:
        ctrl_c.__exit__(None, None, None)
        display.close()
        log.close()

    # -- the end: the final model is the run folder itself ---------------------------------------------------
    result.step = step
    elapsed = time.perf_counter() - t_start
    result.pairs_per_s = pairs_per_step * steps_this_run / elapsed if elapsed > 0 else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    result.peak_rss_mb = peak_resident_mib()
    if step >= total_steps and not result.interrupted:
        def save_final() -> None:
            from ragcun.files import OutputError, ordinary_permissions

            try:
                model.save_pretrained(out_dir)  # `ragcun eval beir --model OUTPUT_DIR` works on a finished run
            except OutputError as exc:  # a full disk: the last checkpoint is the finished run; say so
                kept = ckpt.latest_checkpoint(out_dir)
                raise OutputError(f"{exc}; the final model was not written" + (
                    f"; the run's last checkpoint, {kept.folder} (step {kept.step}), is intact: free some space, "
                    "then --resume writes the final model" if kept is not None else "")) from None
            ordinary_permissions(out_dir, ("model.safetensors", "ragcun.json", "encoder"))
            log.write({"step": step, "final": {"pairs_per_s": result.pairs_per_s, "elapsed_s": elapsed,
                                               "peak_memory_mb": result.peak_memory_mb,
                                               "peak_rss_mb": result.peak_rss_mb}})

        on_main(ctx, save_final, "saving the final model")
        result.model_dir = out_dir
    return result


def _memory_mark() -> dict[str, float | None]:
    return {"rss_mb": resident_mib(), "peak_rss_mb": peak_resident_mib()}


def _total_steps(config: TrainConfig, stream, source, ctx) -> int:
    if config.steps is not None:
        return int(config.steps)
    per_epoch = stream.steps_per_epoch()
    if per_epoch == 0:
        raise ValueError(f"{source.description}: fewer examples than one global batch "
                         f"({ctx.world_size} x --batch-size {config.batch_size})")
    return max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


def _optimizer_step(config: TrainConfig, ctx, step: int, optimizer, scheduler, scaler, trainable, loss_params,
                    named_trainable, out_dir: Path) -> tuple[float | None, float]:
    """Average the loss's own gradients, clip, step, check the weights, schedule; returns (grad norm, lr)."""
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
                                   + last_good(out_dir))
    lr = scheduler.get_last_lr()[0]
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # a checkpoint or final model is only ever written from finite weights: check every step (one device
    # sync), so the run stops at the step that broke them
    broken = ckpt.nonfinite_tensors(named_trainable)
    if broken:
        raise TrainingDiverged(
            f"the weights became non-finite at step {step + 1} ({len(broken)} of {len(named_trainable)} trained "
            f"tensors, e.g. {', '.join(broken[:3])}): the optimizer step overflowed (is --lr {config.lr:g} too "
            "high?); training stopped and nothing was saved from this step; " + last_good(out_dir))
    scheduler.step()
    return grad_norm, lr


def _announce(config, ctx, folder, display, log, source, total_steps, step, prec, calibration, head_fit) -> None:
    if ctx.is_main:
        slow = precision_warning(prec.dtype, ctx.device)
        for message in [*folder.warnings, *([slow] if slow else [])]:
            display.warn(message)
    display.print(f"training {config.encoder} + {config.head} head, loss {config.loss}, on {source.description}; "
                  f"{ctx.world_size} process(es) x batch {config.batch_size} x accumulation {config.grad_accum}, "
                  f"{total_steps} steps, {ctx.device}, {str(prec.dtype).replace('torch.', '')}"
                  + (f", resuming at step {step}" if folder.resume else ""))
    if head_fit is not None:
        log.write({"step": 0, "head_fit": {"documents": head_fit}})
        display.print(f"fitted the {config.head} head on {head_fit} training documents (fixed while the encoder "
                      "trains; saved with the model)")
    if calibration is not None:
        log.write({"step": 0, "calibration": calibration.as_dict()})
        display.print(f"calibrated the {config.head} head from {calibration.probe_texts} training texts: outputs x "
                      f"{calibration.factor:.4g}{', centred' if calibration.centered else ''}; contrastive "
                      f"temperature x {calibration.temperature_factor:.4g} (the same initial logits)")


def _warn_if_sigreg_cannot_act(model, loss_module, source, ctx, display) -> None:
    """Say so before the first step when SIGReg has weight but the embeddings are too small for it to act."""
    if not ctx.is_main or isotropy_weight(loss_module) <= 0:
        return
    model.eval()
    with torch.no_grad():
        warning = isotropy_scale_warning(loss_module, model.embed(diagnostic_texts(source, limit=SCALE_PROBE)).mean)
    if warning:
        display.warn(warning)
