"""ragcun: train and evaluate dense retrievers with unnormalized ("Gaussian") embeddings, Euclidean
distance and LeJEPA's SIGReg isotropy regularizer.

This module stays light (no torch import) so ``ragcun --help`` starts fast; heavy parts load on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragcun.hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from ragcun.model import EmbeddingModel
    from ragcun.registry import Registry

__all__ = ["__version__", "hookimpl", "load", "build_model", "train", "evaluate_beir", "isotropy_report", "export",
           "get_registry", "list_components"]


def load(path: str, **kwargs: Any) -> EmbeddingModel:
    """Load a ragcun checkpoint folder (``model.safetensors`` + ``ragcun.json``)."""
    from ragcun.model import load as _load

    return _load(path, **kwargs)


def build_model(encoder: str = "all-minilm-l6-v2", head: str = "gaussian", distance: str = "euclidean",
                **kwargs: Any) -> EmbeddingModel:
    """Build a fresh model from component specs."""
    from ragcun.model import EmbeddingModel

    return EmbeddingModel.build(encoder, head, distance, **kwargs)


def train(config: Any, *, resume: bool = False, **kwargs: Any) -> Any:
    """Train a ``ragcun.training.config.TrainConfig`` as ``ragcun train`` does: the loop with the periodic
    evaluation and diagnostics the config asks for (ragcun.workflows.run); returns a TrainResult.

    ``data=``: in-memory examples instead of ``train_data`` (a list of ``(query, positive[, negatives])``,
    JSONL-style dicts, InputExamples, or a ``datasets.Dataset``; :mod:`ragcun.data.in_memory`). A resumed run
    needs the same examples: ``train(config, resume=True, data=examples)``."""
    from ragcun.workflows.run import train as _train

    return _train(config, resume=resume, **kwargs)


def evaluate_beir(model: Any, datasets: Any = "all", data_dir: Any = None, **kwargs: Any) -> dict:
    """``ragcun eval beir`` from Python: retrieve with ``model`` (a model object or a ``--model`` spec) on BEIR
    datasets and score with beir's metrics (:func:`ragcun.evaluation.beir_eval.evaluate_beir`)."""
    from ragcun.evaluation.beir_eval import evaluate_beir as _evaluate

    return _evaluate(model, datasets, data_dir, **kwargs)


def isotropy_report(models: Any, dataset: str, data_dir: Any = None, **kwargs: Any) -> dict:
    """``ragcun isotropy report`` from Python: isotropy metrics of each model's embeddings of a dataset sample,
    side by side, with report.json and plots (:func:`ragcun.diagnostics.report.isotropy_report`)."""
    from ragcun.diagnostics.report import isotropy_report as _report

    return _report(models, dataset, data_dir, **kwargs)


def export(model_or_path: Any, out: str, to: str = "sentence-transformers", *, mean_only: bool = False,
           overwrite: bool = False, truncate_dim: int | None = None) -> Any:
    """Export a model or checkpoint to another library's folder format (see :mod:`ragcun.exporters`);
    ``truncate_dim``: its embeddings' first D coordinates (a Matryoshka prefix)."""
    from ragcun.exporters import export as _export
    from ragcun.training.command_line import training_command

    return _export(model_or_path, out, to, mean_only=mean_only, overwrite=overwrite, training_command=training_command,
                   truncate_dim=truncate_dim)


def get_registry() -> Registry:
    """The registry filled by the built-ins and every installed plugin."""
    from ragcun.plugins import get_registry as _get

    return _get()


def list_components(kind: str | None = None, pattern: str | None = None) -> list[dict]:
    return [e.as_dict() for e in get_registry().entries(kind, pattern)]
