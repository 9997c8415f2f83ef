"""What ``ragcun export`` was given (``RUN_OR_MODEL``) -> the model to export and the folder it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def resolve_source(model_or_path: Any) -> tuple[Any, Path | None]:
    """``(EmbeddingModel, its checkpoint or run folder or None)``.

    Accepts an ``EmbeddingModel``, a ragcun checkpoint or run folder (``ragcun.json``; a checkpoint's
    ``RUN/checkpoints/step-N``), or what ``--model`` takes elsewhere for a base model (``hf:PATH``, a transformers
    folder, an encoder name), which exports with the identity head and its authors' similarity. What the string
    names is decided by :func:`ragcun.resolve.classify`, as for ``--model``.
    """
    from ragcun.model import EmbeddingModel, load
    from ragcun.resolve import classify, resolve_model

    if isinstance(model_or_path, EmbeddingModel):
        return model_or_path, None
    what, spec, _ = classify(os.fspath(model_or_path), label="RUN_OR_MODEL")  # the one classifier (ragcun.resolve)
    if what == "checkpoint":
        return load(Path(spec).expanduser()), Path(spec).expanduser()
    return resolve_model(os.fspath(model_or_path)), None
