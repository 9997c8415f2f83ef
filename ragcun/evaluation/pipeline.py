"""The one retrieval pipeline for BEIR-format data: encode -> search -> score.

``ragcun eval beir`` (:func:`ragcun.evaluation.beir_eval.evaluate_beir`), the periodic evaluation of a training
run (:mod:`ragcun.evaluation.training_callbacks`), ``ragcun preflight``'s evaluation check and the ablation runner
(:mod:`ragcun.ablation.scoring`, which also runs ``ragcun sweep``'s plan) all call :func:`evaluate_dataset` here.
Its steps are also public for callers that keep what they encode (the ablation caches the base encoder's outputs
and re-uses them for every arm that only adds a head): :func:`encode_dataset`, :func:`search_encoded`,
:func:`score_run`, :func:`isotropy_columns`, :func:`fit_head`.

Where the callers differ, it is an option here, and each caller keeps the behaviour that produced its numbers
(its committed results, its pinned tests), because each of these differences moves scores:

=====================  =====================================  ===============================================
option                 ``eval beir``, periodic evaluation,    ablation runner (``ragcun ablation run``,
                       preflight                              ``ragcun sweep``)
=====================  =====================================  ===============================================
``order``              ``"length"``: queries as the files     ``"id"``: queries and documents sorted by id
                       list them, documents longest first      (every committed ablation run was scored so;
                       (BEIR's own order; ties rank by         documents tied in score rank by position, so
                       document position)                      the order decides ties)
``corpus_chunk_size``  50,000: the corpus is encoded in        ``None``: the whole corpus is encoded, then
                       chunks, each searched as it comes (a    searched (its vectors are kept: cached for the
                       corpus of any size in bounded memory)   arms that re-use them, and for isotropy)
``precision``          ``--dtype``, on a prepared copy         the plan's ``dtype``, autocast on the model as
                       (:func:`inference_model`,               it is (``prepared=False``): the prepared copy's
                       ``prepared=True``); periodic            fused GELU rounds differently on CPUs with
                       evaluation: training's autocast         native bfloat16 (:mod:`ragcun.encoders.cpu_fusion`)
``per_query``          with ``--per-query`` / ``--save-run``   always (the paired significance tests)
``isotropy_sample``    none                                   2,000 (the plan's): a seeded sample of the very
                                                              vectors searched, :func:`isotropy_columns`
``shard``              ``True``: under ``torchrun`` each rank  ``False``: one process
                       searches its share of the queries
fitted heads           :func:`fit_head` on a seeded sample     :func:`fit_head` on every cached document vector
                       (at most ``FIT_SAMPLE`` documents) of   of the corpus searched (``encoded=``)
                       the corpus searched, encoded anew
=====================  =====================================  ===============================================

Prefixes are the model's own everywhere (``eval beir`` can override them); batch sizes are each command's
(``--batch-size``, a plan's ``batch_size``, ``--eval-batch-size``); the search is exact everywhere (``eval beir``
can use FAISS's flat index for the candidates, same result); the metrics are beir's (:func:`beir_metrics`) and
pytrec_eval's per query (:func:`per_query_scores`), identical query and document ids ignored as BEIR does.

Precision has one name per mode, the same in every command and plan file (:data:`PRECISIONS`):

* ``float32``: the reference;
* ``bfloat16-weights``: the whole encoder cast to bfloat16 (oneDNN/cuBLAS still accumulate its products in
  float32); the fastest on a CPU with native bfloat16, within 0.001 NDCG@10 of float32 on MiniLM;
* ``bfloat16-autocast``: autocast, the matrix products in bfloat16, normalisations and sums in float32;
* ``float16``: autocast in float16 (CUDA only).

The bare ``bfloat16`` is an older spelling that two places read differently, and both still do
(:data:`OLD_SPELLINGS`): in ``ragcun eval beir --dtype`` / ``evaluate_beir(dtype=)`` it has meant the whole-model
cast since that became eval's fast path, so it is read as ``bfloat16-weights``; in an ablation plan's ``dtype``
it has meant autocast since the first plan, so it is read as ``bfloat16-autocast`` (every committed plan says
``bfloat16``, and changing the text would change its settings hash). Training's ``--dtype bfloat16`` is autocast:
training has no other bfloat16 mode. Write the explicit names in anything new.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# the evaluation precision modes and their names are ragcun.precision's (light: the CLI and plan checks read them)
from ragcun.precision import OLD_SPELLINGS as OLD_SPELLINGS
from ragcun.precision import PRECISIONS as PRECISIONS
from ragcun.precision import precision as precision
from ragcun.precision import precision_names as precision_names

if TYPE_CHECKING:  # torch is imported on use: the precision names serve light modules (the CLI, plan checks)
    import torch

    from ragcun.embedding import Embedding

CORPUS_CHUNK_SIZE = 50_000  # documents encoded before their vectors are merged into the running top-k
DEFAULT_K_VALUES = (1, 3, 5, 10, 100, 1000)

ORDERS = ("length", "id")

# partition isotropy is not scale invariant: on raw vectors with norms ~sqrt(D) it is ~0 for any cloud, so the
# L2-normalized value is kept too (the report shows both)
ISOTROPY_KEYS = ("isoscore", "partition_isotropy_raw", "partition_isotropy_l2", "sigreg_raw", "sigreg_gaussian_floor",
                 "effective_rank_ratio", "average_cosine", "norm_mean")


# -- precision --------------------------------------------------------------------------------------------------


def autocast_dtype(mode: str, device=None, *, flag: str = "--dtype"):
    """The autocast dtype of a mode (:data:`PRECISIONS`): None for ``float32`` and ``bfloat16-weights`` (no
    autocast; the weights' bfloat16 is checked against ``device`` all the same), bfloat16 or float16 for the
    autocast modes; checked by :func:`ragcun.precision.resolve_dtype` (``device=None``: the name only)."""
    import torch

    from ragcun.precision import check_dtype_name, resolve_dtype

    check_dtype_name(mode, PRECISIONS, flag=flag)
    resolved = resolve_dtype("bfloat16" if mode.startswith("bfloat16") else mode, device, flag=flag)
    return None if resolved is torch.float32 or mode == "bfloat16-weights" else resolved


def inference_model(model, mode: str, *, prepared: bool = True):
    """The model to encode with in ``mode`` (:data:`PRECISIONS`; the caller's model is never changed).

    ``bfloat16-weights`` casts every parameter of a copy. For the autocast modes, ``prepared`` gives a copy whose
    Linear weights are already 16-bit: under autocast a Linear casts its float32 weight on every call, and the copy
    computes the same products without the casts (~10% faster on a CPU); ``prepared=False`` returns ``model``
    itself (autocast as it is: the ablation's encoding). Prepared, in bfloat16 on a CPU that computes it natively,
    each feed-forward GELU is fused into its matrix product (:mod:`ragcun.encoders.cpu_fusion`; it rounds once
    instead of twice, so the numbers differ slightly from the unfused autocast)."""
    import copy

    import torch

    from ragcun.encoders.cpu_fusion import fuse_linear_gelu

    if mode == "float32" or (not prepared and mode != "bfloat16-weights"):
        return model
    half = torch.float16 if mode == "float16" else torch.bfloat16
    fast = copy.deepcopy(model)
    if mode == "bfloat16-weights":
        fast.to(half)
    else:
        for module in fast.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(half)
    if prepared and half is torch.bfloat16 and fast.device.type == "cpu":
        fuse_linear_gelu(fast)
    return fast


# -- encode -----------------------------------------------------------------------------------------------------

@dataclass
class EncodedDataset:
    query_ids: list[str]
    doc_ids: list[str]
    queries: Embedding  # (Q, D)
    documents: Embedding  # (N, D)


def ordered_ids(dataset, order: str) -> tuple[list[str], list[str]]:
    """``(query ids, document ids)`` in the order they are encoded and searched: ``"length"`` (queries as loaded,
    documents by ``len(title + text)``, longest first: BEIR's order) or ``"id"`` (both sorted by id)."""
    if order == "length":
        corpus = dataset.corpus
        return list(dataset.queries), sorted(corpus, key=lambda d: len(corpus[d]["title"] + corpus[d]["text"]),
                                             reverse=True)
    if order == "id":
        return sorted(dataset.queries), sorted(dataset.corpus)
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


def _no_progress(description, total):
    return None


def encode_queries(model, dataset, query_ids: Sequence[str], *, batch_size: int, autocast_dtype=None,
                   query_prefix: str = "", progress_start=None) -> Embedding:
    from ragcun.encoding import encode

    start = progress_start or _no_progress
    return encode(model, [query_prefix + dataset.queries[q] for q in query_ids], batch_size,
                  autocast_dtype=autocast_dtype, progress=start(f"{dataset.name} queries", len(query_ids)))


def encode_documents(model, corpus, doc_ids: Sequence[str], *, batch_size: int, autocast_dtype=None,
                     document_prefix: str = "", progress=None) -> Embedding:
    from ragcun.encoding import encode
    from ragcun.model import corpus_texts

    return encode(model, [document_prefix + t for t in corpus_texts([corpus[d] for d in doc_ids])], batch_size,
                  autocast_dtype=autocast_dtype, progress=progress)


def encode_dataset(model, dataset, *, batch_size: int, autocast_dtype=None, query_prefix: str = "",
                   document_prefix: str = "", order: str = "id", progress_start=None) -> EncodedDataset:
    """Embed a dataset's queries and whole corpus (float32 on the CPU), in ``order`` (:func:`ordered_ids`)."""
    query_ids, doc_ids = ordered_ids(dataset, order)
    start = progress_start or _no_progress
    queries = encode_queries(model, dataset, query_ids, batch_size=batch_size, autocast_dtype=autocast_dtype,
                             query_prefix=query_prefix, progress_start=start)
    documents = encode_documents(model, dataset.corpus, doc_ids, batch_size=batch_size, autocast_dtype=autocast_dtype,
                                 document_prefix=document_prefix,
                                 progress=start(f"{dataset.name} corpus", len(doc_ids)))
    return EncodedDataset(query_ids, doc_ids, queries, documents)


def apply_head(head, encoded: EncodedDataset) -> EncodedDataset:
    """The embeddings a head gives on top of cached encoder outputs (``encoded`` from an identity head)."""
    import torch

    with torch.inference_mode():
        queries = head(encoded.queries.mean.to(torch.float32))
        documents = head(encoded.documents.mean.to(torch.float32))
    return EncodedDataset(encoded.query_ids, encoded.doc_ids, queries, documents)


def fit_head(model, dataset, *, encoded: EncodedDataset | None = None, batch_size: int = 128,
             document_prefix: str | None = None, autocast_dtype=None) -> int:
    """Fit a head fitted from data (center, whiten) on the corpus about to be searched; returns how many
    documents it was fitted on. With ``encoded`` (cached encoder outputs of that corpus: the ablation) on every
    document's vector; otherwise on a seeded sample of at most ``FIT_SAMPLE`` documents, encoded now by ``model``
    (:meth:`ragcun.model.EmbeddingModel.fit_head`: ``eval beir``)."""
    if encoded is not None:
        model.head.fit(encoded.documents.mean)
        return len(encoded.documents)
    from ragcun.model import corpus_texts

    return model.fit_head(corpus_texts(list(dataset.corpus.values())), batch_size, document_prefix=document_prefix,
                          autocast_dtype=autocast_dtype, show_progress=False)


# -- search -----------------------------------------------------------------------------------------------------

def search_encoded(distance, encoded: EncodedDataset, k: int, *, ignore_identical_ids: bool = True,
                   kind: str = "exact", shard: bool = False) -> dict[str, dict[str, float]]:
    """Exact top-``k`` of every query among all of ``encoded``'s documents, ``{qid: {doc id: similarity}}``."""
    from ragcun.evaluation.search import search

    return search(distance, encoded.queries, encoded.documents, k, query_ids=encoded.query_ids,
                  doc_ids=encoded.doc_ids, ignore_identical_ids=ignore_identical_ids, kind=kind, shard=shard)


# -- score ------------------------------------------------------------------------------------------------------

def k_values_for(k: int) -> list[int]:
    """The usual cut-offs up to ``k`` (and ``k`` itself)."""
    if k < 1:
        raise ValueError(f"--k must be positive, got {k}")
    return sorted({v for v in DEFAULT_K_VALUES if v <= k} | {k})


def beir_metrics(qrels, results, k_values: Sequence[int], *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """beir's own metrics (``EvaluateRetrieval``: pytrec_eval's NDCG, MAP, Recall, P, and beir's MRR) of a run
    ``{qid: {doc id: score}}`` against ``qrels``, named ``NDCG@10`` etc."""
    import logging  # here, not at the top: the CLI imports this module for its precision names

    from beir.retrieval.evaluation import EvaluateRetrieval

    beir_logger = logging.getLogger("beir.retrieval.evaluation")
    level = beir_logger.level
    beir_logger.setLevel(logging.WARNING)  # beir logs every metric at INFO; ours go in the table
    try:
        ndcg, _map, recall, precision_at = EvaluateRetrieval.evaluate(qrels, results, list(k_values),
                                                                      ignore_identical_ids=ignore_identical_ids)
        mrr = EvaluateRetrieval.evaluate_custom(qrels, results, list(k_values), "mrr")
    finally:
        beir_logger.setLevel(level)
    return {**ndcg, **_map, **recall, **precision_at, **mrr}


def per_query_scores(qrels, results, k_values: Sequence[int]) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query NDCG/MAP/Recall/P at each cut-off plus MRR@k, named as in the summary."""
    import pytrec_eval

    ks = ",".join(str(k) for k in k_values)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"map_cut.{ks}", f"ndcg_cut.{ks}", f"recall.{ks}", f"P.{ks}"})
    scores = evaluator.evaluate(results)
    names = {"ndcg_cut": "NDCG", "map_cut": "MAP", "recall": "Recall", "P": "P"}
    out: dict[str, dict[str, float]] = {}
    for qid in qrels:
        row = {}
        for key, label in names.items():
            for k in k_values:
                row[f"{label}@{k}"] = float(scores.get(qid, {}).get(f"{key}_{k}", 0.0))
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        ranked = sorted(results.get(qid, {}).items(), key=lambda item: item[1], reverse=True)
        for k in k_values:
            rank = next((i for i, (d, _) in enumerate(ranked[:k]) if d in relevant), None)
            row[f"MRR@{k}"] = 0.0 if rank is None else 1.0 / (rank + 1)
        out[qid] = row
    return out


def score_run(qrels, results, k_values: Sequence[int], *, per_query: bool = False,
              ignore_identical_ids: bool = True) -> dict[str, Any]:
    """``{"metrics": beir's metrics[, "per_query": pytrec_eval's per query]}`` of one run."""
    out: dict[str, Any] = {"metrics": beir_metrics(qrels, results, k_values,
                                                   ignore_identical_ids=ignore_identical_ids)}
    if per_query:
        out["per_query"] = per_query_scores(qrels, results, k_values)
    return out


def isotropy_columns(documents: torch.Tensor, sample: int, seed: int = 0) -> dict:
    """The isotropy metrics of a fixed random sample of ``sample`` corpus embeddings (n stated)."""
    from ragcun.diagnostics.report import population_metrics

    rows = list(range(documents.shape[0]))
    random.Random(seed).shuffle(rows)
    picked = documents[sorted(rows[:sample])]
    metrics = {m.key: m.value for m in population_metrics(picked, seed=seed, reference_draws=0)}
    return {"n": int(picked.shape[0]), "normalized": False, **{k: float(metrics[k]) for k in ISOTROPY_KEYS}}


# -- the pipeline -----------------------------------------------------------------------------------------------

def _search_while_encoding(model, dataset, distance, k: int, *, batch_size: int, autocast_dtype, query_prefix: str,
                           document_prefix: str, ignore_identical_ids: bool, search_kind: str, order: str,
                           corpus_chunk_size: int, shard: bool, keep: bool, progress_start):
    """:func:`evaluate_dataset` with a ``corpus_chunk_size``: the queries encoded, then the corpus
    ``corpus_chunk_size`` documents at a time, each chunk added to the running top-k as it comes (a corpus of any
    size in bounded memory). Returns ``(results, query ids, document ids, timings, encoded)``; ``encoded`` holds the
    vectors searched where ``keep`` asks for them, else ``None``."""
    from ragcun.embedding import Embedding
    from ragcun.evaluation.search import identical_id_positions, make_searcher, to_results

    timings: dict[str, float] = {}
    query_ids, doc_ids = ordered_ids(dataset, order)
    t0 = time.perf_counter()
    query_emb = encode_queries(model, dataset, query_ids, batch_size=batch_size, autocast_dtype=autocast_dtype,
                               query_prefix=query_prefix, progress_start=progress_start)
    timings["encode_queries_s"] = time.perf_counter() - t0
    exclude = identical_id_positions(query_ids, doc_ids) if ignore_identical_ids else None
    searcher = make_searcher(search_kind, distance, query_emb, k, exclude, shard=shard)
    advance = progress_start(f"{dataset.name} corpus", len(doc_ids))
    kept: list[Embedding] = []
    t0 = time.perf_counter()
    encode_s = 0.0
    for s in range(0, len(doc_ids), corpus_chunk_size):
        t1 = time.perf_counter()
        emb = encode_documents(model, dataset.corpus, doc_ids[s:s + corpus_chunk_size], batch_size=batch_size,
                               autocast_dtype=autocast_dtype, document_prefix=document_prefix, progress=advance)
        encode_s += time.perf_counter() - t1
        searcher.add(emb)
        if keep:
            kept.append(emb)
        del emb
    values, indices = searcher.result()
    results = to_results(values, indices, query_ids, doc_ids)
    timings["encode_corpus_s"] = encode_s
    timings["search_s"] = time.perf_counter() - t0 - encode_s
    encoded = None
    if kept:
        encoded = EncodedDataset(query_ids, doc_ids, query_emb, Embedding.cat(kept) if len(kept) > 1 else kept[0])
    return results, query_ids, doc_ids, timings, encoded


def _pipeline_output(dataset, scored: dict[str, Any], results, timings: dict[str, float], query_ids, doc_ids,
                     encoded: EncodedDataset | None, *, per_query: bool, isotropy_sample: int | None,
                     keep_encoded: bool) -> dict[str, Any]:
    """:func:`evaluate_dataset`'s return value, the optional parts only where their option asks for them."""
    warnings = dataset.warnings() if callable(getattr(dataset, "warnings", None)) else []
    out: dict[str, Any] = {"metrics": scored["metrics"], "timings": timings,
                           "counts": {"documents": len(doc_ids), "queries": len(query_ids),
                                      "qrels": sum(len(v) for v in dataset.qrels.values())},
                           "warnings": warnings, "results": results}
    if per_query:
        out["per_query"] = scored["per_query"]
    if isotropy_sample:
        out["isotropy"] = isotropy_columns(encoded.documents.mean, isotropy_sample)
    if keep_encoded:
        out["encoded"] = encoded
    return out


def evaluate_dataset(model, dataset, *, k: int = 1000, k_values: Sequence[int] | None = None,
                     batch_size: int = 128, autocast_dtype=None, query_prefix: str = "",
                     document_prefix: str = "", ignore_identical_ids: bool = True, search_kind: str = "exact",
                     order: str = "length", corpus_chunk_size: int | None = CORPUS_CHUNK_SIZE,
                     encoded: EncodedDataset | None = None, distance=None, per_query: bool = False,
                     isotropy_sample: int | None = None, keep_encoded: bool = False, shard: bool = True,
                     progress_start=None) -> dict[str, Any]:
    """Encode, search and score one loaded :class:`~ragcun.data.beir.BeirDataset` (options: the module docstring).

    ``model`` encodes (already in its precision: :func:`inference_model`; ``autocast_dtype`` for the autocast
    modes); ``distance`` ranks (default ``model.distance``). ``encoded`` skips the encoding (vectors already
    computed, e.g. cached); ``corpus_chunk_size=None`` encodes the whole corpus before searching, a number encodes
    that many documents at a time, each chunk searched while the next is encoded. Returns ``{"metrics",
    "timings", "counts", "warnings", "results"}`` plus ``"per_query"`` (``per_query``), ``"isotropy"``
    (``isotropy_sample``: :func:`isotropy_columns` of the vectors searched) and ``"encoded"`` (``keep_encoded``).
    """
    k_values = list(k_values or k_values_for(k))
    distance = model.distance if distance is None else distance
    start = progress_start or (lambda description, total: (lambda n: None))
    timings: dict[str, float] = {}
    if corpus_chunk_size is not None and corpus_chunk_size < 1:
        raise ValueError(f"corpus_chunk_size must be positive, got {corpus_chunk_size}")

    if encoded is None and corpus_chunk_size is None:
        t0 = time.perf_counter()
        encoded = encode_dataset(model, dataset, batch_size=batch_size, autocast_dtype=autocast_dtype,
                                 query_prefix=query_prefix, document_prefix=document_prefix, order=order,
                                 progress_start=start)
        timings["encode_s"] = time.perf_counter() - t0
    if encoded is not None:
        t0 = time.perf_counter()
        results = search_encoded(distance, encoded, k, ignore_identical_ids=ignore_identical_ids, kind=search_kind,
                                 shard=shard)
        timings["search_s"] = time.perf_counter() - t0
        query_ids, doc_ids = encoded.query_ids, encoded.doc_ids
    else:  # encode while searching: chunk by chunk into the running top-k
        results, query_ids, doc_ids, chunk_timings, encoded = _search_while_encoding(
            model, dataset, distance, k, batch_size=batch_size, autocast_dtype=autocast_dtype,
            query_prefix=query_prefix, document_prefix=document_prefix, ignore_identical_ids=ignore_identical_ids,
            search_kind=search_kind, order=order, corpus_chunk_size=corpus_chunk_size, shard=shard,
            keep=bool(keep_encoded or isotropy_sample), progress_start=start)
        timings.update(chunk_timings)

    t0 = time.perf_counter()
    scored = score_run(dataset.qrels, results, k_values, per_query=per_query, ignore_identical_ids=ignore_identical_ids)
    timings["metrics_s"] = time.perf_counter() - t0
    if "encode_corpus_s" in timings:
        encode_s = timings["encode_corpus_s"]
        timings["docs_per_s"] = len(doc_ids) / encode_s if encode_s > 0 else None
    return _pipeline_output(dataset, scored, results, timings, query_ids, doc_ids, encoded, per_query=per_query,
                            isotropy_sample=isotropy_sample, keep_encoded=keep_encoded)
