"""A training run as users start it: the loop (ragcun.training.loop.train) with the periodic evaluation and
isotropy diagnostics its config asks for (ragcun.evaluation.training_callbacks)."""

from __future__ import annotations

from typing import Any


def train(config, *, resume: bool = False, callbacks=(), **kwargs: Any):
    """Train ``config`` (a TrainConfig); ``callbacks`` are added after the standard ones. See
    :func:`ragcun.training.loop.train` for the other arguments and the result."""
    from ragcun.evaluation.training_callbacks import standard_callbacks
    from ragcun.training.loop import train as train_loop

    if kwargs.get("data") is not None:  # in-memory examples: train_data names their fingerprint
        from ragcun.data.in_memory import in_memory_config

        config, kwargs["data"] = in_memory_config(config, kwargs["data"])
    config.validate()
    return train_loop(config, resume=resume, callbacks=[*standard_callbacks(config), *callbacks], **kwargs)
