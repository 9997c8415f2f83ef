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

__all__ = ["__version__", "hookimpl", "load", "build_model", "train", "export", "get_registry", "list_components"]


def load(path: str, **kwargs: Any) -> "EmbeddingModel":
    """Load a ragcun checkpoint folder (``model.safetensors`` + ``ragcun.json``)."""
    from ragcun.model import load as _load

    return _load(path, **kwargs)


def build_model(encoder: str = "all-minilm-l6-v2", head: str = "gaussian", distance: str = "euclidean",
                **kwargs: Any) -> "EmbeddingModel":
    """Build a fresh model from component specs."""
    from ragcun.model import EmbeddingModel

    return EmbeddingModel.build(encoder, head, distance, **kwargs)


def train(config: Any, *, resume: bool = False, **kwargs: Any) -> Any:
    """Train a ``ragcun.training.config.TrainConfig`` as ``ragcun train`` does: the loop with the periodic
    evaluation and diagnostics the config asks for (ragcun.workflows.run); returns a TrainResult."""
    from ragcun.workflows.run import train as _train

    return _train(config, resume=resume, **kwargs)


def export(model_or_path: Any, out: str, to: str = "sentence-transformers", *, mean_only: bool = False,
           overwrite: bool = False) -> Any:
    """Export a model or checkpoint to another library's folder format (see :mod:`ragcun.exporters`)."""
    from ragcun.cli.command_line import training_command
    from ragcun.exporters import export as _export

    return _export(model_or_path, out, to, mean_only=mean_only, overwrite=overwrite, training_command=training_command)


def get_registry() -> "Registry":
    """The registry filled by the built-ins and every installed plugin."""
    from ragcun.plugins import get_registry as _get

    return _get()


def list_components(kind: str | None = None, pattern: str | None = None) -> list[dict]:
    return [e.as_dict() for e in get_registry().entries(kind, pattern)]
