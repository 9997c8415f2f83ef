"""The training loop, read top to bottom (:func:`_train`):

    set up: check the run folder (run_folder.py)      a new run never overwrites; a resumed one is the same run
            the state (state.TrainState.fresh / .resume): model and loss (setup.py), data, calibration
            (calibration.py), optimizer and schedule (optim.py); a resumed run's checkpoint
    for each optimizer step:
        batch, forward/backward over the micro-batches (step.accumulate: plain or GradCache)
        agree across ranks on the loss and on faults (step.agree)
        optimizer step: clip, step, check the weights, schedule (step.optimizer_step)
        log (logs.py); checkpoint every K steps (TrainState.save_checkpoint)
        callbacks: periodic evaluation, diagnostics (callbacks.py; ragcun.evaluation.training_callbacks)
    finish: save the final model

Where a step happens: the ``while`` loop in :func:`_train`. Where a checkpoint is written:
``state.save_checkpoint(...)`` in that loop. Where evaluation is triggered: ``run.call_callbacks()`` right after it.
What this invocation keeps beside the state (the log, the display, Ctrl-C, throughput) is :class:`_Invocation`.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ragcun.distributed as D
from ragcun.memory import peak_resident_mib
from ragcun.precision import precision_warning
from ragcun.signals import signal_name
from ragcun.training import checkpoint as ckpt
from ragcun.training.callbacks import Callback, CtrlC, TrainingState, check_callbacks
from ragcun.training.config import TrainConfig
from ragcun.training.faults import LossFailed, TrainingDiverged, last_good
from ragcun.training.logs import METRICS_FILE, LiveDisplay, MetricsLog, format_terms
from ragcun.training.run_folder import on_main
from ragcun.training.samples import SCALE_PROBE_TEXTS, first_texts
from ragcun.training.setup import isotropy_scale_warning, isotropy_weight
from ragcun.training.state import TrainState, count_total_steps

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
    from ragcun.training.run_folder import check_run_folder, write_run_record
    from ragcun.training.step import accumulate, agree, optimizer_step, start_step

    # -- set up: check the run folder, then the state: a new run's, or its checkpoint's (ragcun.training.state) ---
    folder = check_run_folder(config, ctx, resume)
    build = TrainState.resume if folder.resume else TrainState.fresh
    state = build(config, ctx, folder, loss_fn=loss_fn, in_memory=in_memory)
    if folder.resume and state.finished and ckpt.verify_model_folder(folder.path) is None:
        # a finished run (its final model verifies): nothing to do, and nothing in the folder changes
        D.barrier(ctx)
        return TrainResult(folder.path, state.step, state.total_steps, resumed_from=state.step, model_dir=folder.path,
                           already_finished=True)
    write_run_record(folder, config, ctx, state.step)
    state.prepare_steps()  # DDP, GradCache
    run = _Invocation.start(state, callbacks, stop_after)  # the log, the display, Ctrl-C, the callbacks' on_start

    # -- the steps -------------------------------------------------------------------------------------------------
    try:
        while run.wants_another_step():
            t0 = time.perf_counter()
            start_step(state)
            with D.waiting(f"step {state.step + 1}'s forward and backward (the loss's collectives, DDP's gradient "
                           "all-reduce)"):
                out = accumulate(state)
            agreed = agree(out, run.term_names_of(out), run.ctrl_c.requested, ctx)
            if agreed.diverged:
                raise TrainingDiverged(f"the loss is {agreed.loss} at step {state.step + 1}: training stopped; "
                                       + last_good(folder.path))
            grad_norm, lr = optimizer_step(state)
            state.advance()
            run.log_step(agreed, grad_norm, lr, t0)
            # -- periodic work: a checkpoint, then the callbacks (evaluation, diagnostics) --------------
            if state.step % config.save_every == 0 or state.step == state.total_steps or agreed.interrupted:
                state.save_checkpoint(agreed.loss)
            run.call_callbacks()
            if agreed.interrupted:  # some rank saw Ctrl-C or SIGTERM; every rank saved above and stops here
                run.stop_on_signal()
                break
    finally:
        run.close()

    # -- the end: the final model is the run folder itself ---------------------------------------------------
    return run.finish()


_total_steps = count_total_steps  # its former name here (tests/test_readme_promises.py)


@dataclass(eq=False)
class _Invocation:
    """What this invocation of :func:`train` keeps beside the :class:`TrainState` (none of it is checkpointed): the
    metrics log, the display, Ctrl-C, the callbacks and their view of the run, the result, the throughput."""

    state: TrainState
    callbacks: Sequence[Callback]
    stop_after: int | None
    log: MetricsLog
    display: LiveDisplay
    ctrl_c: CtrlC
    view: TrainingState  # what the callbacks see
    result: TrainResult
    t_start: float = 0.0
    steps: int = 0  # optimizer steps of this invocation
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=ETA_WINDOW))  # the last steps' durations
    term_names: list[str] | None = None

    @classmethod
    def start(cls, state: TrainState, callbacks: Sequence[Callback], stop_after: int | None) -> _Invocation:
        config, ctx, folder = state.config, state.ctx, state.folder
        log = MetricsLog(folder.path, ctx.is_main, state.step if folder.resume else None)
        display = LiveDisplay(ctx.is_main and config.show_progress, state.total_steps, state.step)
        # from here on a Ctrl-C or SIGTERM is a request: the step under way (or the first one) finishes, every rank
        # saves a checkpoint, then the run stops (left in place until train() puts the previous handlers back)
        ctrl_c = CtrlC(lambda: display.print(
            ("interrupted" if ctrl_c.signum == signal.SIGINT else f"stopping on {signal_name(ctrl_c.signum)}")
            + ": finishing this step, saving a checkpoint, then exiting ("
            + ("Ctrl-C" if ctrl_c.signum == signal.SIGINT else signal_name(ctrl_c.signum)) + " again to stop at once)"))
        ctrl_c.__enter__()
        _announce(state, display, log)
        log.write({"step": state.step, "memory": state.memory})
        _warn_if_sigreg_cannot_act(state.model, state.loss_module, state.source, ctx, display)
        view = TrainingState(state.model, config, ctx, state.source, state.precision.autocast)
        for callback in callbacks:
            callback.on_start(view)
        result = TrainResult(folder.path, state.step, state.total_steps,
                             resumed_from=state.step if folder.resume else None)
        run = cls(state, callbacks, stop_after, log, display, ctrl_c, view, result)
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        run.t_start = time.perf_counter()
        return run

    @property
    def pairs_per_step(self) -> int:
        config = self.state.config
        return config.batch_size * self.state.ctx.world_size * config.grad_accum

    def wants_another_step(self) -> bool:
        return self.state.step < self.state.total_steps and (self.stop_after is None or self.steps < self.stop_after)

    def term_names_of(self, out) -> list[str]:
        """The loss's terms, in the order of the first step (every step's agreement lists them the same way)."""
        self.term_names = list(out.terms) if self.term_names is None else self.term_names
        return self.term_names

    def log_step(self, agreed, grad_norm: float | None, lr: float, t0: float) -> None:
        """The step just taken: into the result, metrics.jsonl (every --log-every steps and the last), the display."""
        state, result = self.state, self.result
        step, total_steps = state.step, state.total_steps
        self.steps += 1
        elapsed = time.perf_counter() - self.t_start
        rate = self.pairs_per_step * self.steps / elapsed
        result.losses.append(agreed.loss)
        result.terms.append(agreed.terms)
        record = {"step": step, "loss": agreed.loss, "terms": agreed.terms, "lr": lr,
                  "step_s": time.perf_counter() - t0, "pairs_per_s": rate, "epoch": state.stream.state.epoch,
                  "peak_rss_mb": peak_resident_mib()}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        due = step % state.config.log_every == 0 or step == total_steps
        if due:
            self.log.write(record)
        self.recent.append(record["step_s"])
        # a log file shows the first steps at once (not only after --log-every), and the ETA comes from the
        # recent steps (the first ones include warm-up costs)
        self.display.update(step, format_terms(agreed.loss, agreed.terms, lr, rate,
                                               sum(self.recent) / len(self.recent) * (total_steps - step)),
                            due or self.steps <= FIRST_STEPS_SHOWN)

    def call_callbacks(self) -> None:
        for callback in self.callbacks:
            record = callback.on_step(self.view, self.state.step)
            if record is not None:
                self.log.write(record)

    def stop_on_signal(self) -> None:
        result, step = self.result, self.state.step
        result.interrupted = True
        result.signal = int(D.all_reduce_max(float(self.ctrl_c.signum or 0), self.state.ctx)) or signal.SIGINT
        self.display.print(f"{'interrupted' if result.signal == signal.SIGINT else 'stopped'} at step {step} "
                           f"({signal_name(result.signal)}); checkpoint saved in "
                           f"{self.state.folder.path / ckpt.CHECKPOINTS}; continue with --resume")

    def close(self) -> None:
        self.ctrl_c.__exit__(None, None, None)
        self.display.close()
        self.log.close()

    def finish(self) -> TrainResult:
        """The result; a run that reached its last step (not interrupted) saves its final model in the run folder."""
        state, result = self.state, self.result
        ctx, out_dir, step = state.ctx, state.folder.path, state.step
        result.step = step
        elapsed = time.perf_counter() - self.t_start
        result.pairs_per_s = self.pairs_per_step * self.steps / elapsed if elapsed > 0 else 0.0
        if ctx.device.type == "cuda":
            result.peak_memory_mb = torch.cuda.max_memory_allocated(ctx.device) / 2**20
        result.peak_rss_mb = peak_resident_mib()
        if step >= state.total_steps and not result.interrupted:
            def save_final() -> None:
                from ragcun.files import OutputError

                try:
                    state.model.save_pretrained(out_dir)  # `ragcun eval beir --model OUTPUT_DIR` works on it
                except OutputError as exc:  # a full disk: the last checkpoint is the finished run; say so
                    kept = ckpt.latest_checkpoint(out_dir)
                    raise OutputError(f"{exc}; the final model was not written" + (
                        f"; the run's last checkpoint, {kept.folder} (step {kept.step}), is intact: free some space, "
                        "then --resume writes the final model" if kept is not None else "")) from None
                self.log.write({"step": step, "final": {"pairs_per_s": result.pairs_per_s, "elapsed_s": elapsed,
                                                        "peak_memory_mb": result.peak_memory_mb,
                                                        "peak_rss_mb": result.peak_rss_mb}})

            on_main(ctx, save_final, "saving the final model")
            result.model_dir = out_dir
        return result


def _announce(state: TrainState, display: LiveDisplay, log: MetricsLog) -> None:
    config, ctx, folder, prec = state.config, state.ctx, state.folder, state.precision
    calibration, head_fit = state.calibration, state.head_fit
    if ctx.is_main:
        slow = precision_warning(prec.dtype, ctx.device)
        for message in [*folder.warnings, *([slow] if slow else [])]:
            display.warn(message)
    display.print(f"training {config.encoder} + {config.head} head, loss {config.loss}, on {state.source.description}; "
                  f"{ctx.world_size} process(es) x batch {config.batch_size} x accumulation {config.grad_accum}, "
                  f"{state.total_steps} steps, {ctx.device}, {str(prec.dtype).replace('torch.', '')}"
                  + (f", resuming at step {state.step}" if folder.resume else ""))
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
        warning = isotropy_scale_warning(loss_module, model.embed(first_texts(source, SCALE_PROBE_TEXTS)).mean)
    if warning:
        display.warn(warning)
