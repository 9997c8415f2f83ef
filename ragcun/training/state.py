"""The training loop's state in one object: :class:`TrainState`.

Everything the loop carries from one optimizer step to the next (the model, the loss, the optimizer and its
schedule, the gradient scaler, the data stream and its position, the step, the DDP wrapper and GradCache) is
built here, by :meth:`TrainState.fresh` for a new run or :meth:`TrainState.resume` for a resumed one, and what a
checkpoint keeps of it goes through :meth:`TrainState.state_dict` / :meth:`TrainState.load_state_dict`.
:meth:`TrainState.save_checkpoint` writes a checkpoint of it (every rank calls it; rank 0 writes), and resuming
(the checkpoint's weights, its training state, changed optimizer settings or --steps) happens in
:meth:`TrainState.resume` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ragcun.distributed as D
from ragcun.memory import peak_resident_mib, resident_mib
from ragcun.training import checkpoint as ckpt
from ragcun.training.config import TrainConfig
from ragcun.training.optim import Precision
from ragcun.training.run_folder import RunFolder, on_main
from ragcun.training.setup import (build_training_loss, build_training_model, check_batch_can_teach,
                                   fit_head_on_training_documents, freeze_unused_parameters, training_data,
                                   with_named_failures)


@dataclass(eq=False)
class TrainState:
    """What a run carries from step to step (built once per invocation; the loop only reads it and advances it).

    Adding a piece of state (an EMA of the weights, say) touches this class only::

        ema: Any = None                                        # 1. a field
        # 2. built for new and resumed runs alike, in _make_optimizer:
        self.ema = torch.optim.swa_utils.AveragedModel(self.model)
        # 3. kept in every checkpoint (trainer.pt), in state_dict:
        "ema": self.ema.state_dict(),
        # 4. restored on --resume, in load_state_dict:
        self.ema.load_state_dict(trainer["ema"])
        # 5. updated after every optimizer step, in advance:
        self.ema.update_parameters(self.model)

    The checkpoint's writer (:meth:`save_checkpoint`), the resume (:meth:`resume`) and the loop
    (ragcun.training.loop) pick it up without a change. (A callback's view of the run is
    :class:`ragcun.training.callbacks.TrainingState`, a few read-only fields of this.)
    """

    config: TrainConfig
    ctx: D.DistributedContext
    folder: RunFolder  # the run folder's checks: its path, whether this invocation resumes, from which checkpoint
    model: Any  # the EmbeddingModel being trained
    loss_module: Any  # the loss (an nn.Module; or a plain callable given as train(loss_fn=))
    loss_call: Callable  # what the steps call: the loss, with a failing term named (setup.with_named_failures)
    precision: Precision  # dtype, autocast, and the float16 gradient scaler
    source: Any  # the TrainingSource
    stream: Any  # this rank's BatchStream; stream.state is the data position a checkpoint keeps
    total_steps: int
    step: int = 0  # optimizer steps completed
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None  # LambdaLR
    memory: dict[str, Any] = field(default_factory=dict)  # host memory after each phase of the set-up (logged)
    head_fit: int | None = None  # a new run's fitted head: how many documents (None: no such head, or resumed)
    calibration: Any = None  # a new run's head calibration (None: none, or resumed)
    # built by prepare_steps(), once the run's record is written
    forward_module: Any = None  # the model, DDP-wrapped on several processes
    grad_cache: Any = None  # GradCache with --grad-cache-chunk
    loss_params: list = field(default_factory=list)  # the loss's own trained parameters (a learnable temperature)
    trainable: list = field(default_factory=list)  # every trained tensor: the model's, then the loss's
    named_trainable: list = field(default_factory=list)  # the same, named (for the non-finite check)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def fresh(cls, config: TrainConfig, ctx: D.DistributedContext, folder: RunFolder, *, loss_fn=None,
              in_memory=None) -> TrainState:
        """A new run: the model as built (same seed on every rank), its head fitted and calibrated on the training
        data, a new optimizer and schedule; then each rank seeds its own dropout masks."""
        from ragcun.training.calibration import calibrate
        from ragcun.training.optim import seed_everything
        from ragcun.training.samples import CALIBRATION_TEXTS, first_texts

        state = cls._build(config, ctx, folder, loss_fn, in_memory)
        state.head_fit = fit_head_on_training_documents(state.model, state.source, config)  # center / whiten heads
        # a head with init_scale="auto" gets unit-scale outputs
        probe = first_texts(state.source, CALIBRATION_TEXTS, queries=True)
        state.calibration = calibrate(state.model, state.loss_module, probe, ctx)
        state.memory["calibration"] = memory_mark()
        state._make_optimizer()
        seed_everything(config.seed + ctx.rank)  # different dropout masks per rank
        return state

    @classmethod
    def resume(cls, config: TrainConfig, ctx: D.DistributedContext, folder: RunFolder, *, loss_fn=None,
               in_memory=None) -> TrainState:
        """A resumed run, exactly where its checkpoint (``folder.latest``, verified) left it: the weights, then the
        optimizer, loss, schedule, scaler, data position and RNG states. Changed optimizer-side settings (a lower
        --lr after a divergence) are applied on top; a changed --steps replans the schedule from here."""
        state = cls._build(config, ctx, folder, loss_fn, in_memory, weights=folder)
        state.memory["calibration"] = memory_mark()
        state._make_optimizer()
        fresh_groups = [(group["initial_lr"], group["weight_decay"]) for group in state.optimizer.param_groups]
        state.load_state_dict(ckpt.load_trainer_state(folder.latest),
                              before_rng=lambda: state._apply_changed_settings(fresh_groups))
        return state

    @classmethod
    def _build(cls, config: TrainConfig, ctx: D.DistributedContext, folder: RunFolder, loss_fn, in_memory,
               weights: RunFolder | None = None) -> TrainState:
        """Model, loss, precision and data (the same seed on every rank: identical initial weights)."""
        from ragcun.training.optim import allow_tf32, seed_everything, training_precision

        memory = {"start": memory_mark()}  # host memory after each phase: which one raised the peak
        seed_everything(config.seed)
        model = build_training_model(config)
        if weights is not None:
            load_checkpoint_weights(model, weights)
        model.to(ctx.device)
        freeze_unused_parameters(model)
        loss_module = loss_fn if loss_fn is not None else build_training_loss(config, model)
        check_batch_can_teach(config, loss_module, ctx.world_size)
        if isinstance(loss_module, torch.nn.Module):
            loss_module.to(ctx.device)
        allow_tf32(ctx.device)
        prec = training_precision(config.dtype, ctx.device)
        memory["model"] = memory_mark()
        source, stream = training_data(config, model, ctx, in_memory)
        steps = count_total_steps(config, stream, source, ctx)
        memory["data"] = memory_mark()
        return cls(config, ctx, folder, model, loss_module, with_named_failures(loss_module), prec, source, stream,
                   steps, memory=memory)

    def _make_optimizer(self) -> None:
        """The optimizer and its schedule, as a new run starts them (a resumed run then loads the checkpoint's)."""
        from ragcun.training.optim import lr_lambda, make_optimizer

        self.optimizer = make_optimizer(self.model, self.config, self.ctx.device, self.loss_module)
        self.loss_params = [p for p in (self.loss_module.parameters()
                                        if isinstance(self.loss_module, torch.nn.Module) else []) if p.requires_grad]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.config, self.total_steps))

    def prepare_steps(self) -> None:
        """What the steps run through: the DDP wrapper (its construction is collective), GradCache, and the lists of
        trained tensors."""
        from ragcun.training.grad_cache import GradCache

        self.forward_module = D.wrap(self.model, self.ctx)
        self.grad_cache = (GradCache(self.model, self.forward_module, self.config.grad_cache_chunk,
                                     self.precision.autocast) if self.config.grad_cache_chunk else None)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad] + self.loss_params
        self.named_trainable = ([(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                                + [(f"loss.{i}", p) for i, p in enumerate(self.loss_params)])

    # -- the steps ------------------------------------------------------------------------------------------
    def advance(self) -> None:
        """One optimizer step is done (what changes with every step besides the weights goes here)."""
        self.step += 1

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's trainer.pt: step, optimizer, scheduler, scaler, every rank's RNG states, data position,
        the loss's own state. Collective: every rank calls it (each hands over its RNG state)."""
        rngs = gather_rng_states(self.ctx)
        loss_state = self.loss_module.state_dict() if isinstance(self.loss_module, torch.nn.Module) else None
        scaler = self.precision.scaler
        return {"step": int(self.step), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs, "data": self.stream.state.as_dict(), "loss": loss_state or None}

    def load_state_dict(self, trainer: dict[str, Any], *, before_rng: Callable[[], None] | None = None) -> None:
        """A checkpoint's trainer.pt into this state; this rank's RNG states when the world size is the same, else
        a seed from the step (the data order is the same, dropout masks cannot be).

        ``before_rng`` runs after everything else is restored and before the RNG states, which come last so that
        nothing drawn in between moves them (a first console message draws from Python's ``random``)."""
        from ragcun.data.training import DataPosition
        from ragcun.training.optim import seed_everything

        self.optimizer.load_state_dict(trainer["optimizer"])
        if trainer.get("loss") and isinstance(self.loss_module, torch.nn.Module):
            self.loss_module.load_state_dict(trainer["loss"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if self.precision.scaler is not None and trainer.get("scaler"):
            self.precision.scaler.load_state_dict(trainer["scaler"])
        self.step = int(trainer["step"])
        self.stream.state = DataPosition(**trainer["data"])
        if before_rng is not None:
            before_rng()
        rngs, ctx = trainer["rng"], self.ctx
        if len(rngs) == ctx.world_size:
            ckpt.set_rng_state(rngs[ctx.rank], ctx.device)
        else:
            seed_everything(self.config.seed + 1_000_003 * self.step + ctx.rank)

    def save_checkpoint(self, last_loss: float | None) -> Path | None:
        """``checkpoints/step-STEP``: every rank hands over its RNG state, rank 0 writes the checkpoint atomically
        (ragcun.training.checkpoint), and all ranks wait for it (and stop with its error, a full disk, instead of
        waiting forever)."""
        trainer = self.state_dict()
        config, ctx, step = self.config, self.ctx, self.step

        def write() -> Path:
            return ckpt.save_checkpoint(self.folder.path, step, model=self.model, trainer=trainer,
                                        keep=config.keep_checkpoints,
                                        extra={"loss": last_loss, "total_steps": self.total_steps,
                                               "world_size": ctx.world_size,
                                               "global_batch": config.batch_size * ctx.world_size * config.grad_accum})

        return on_main(ctx, write, f"saving the checkpoint of step {step}")

    def _apply_changed_settings(self, fresh_groups) -> None:
        """A resume with other optimizer settings takes them; one with another --steps replans the schedule."""
        from ragcun.training.config import OPTIMIZER_CHANGES
        from ragcun.training.optim import apply_optimizer_settings, lr_lambda

        config, saved = self.config, self.folder.saved
        if any(getattr(saved, k) != getattr(config, k) for k in OPTIMIZER_CHANGES):
            apply_optimizer_settings(self.optimizer, self.scheduler, fresh_groups, lr_lambda(config, self.total_steps))
        planned = _planned_steps(self.folder.latest.folder / ckpt.STATE_FILE)
        if planned and planned != self.total_steps:
            replan_schedule(config, self.ctx, self.optimizer, self.scheduler, planned_steps=int(planned),
                            total_steps=self.total_steps, resumed_at=self.step)


def memory_mark() -> dict[str, float | None]:
    return {"rss_mb": resident_mib(), "peak_rss_mb": peak_resident_mib()}


def count_total_steps(config: TrainConfig, stream, source, ctx) -> int:
    """--steps, or --epochs of this stream's global batches, rounded up to whole optimizer steps."""
    if config.steps is not None:
        return int(config.steps)
    per_epoch = stream.steps_per_epoch()
    if per_epoch == 0:
        raise ValueError(f"{source.description}: fewer examples than one global batch "
                         f"({ctx.world_size} x --batch-size {config.batch_size})")
    return max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


def gather_rng_states(ctx: D.DistributedContext) -> list:
    state = ckpt.rng_state(ctx.device)
    if not ctx.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * ctx.world_size
    with D.waiting("all_gather_object (the RNG states for a checkpoint)"):
        dist.all_gather_object(states, {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()})
    return states


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
    _restore_head_calibration(model.head, folder.latest.folder / ckpt.MODEL_FOLDER)


def _restore_head_calibration(head, model_folder: Path) -> None:
    """A head calibrated before the checkpoint (its ragcun.json records the factor as ``init_scale``) is told so
    (the CalibratingHead protocol's optional ``restore_calibration``): a resumed run's final model then records
    the same config as an uninterrupted run's, not ``init_scale: "auto"``."""
    from ragcun.model import CONFIG_FILE

    restore = getattr(head, "restore_calibration", None)
    if restore is None or not getattr(head, "calibrates", False):
        return
    try:
        factor = json.loads((model_folder / CONFIG_FILE).read_text())["head"]["config"]["init_scale"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # verified by check_run_folder; a head saved without the record keeps its config as built
    if isinstance(factor, (int, float)) and not isinstance(factor, bool):
        restore(float(factor))


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
