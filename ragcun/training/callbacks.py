"""Work that happens between steps without the loop knowing what it is: periodic evaluation and isotropy
diagnostics (ragcun.evaluation.training_callbacks provides both), or a user's own.

A callback gets :meth:`Callback.on_start` once, with the run's :class:`TrainingState`, then
:meth:`Callback.on_step` after every optimizer step; whatever record it returns goes into metrics.jsonl (and
TensorBoard). Every rank calls it (so it may encode on all ranks); only rank 0's records are written. A
callback names the TrainConfig setting it serves (``setting``), so a run whose config asks for periodic work
that no callback does fails before it starts instead of silently skipping it.

Also here: Ctrl-C and SIGTERM handling (:class:`CtrlC`), which the loop turns into "save a checkpoint, then
stop".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

from ragcun.signals import StopRequests

PERIODIC_SETTINGS = {"eval_every": "periodic evaluation (--eval-every with --eval-data)",
                     "diagnostics_every": "isotropy diagnostics (--diagnostics-every)"}


@dataclass
class TrainingState:
    model: Any
    config: Any  # TrainConfig
    ctx: Any  # DistributedContext
    source: Any  # the TrainingSource
    autocast: Any  # torch.autocast or None


class Callback:
    setting: str | None = None  # the TrainConfig setting this callback serves, e.g. "eval_every"

    def on_start(self, state: TrainingState) -> None:
        """Once, before the first step of this invocation."""

    def on_step(self, state: TrainingState, step: int) -> dict | None:
        """After optimizer step ``step``; a record to log, or None."""
        return None


def check_callbacks(config, callbacks: Sequence[Callback]) -> None:
    served = {getattr(cb, "setting", None) for cb in callbacks}
    for name, what in PERIODIC_SETTINGS.items():
        if getattr(config, name) and name not in served:
            raise ValueError(f"{name} is set but no callback does the {what}: train with ragcun.train(config) "
                             "or `ragcun train` (they add it), or pass it in callbacks=")


class CtrlC(StopRequests):
    """The first Ctrl-C or SIGTERM sets ``requested`` and ``signum`` (the loop finishes the step, every rank
    saves, stops); a second one raises :class:`ragcun.signals.Stopped` (a KeyboardInterrupt) at once. Installed
    only in the main thread (signals cannot be caught elsewhere). See :mod:`ragcun.signals`."""
