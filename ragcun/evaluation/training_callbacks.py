"""The periodic work of a training run, as callbacks (ragcun.training.callbacks): evaluation on a BEIR split
every ``eval_every`` steps and isotropy diagnostics of a fixed sample of training documents every
``diagnostics_every`` steps. They live here, beside what they call, so the training package never imports
evaluation; :func:`standard_callbacks` is what ``ragcun.train`` and ``ragcun train`` pass to the loop.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ragcun.training.callbacks import Callback, TrainingState


def load_eval_set(config):
    """The ``--eval-data`` split, cut to ``--max-eval-queries`` (the first ids in sorted order)."""
    from ragcun.data.beir import load_beir
    from ragcun.data.training import resolve_eval_split

    folder, split = resolve_eval_split(config.eval_data, config.data_dir)
    dataset = load_beir(folder, split, name=folder.name)
    if config.max_eval_queries and len(dataset.queries) > config.max_eval_queries:
        keep = sorted(dataset.queries)[:config.max_eval_queries]
        dataset.queries = {q: dataset.queries[q] for q in keep}
        dataset.qrels = {q: dataset.qrels[q] for q in keep}
    return dataset


class PeriodicEvaluation(Callback):
    """NDCG/MRR/Recall on the eval split every ``eval_every`` steps (every rank encodes its share)."""

    setting = "eval_every"

    def __init__(self, config) -> None:
        self.every = config.eval_every
        self.dataset = load_eval_set(config)  # at construction: a bad --eval-data fails before training

    def on_step(self, state: TrainingState, step: int) -> dict | None:
        if step % self.every:
            return None
        from ragcun.evaluation.pipeline import evaluate_dataset

        model, autocast = state.model, state.autocast
        out = evaluate_dataset(model, self.dataset, k=100, k_values=[10, 100],
                               batch_size=state.config.eval_batch_size,
                               autocast_dtype=autocast.fast_dtype if autocast is not None else None,
                               query_prefix=model.query_prefix, document_prefix=model.document_prefix)
        keep = ("NDCG@10", "MRR@10", "Recall@10", "Recall@100")
        return {"step": step, "eval": {"dataset": f"{self.dataset.name}:{self.dataset.split}",
                                       **{k: float(v) for k, v in out["metrics"].items() if k in keep}}}


class PeriodicDiagnostics(Callback):
    """The isotropy report's numbers for 256 training documents every ``diagnostics_every`` steps (encoding
    sharded over the ranks; rank 0 computes the metrics)."""

    setting = "diagnostics_every"

    def __init__(self, config) -> None:
        self.every = config.diagnostics_every
        self.texts: list[str] = []

    def on_start(self, state: TrainingState) -> None:
        from ragcun.training.samples import DIAGNOSTIC_TEXTS, first_texts

        self.texts = first_texts(state.source, DIAGNOSTIC_TEXTS)

    def on_step(self, state: TrainingState, step: int) -> dict | None:
        if step % self.every:
            return None
        from ragcun.encoding import encode

        emb = encode(state.model, self.texts, state.config.eval_batch_size)
        if not state.ctx.is_main:
            return None
        from ragcun.diagnostics.report import embedding_diagnostics

        return {"step": step, "diagnostics": _jsonable(embedding_diagnostics(emb.mean))}


def standard_callbacks(config) -> list[Callback]:
    """The callbacks the config asks for (periodic evaluation, diagnostics)."""
    out: list[Callback] = []
    if config.eval_every:
        out.append(PeriodicEvaluation(config))
    if config.diagnostics_every:
        out.append(PeriodicDiagnostics(config))
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
