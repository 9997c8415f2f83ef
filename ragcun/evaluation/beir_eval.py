"""``evaluate_beir``: a model on BEIR-format datasets, scored with beir's own metrics (pytrec_eval).

Conventions follow BEIR and MTEB so published numbers reproduce: documents are ``title + " " + text``
(stripped), queries as they are, base models scored with their sentence-transformers similarity (cosine for
all-MiniLM-L6-v2) and ``max_seq_length``, top-1000 exact search, identical query/document ids ignored,
``EvaluateRetrieval.evaluate`` for NDCG/MAP/Recall/P and ``evaluate_custom(..., "mrr")`` for MRR.

Under ``torchrun`` every rank calls :func:`evaluate_beir`; corpus and query encoding is split across ranks
(:mod:`ragcun.encoding`), so is the search (each rank searches for its share of the queries,
:class:`ragcun.evaluation.search.ShardedTopK`), and every rank returns the same result (rank 0 writes files).

The encoding, search and scoring are :mod:`ragcun.evaluation.pipeline`'s (the one pipeline the ablation, the sweep
and the periodic evaluation use too); this module resolves the model, datasets and ``--dtype`` and assembles the
report. ``evaluate_dataset``, ``beir_metrics``, ``per_query_scores`` and ``k_values_for`` are the pipeline's,
re-exported under their old names.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragcun.evaluation.pipeline import CORPUS_CHUNK_SIZE as CORPUS_CHUNK_SIZE  # re-exported, as the rest
from ragcun.evaluation.pipeline import DEFAULT_K_VALUES as DEFAULT_K_VALUES
from ragcun.evaluation.pipeline import beir_metrics as beir_metrics
from ragcun.evaluation.pipeline import evaluate_dataset as evaluate_dataset
from ragcun.evaluation.pipeline import k_values_for as k_values_for
from ragcun.evaluation.pipeline import per_query_scores as per_query_scores
from ragcun.precision import precision_names

# --dtype: one name per precision mode (ragcun.precision.PRECISIONS, the same in plans), then the older
# spelling: bfloat16, read here as bfloat16-weights (the whole encoder in bfloat16, eval's fast path: on MiniLM it
# moves NDCG@10 by less than 0.001 and encodes 1.3-1.5x faster than autocast on a CPU; benchmarks/RESULTS.md,
# "Encoding against the matmul limit"). bfloat16-autocast / float16: autocast (products in 16 bits,
# normalisations and sums in float32).
DTYPES = precision_names("eval")


def parse_datasets(datasets: str | Sequence[str]) -> list[str]:
    names = [d.strip() for d in datasets.split(",")] if isinstance(datasets, str) else [str(d) for d in datasets]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no datasets given; name them (scifact,nfcorpus) or use 'all'")
    return list(dict.fromkeys(names))


def select_datasets(names: Sequence[str], data_dir: Path, split: str, *, download: bool = True
                    ) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """Resolve dataset names to folders. ``all`` = every BEIR folder under ``data_dir`` that has ``split``;
    the others (missing split, standard BEIR datasets not present) are returned as ``{name: why skipped}``."""
    from ragcun.data.beir import (
        BEIR_DATASETS,
        available_splits,
        find_dataset,
        present_datasets,
    )

    chosen: list[tuple[str, Path]] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name.lower() != "all":
            folder = find_dataset(name, data_dir, download=download)
            chosen.append((Path(name).name if os.sep in name else name, folder))
            continue
        present = present_datasets(data_dir)
        for found in present:
            folder = data_dir / found
            if split in available_splits(folder):
                chosen.append((found, folder))
            else:
                skipped[found] = f"no {split} split (has: {', '.join(available_splits(folder)) or 'none'})"
        for beir_name in BEIR_DATASETS:
            if beir_name not in present:
                skipped.setdefault(beir_name, f"not present in {data_dir}")
    unique = list(dict.fromkeys(chosen))
    if not unique:
        raise ValueError(f"no dataset with a {split!r} split found in {data_dir}; put BEIR-format folders there "
                         "or pass --data-dir (or set RAGCUN_DATA)")
    return unique, skipped


def dtype_warning(dtype: str, device, *, flag: str = "--dtype", faster: str = "--dtype float32") -> str | None:
    """:func:`ragcun.precision.precision_warning` for an evaluation ``--dtype`` name (every bfloat16 mode
    computes in bfloat16; evaluation has no auto to suggest)."""
    import torch

    from ragcun.precision import precision_warning

    return precision_warning(torch.bfloat16 if dtype.startswith("bfloat16") else None, device, flag=flag,
                             faster=faster)


def _inference_copy(model, dtype: str):
    """The model ``--dtype`` encodes with: :func:`ragcun.evaluation.pipeline.inference_model`, prepared."""
    from ragcun.evaluation.pipeline import inference_model, precision

    return inference_model(model, precision(dtype, "eval"))


def _model_and_name(model_or_spec, distance: str | None, settings):
    """The model (ragcun.resolve, the one resolver) and the name the report gives it."""
    from ragcun.model import EmbeddingModel
    from ragcun.resolve import resolve_model

    model = resolve_model(model_or_spec, distance=distance, settings=settings)
    if isinstance(model_or_spec, EmbeddingModel):
        path = getattr(model.encoder, "path", None)
        return model, f"{type(model.encoder).__name__}({path})" if path else type(model.encoder).__name__
    return model, str(model_or_spec)


def _check_options(batch_size: int, corpus_chunk_size: int, search: str) -> None:
    """Refuse the options no dataset could run with, before anything is loaded."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if corpus_chunk_size < 1:
        raise ValueError(f"corpus_chunk_size must be positive, got {corpus_chunk_size}")
    if search not in ("exact", "faiss"):
        raise ValueError(f"--search must be exact or faiss, got {search!r}")


def _load_model(model_or_spec, distance: str | None, settings, truncate_dim: int | None, target):
    """The model on ``target`` (its first ``truncate_dim`` coordinates where given), the name the report gives it,
    and the seconds this took (the report's ``model_load_s``)."""
    t_load = time.perf_counter()
    model, model_name = _model_and_name(model_or_spec, distance, settings)
    if truncate_dim is not None:
        from ragcun.truncation import truncate_model

        full_dim = model.dim
        model = truncate_model(model, truncate_dim)
        model_name = f"{model_name} (first {truncate_dim} of {full_dim} dims)"
    model.to(target)
    return model, model_name, time.perf_counter() - t_load


def _encoder_model(model, mode: str):
    """The model that encodes (``mode``'s inference copy) and whether its head is fitted on each dataset.

    A head fitted from data (center, whiten) that comes unfitted is fitted on each dataset's own corpus, as the
    ablation's training-free arms are; one saved fitted keeps its statistics. Fitting changes the model, so it is
    done on a copy: the caller's model stays as it was given."""
    from ragcun.evaluation import pipeline
    from ragcun.heads.fitted import needs_fit

    fit_per_dataset = needs_fit(model.head)
    encoder_model = pipeline.inference_model(model, mode)
    if fit_per_dataset and encoder_model is model:
        import copy

        encoder_model = copy.deepcopy(model)
    return encoder_model, fit_per_dataset


def _report_settings(model, options: dict[str, Any], *, split: str, dtype: str, mode: str, search: str,
                     data_dir: Path, truncate_dim: int | None, target, world_size: int,
                     fit_per_dataset: bool) -> dict[str, Any]:
    """The report's ``settings``: every option that moves a score (``options``: :func:`evaluate_dataset`'s), the
    model's shape and the machine it ran on."""
    import torch

    from ragcun.components import component_name
    from ragcun.heads.fitted import FIT_SAMPLE

    return {
        "split": split, "k": options["k"], "k_values": options["k_values"], "batch_size": options["batch_size"],
        "dtype": dtype, "precision": mode,
        "distance": component_name(model.distance),
        "query_prefix": options["query_prefix"], "document_prefix": options["document_prefix"],
        "ignore_identical_ids": options["ignore_identical_ids"],
        "search": search, "corpus_chunk_size": options["corpus_chunk_size"], "data_dir": str(data_dir),
        "dim": model.dim, "truncate_dim": truncate_dim,
        "max_seq_length": getattr(model.encoder, "max_seq_length", None),
        "device": str(target), "world_size": world_size, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "platform": platform.platform(),
        "document_text": "title + ' ' + text, stripped (sentence-transformers / BEIR)",
        "head_fitted_on": (f"each dataset's corpus (a seeded sample of at most {FIT_SAMPLE} documents)"
                           if fit_per_dataset else None),
    }


def _empty_report(model_name: str, skipped: dict[str, str], settings: dict[str, Any], model_load_s: float, *,
                  per_query: bool, return_results: bool) -> dict[str, Any]:
    """The report before any dataset is evaluated: the sections :func:`_evaluate_into` fills, in their order."""
    report: dict[str, Any] = {
        "model": model_name,
        "datasets": {},
        "skipped": skipped,
        "settings": settings,
        "timings": {"model_load_s": model_load_s},
        "counts": {},
        "warnings": [],
    }
    if per_query:
        report["per_query"] = {}
    if return_results:
        report["runs"], report["qrels"] = {}, {}
    return report


def _warn_about_dtype(report: dict[str, Any], dtype: str, target, rank: int) -> None:
    """Add :func:`dtype_warning` to the report, and print it on rank 0 now, not only in the report: the run it
    warns about is long."""
    slow = dtype_warning(dtype, target)
    if slow:
        report["warnings"].append(slow)
        if rank == 0:
            from ragcun.console import stderr

            stderr.print(f"[yellow]warning:[/] {slow}", highlight=False, soft_wrap=True)


def _load_and_fit(encoder_model, name: str, folder: Path, split: str, options: dict[str, Any], *,
                  fit_head: bool) -> tuple[Any, float, dict[str, Any]]:
    """Load one dataset and, where the head is fitted per dataset, fit it on that dataset's corpus. Returns the
    dataset, the seconds loading took and ``{"timings": ..., "counts": ...}`` of the fit (empty without one)."""
    from ragcun.data.beir import load_beir
    from ragcun.evaluation import pipeline

    t0 = time.perf_counter()
    dataset = load_beir(folder, split, name=name)
    load_s = time.perf_counter() - t0
    fit: dict[str, Any] = {}
    if fit_head:
        t1 = time.perf_counter()
        fitted = pipeline.fit_head(encoder_model, dataset, batch_size=options["batch_size"],
                                   document_prefix=options["document_prefix"],
                                   autocast_dtype=options["autocast_dtype"])
        fit = {"timings": {"fit_head_s": time.perf_counter() - t1}, "counts": {"head_fitted_on": fitted}}
    return dataset, load_s, fit


def _evaluate_into(report: dict[str, Any], encoder_model, name: str, folder: Path, split: str,
                   options: dict[str, Any], *, fit_head: bool, return_results: bool, progress_start) -> None:
    """Evaluate one dataset (:func:`evaluate_dataset` with ``options``) and add it to every section of ``report``."""
    from ragcun.evaluation import pipeline

    dataset, load_s, fit = _load_and_fit(encoder_model, name, folder, split, options, fit_head=fit_head)
    out = pipeline.evaluate_dataset(encoder_model, dataset, **options, progress_start=progress_start)
    report["datasets"][name] = out["metrics"]
    report["timings"][name] = {"load_s": load_s, **out["timings"], **fit.get("timings", {})}
    report["counts"][name] = {**out["counts"], **fit.get("counts", {})}
    report["warnings"].extend(out["warnings"])
    if options["per_query"]:
        report["per_query"][name] = out["per_query"]
    if return_results:
        report["runs"][name] = out["results"]
        report["qrels"][name] = dataset.qrels  # the judgments it was scored with, for run_files.save_run


def evaluate_beir(model: Any, datasets: str | Sequence[str] = "all", data_dir: str | os.PathLike | None = None,
                  split: str = "test", *, k: int = 1000, k_values: Sequence[int] | None = None,
                  batch_size: int = 128, dtype: str = "float32", distance: str | None = None,
                  query_prefix: str | None = None, document_prefix: str | None = None,
                  ignore_identical_ids: bool = True, search: str = "exact",
                  corpus_chunk_size: int = CORPUS_CHUNK_SIZE, per_query: bool = False, download: bool = True,
                  device: str | None = None, settings=None, show_progress: bool | None = None,
                  return_results: bool = False, truncate_dim: int | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (an EmbeddingModel, or a spec: checkpoint folder, ``hf:PATH``, encoder name) on BEIR
    datasets (names, a comma list, or ``all``) and return::

        {"model": ..., "datasets": {"scifact": {"NDCG@10": ..., ...}}, "skipped": {...},
         "settings": {...}, "timings": {...}, "counts": {...}, "warnings": [...], ["per_query": ...]}

    Prefixes default to the model's own (a ragcun checkpoint stores them); ``dtype="bfloat16-weights"`` (or its
    older spelling ``"bfloat16"``) encodes with the whole encoder in bfloat16, ``"bfloat16-autocast"`` under
    autocast (:data:`DTYPES`; :mod:`ragcun.evaluation.pipeline`, which this composes). ``return_results``
    adds the raw top-k runs (``{"runs": {dataset: {qid: {doc id: score}}}}``) and the qrels they were scored with
    (``{"qrels": {dataset: {qid: {doc id: relevance}}}}``). ``truncate_dim`` evaluates the
    first ``D`` coordinates of every embedding (a Matryoshka prefix, scored with the model's own distance;
    :mod:`ragcun.truncation`).
    """
    from ragcun.console import progress_tasks
    from ragcun.data.beir import default_data_dir
    from ragcun.distributed import pick_device, world
    from ragcun.evaluation import pipeline

    _check_options(batch_size, corpus_chunk_size, search)
    target = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    mode = pipeline.precision(dtype, "eval")
    autocast_dtype = pipeline.autocast_dtype(mode, target)
    k_values = sorted(set(k_values)) if k_values else k_values_for(k)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    chosen, skipped = select_datasets(parse_datasets(datasets), data_dir, split, download=download)
    model, model_name, model_load_s = _load_model(model, distance, settings, truncate_dim, target)
    encoder_model, fit_per_dataset = _encoder_model(model, mode)
    # BEIR's document order, the corpus encoded in chunks each searched as it comes, sharded over the ranks
    options = {"k": max(k_values), "k_values": k_values, "batch_size": batch_size, "autocast_dtype": autocast_dtype,
               "query_prefix": model.query_prefix if query_prefix is None else query_prefix,
               "document_prefix": model.document_prefix if document_prefix is None else document_prefix,
               "ignore_identical_ids": ignore_identical_ids, "search_kind": search, "order": "length",
               "corpus_chunk_size": corpus_chunk_size, "shard": True, "per_query": per_query}
    rank, world_size = world()
    report = _empty_report(model_name, skipped,
                           _report_settings(model, options, split=split, dtype=dtype, mode=mode, search=search,
                                            data_dir=data_dir, truncate_dim=truncate_dim, target=target,
                                            world_size=world_size, fit_per_dataset=fit_per_dataset),
                           model_load_s, per_query=per_query, return_results=return_results)
    _warn_about_dtype(report, dtype, target, rank)
    total = time.perf_counter()
    with progress_tasks(rank == 0 if show_progress is None else show_progress) as start:
        for name, folder in chosen:
            _evaluate_into(report, encoder_model, name, folder, split, options, fit_head=fit_per_dataset,
                           return_results=return_results, progress_start=start)
    report["timings"]["total_s"] = time.perf_counter() - total
    return report


class BeirEvaluator:
    """The registered ``beir`` evaluator: ``BeirEvaluator(**settings)(model) -> report`` (see :func:`evaluate_beir`)."""

    def __init__(self, datasets: str | Sequence[str] = "all", data_dir: str | None = None, split: str = "test",
                 k: int = 1000, batch_size: int = 128, dtype: str = "float32", query_prefix: str | None = None,
                 document_prefix: str | None = None, ignore_identical_ids: bool = True, search: str = "exact",
                 truncate_dim: int | None = None) -> None:
        self.config = {"datasets": datasets, "data_dir": data_dir, "split": split, "k": k, "batch_size": batch_size,
                           "dtype": dtype, "query_prefix": query_prefix, "document_prefix": document_prefix,
                           "ignore_identical_ids": ignore_identical_ids, "search": search, "truncate_dim": truncate_dim}

    def __call__(self, model: Any, **overrides: Any) -> dict[str, Any]:
        return evaluate_beir(model, **{**self.config, **overrides})

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)


def main_metrics(report: dict[str, Any]) -> list[str]:
    """The columns of the summary table."""
    k_values = report["settings"]["k_values"]
    cols = ["NDCG@10", "MRR@10", "Recall@10", "Recall@100", f"Recall@{max(k_values)}"]
    present = set().union(*[set(m) for m in report["datasets"].values()]) if report["datasets"] else set()
    return [c for c in dict.fromkeys(cols) if c in present]
