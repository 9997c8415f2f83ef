"""Export a ragcun model to another library's format: ``ragcun.export(model_or_path, out)``.

Today one format, ``sentence-transformers``: a folder that ``SentenceTransformer(OUT)`` (and MTEB, vector
databases and RAG frameworks that read that format) loads offline, with a model card. The pieces:

* :mod:`~ragcun.exporters.st_modules`: the modules (Transformer, Pooling, Dense, Normalize) and their files;
* :mod:`~ragcun.exporters.st_components`: how an encoder and a head become modules, and the protocol a plugin
  component implements to export (``sentence_transformers_modules()`` or ``affine()``);
* :mod:`~ragcun.exporters.st_similarity`: the model's distance -> ``similarity_fn_name`` (or a refusal);
* :mod:`~ragcun.exporters.st_export`: the folder (written atomically) and its config files;
* :mod:`~ragcun.exporters.model_card`, :mod:`~ragcun.exporters.run_reports`,
  :mod:`ragcun.training.command_line` (injected): the README.md and what it reports from the run folder.

Light to import: torch loads when :func:`export` runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ragcun.exporters.st_export import ExportResult

FORMATS = ("sentence-transformers",)


def export(model_or_path: Any, out: str | os.PathLike, to: str = "sentence-transformers", *, mean_only: bool = False,
           overwrite: bool = False, training_command=None, truncate_dim: int | None = None) -> ExportResult:
    """Export a model (an ``EmbeddingModel``, a checkpoint or run folder, ``hf:PATH`` or an encoder name) to ``out``.

    ``mean_only``: export a log-variance model's mean vectors (its distance cannot be represented otherwise;
    the result says what is lost). ``overwrite``: replace a non-empty ``out``. ``truncate_dim``: export the first
    ``D`` coordinates of the embeddings (a Matryoshka prefix; :mod:`ragcun.truncation`). Returns an ``ExportResult``
    (``.path``, ``.similarity``, ``.pipeline``, ``.lost``, ``.notes``). Raises ``ValueError`` with the reason
    when the model cannot be exported; nothing is written then.
    """
    if to not in FORMATS:
        raise ValueError(f"--to {to!r}: ragcun exports to {', '.join(FORMATS)}")
    from ragcun.exporters.st_export import export_sentence_transformers
    from ragcun.resolve import resolve_model_and_folder

    with _hold_run(model_or_path):  # no training writes the run while it is read
        model, source = resolve_model_and_folder(model_or_path, label="RUN_OR_MODEL")
        if truncate_dim is not None:
            from ragcun.truncation import truncate_model

            model = truncate_model(model, truncate_dim)
        given_path = isinstance(model_or_path, (str, os.PathLike))
        spec = None if source is None and not given_path else os.fspath(model_or_path)
        return export_sentence_transformers(model, Path(out), mean_only=mean_only, overwrite=overwrite, source=source,
                                            source_spec=spec, training_command=training_command)


def _hold_run(model_or_path: Any):
    """The lock of the training run being exported (its folder or one of its checkpoints; ragcun.run_lock), so
    an export never reads a run that a ``ragcun train`` is writing. A read-only run needs no lock."""
    from contextlib import nullcontext

    from ragcun.exporters.run_reports import run_folder
    from ragcun.files import OutputError
    from ragcun.run_lock import acquire

    if not isinstance(model_or_path, (str, os.PathLike)) or not Path(model_or_path).expanduser().is_dir():
        return nullcontext()
    run = run_folder(Path(model_or_path).expanduser())
    if not ((run / "train_config.json").is_file() or (run / "checkpoints").is_dir()):
        return nullcontext()
    try:
        return acquire(run, what="ragcun export", label=f"the run {run}")
    except OutputError:  # a run nobody can write to (read-only): nothing can change it while it is read
        return nullcontext()
