"""What ``ragcun export`` was given (``RUN_OR_MODEL``) -> the model to export and the folder it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ragcun.model import CONFIG_FILE


def resolve_source(model_or_path: Any) -> tuple[Any, Path | None]:
    """``(EmbeddingModel, its checkpoint or run folder or None)``.

    Accepts an ``EmbeddingModel``, a ragcun checkpoint or run folder (``ragcun.json``), or what ``--model``
    takes elsewhere for a base model (``hf:PATH``, a transformers folder, an encoder name), which exports with
    the identity head and its authors' similarity.
    """
    from ragcun.model import EmbeddingModel, load
    from ragcun.resolve import resolve_model

    if isinstance(model_or_path, EmbeddingModel):
        return model_or_path, None
    text = os.fspath(model_or_path)
    path = Path(text).expanduser()
    if (path / CONFIG_FILE).is_file():
        return load(path), path
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            raise ValueError(f"RUN_OR_MODEL {text}: this training run has no final model yet ({CONFIG_FILE} is "
                             f"written when it finishes); export a checkpoint instead: "
                             f"{path / 'checkpoints' / 'step-N' / 'model'}")
        if not (path / "config.json").is_file():
            raise ValueError(f"RUN_OR_MODEL {text}: the folder is neither a ragcun checkpoint (no {CONFIG_FILE}) "
                             "nor a transformers model (no config.json)")
        return resolve_model(f"hf:{path}"), None
    if ":" not in text and (os.sep in text or text.startswith((".", "~"))):  # a path, not a spec
        raise ValueError(f"RUN_OR_MODEL {text}: no such folder (give a ragcun checkpoint or run folder, hf:PATH "
                         "or an encoder name)")
    return resolve_model(text), None
