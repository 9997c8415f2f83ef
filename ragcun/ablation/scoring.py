"""Score one model's embeddings of a BEIR dataset: retrieval metrics, per-query metrics, run, isotropy.

The ablation encodes each dataset once per model and reuses the embeddings for everything it reports, so the
isotropy columns describe exactly the vectors that were searched. Arms whose encoder is the base encoder
(training-free transforms, a frozen encoder) reuse the base encoder's cached outputs and only apply their
head: the head is a small affine map, so that costs nothing next to encoding the corpus again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ragcun.embedding import Embedding

# partition isotropy is not scale invariant: on raw vectors with norms ~sqrt(D) it is ~0 for any cloud, so the
# L2-normalized value is kept too (the report shows both)
ISOTROPY_KEYS = ("isoscore", "partition_isotropy_raw", "partition_isotropy_l2", "sigreg_raw", "sigreg_gaussian_floor",
                 "effective_rank_ratio", "average_cosine", "norm_mean")


@dataclass
class EncodedDataset:
    query_ids: list[str]
    doc_ids: list[str]
    queries: Embedding  # (Q, D)
    documents: Embedding  # (N, D)


def encode_dataset(model, dataset, *, batch_size: int, dtype: str, query_prefix: str = "",
                   document_prefix: str = "", progress=None) -> EncodedDataset:
    """Embed a dataset's queries and corpus (float32 on the CPU) with ``model`` (bfloat16 autocast if asked)."""
    from ragcun.evaluation.beir_eval import resolve_autocast
    from ragcun.encoding import encode
    from ragcun.model import corpus_texts

    # a plan's "bfloat16" has meant autocast since the first plan; it keeps that meaning, so that runs of one
    # plan stay comparable whichever version of ragcun encoded them
    autocast = resolve_autocast("bfloat16-autocast" if dtype == "bfloat16" else dtype)
    query_ids = sorted(dataset.queries)
    doc_ids = sorted(dataset.corpus)
    start = progress or (lambda description, total: None)
    queries = encode(model, [query_prefix + dataset.queries[q] for q in query_ids], batch_size,
                     autocast_dtype=autocast, progress=start(f"{dataset.name} queries", len(query_ids)))
    documents = encode(model, [document_prefix + t for t in corpus_texts([dataset.corpus[d] for d in doc_ids])],
                       batch_size, autocast_dtype=autocast, progress=start(f"{dataset.name} corpus", len(doc_ids)))
    return EncodedDataset(query_ids, doc_ids, queries, documents)


def apply_head(head, encoded: EncodedDataset) -> EncodedDataset:
    """The embeddings a head gives on top of cached encoder outputs (``encoded`` from an identity head)."""
    with torch.inference_mode():
        queries = head(encoded.queries.mean.to(torch.float32))
        documents = head(encoded.documents.mean.to(torch.float32))
    return EncodedDataset(encoded.query_ids, encoded.doc_ids, queries, documents)


def isotropy_columns(documents: torch.Tensor, sample: int, seed: int = 0) -> dict:
    """The isotropy metrics of a fixed random sample of ``sample`` corpus embeddings (n stated)."""
    from ragcun.diagnostics.report import population_metrics

    rows = list(range(documents.shape[0]))
    random.Random(seed).shuffle(rows)
    picked = documents[sorted(rows[:sample])]
    metrics = {m.key: m.value for m in population_metrics(picked, seed=seed, reference_draws=0)}
    return {"n": int(picked.shape[0]), "normalized": False, **{k: float(metrics[k]) for k in ISOTROPY_KEYS}}


def score(distance, encoded: EncodedDataset, dataset, *, k: int, k_values, isotropy_sample: int) -> dict:
    """Exact top-``k`` under ``distance``, beir's metrics, pytrec_eval per-query metrics and isotropy."""
    from ragcun.evaluation.beir_eval import beir_metrics, per_query_scores
    from ragcun.evaluation.search import search

    results = search(distance, encoded.queries, encoded.documents, k, query_ids=encoded.query_ids,
                     doc_ids=encoded.doc_ids)
    return {"metrics": beir_metrics(dataset.qrels, results, k_values),
            "per_query": per_query_scores(dataset.qrels, results, k_values),
            "results": results,
            "isotropy": isotropy_columns(encoded.documents.mean, isotropy_sample),
            "counts": {"queries": len(encoded.query_ids), "documents": len(encoded.doc_ids)}}
