"""Score one model's embeddings of a BEIR dataset: retrieval metrics, per-query metrics, run, isotropy.

The ablation encodes each dataset once per model and reuses the embeddings for everything it reports, so the
isotropy columns describe exactly the vectors that were searched. Arms whose encoder is the base encoder
(training-free transforms, a frozen encoder) reuse the base encoder's cached outputs and only apply their
head: the head is a small affine map, so that costs nothing next to encoding the corpus again.

The encoding, search and scoring are :mod:`ragcun.evaluation.pipeline`'s, with the options every committed
ablation result was made with (:data:`ABLATION_OPTIONS`): queries and documents in id order, the whole corpus
encoded before the search (its vectors are cached and measured), one process, per-query metrics, and the plan's
``dtype`` read as a plan reads it (``bfloat16`` = ``bfloat16-autocast``, :data:`ragcun.evaluation.pipeline.
OLD_SPELLINGS`) and applied to the model as it is (autocast without the prepared copy ``eval beir`` uses).
"""

from __future__ import annotations

from ragcun.evaluation.pipeline import ISOTROPY_KEYS as ISOTROPY_KEYS  # re-exported, as the rest
from ragcun.evaluation.pipeline import EncodedDataset as EncodedDataset
from ragcun.evaluation.pipeline import apply_head as apply_head
from ragcun.evaluation.pipeline import isotropy_columns as isotropy_columns

# the pipeline's options for the ablation (ragcun.evaluation.pipeline's docstring says why each)
ABLATION_OPTIONS = {"order": "id", "corpus_chunk_size": None, "shard": False, "per_query": True}


def plan_precision(dtype: str) -> str:
    """The precision mode a plan's ``dtype`` names (:func:`ragcun.evaluation.pipeline.precision`, as a plan reads
    it)."""
    from ragcun.evaluation.pipeline import precision

    return precision(dtype, "plan", flag="dtype")


def encoding_model(model, dtype: str):
    """``(model to encode with, autocast dtype)`` for a plan's ``dtype``: autocast on ``model`` itself (no prepared
    copy, as every committed ablation run was encoded), or a bfloat16 copy for ``bfloat16-weights``."""
    from ragcun.evaluation.pipeline import autocast_dtype, inference_model

    mode = plan_precision(dtype)
    return inference_model(model, mode, prepared=False), autocast_dtype(mode, flag="dtype")


def encode_dataset(model, dataset, *, batch_size: int, dtype: str, query_prefix: str = "",
                   document_prefix: str = "", progress=None) -> EncodedDataset:
    """Embed a dataset's queries and corpus (float32 on the CPU, id order) with ``model`` in the plan's ``dtype``."""
    from ragcun.evaluation import pipeline

    encoder, autocast = encoding_model(model, dtype)
    return pipeline.encode_dataset(encoder, dataset, batch_size=batch_size, autocast_dtype=autocast,
                                   query_prefix=query_prefix, document_prefix=document_prefix,
                                   order=ABLATION_OPTIONS["order"], progress_start=progress)


def score(distance, encoded: EncodedDataset, dataset, *, k: int, k_values, isotropy_sample: int) -> dict:
    """Exact top-``k`` under ``distance``, beir's metrics, pytrec_eval per-query metrics and isotropy."""
    from ragcun.evaluation.pipeline import evaluate_dataset

    out = evaluate_dataset(None, dataset, encoded=encoded, distance=distance, k=k, k_values=k_values,
                           isotropy_sample=isotropy_sample, **ABLATION_OPTIONS)
    return {"metrics": out["metrics"], "per_query": out["per_query"], "results": out["results"],
            "isotropy": out["isotropy"],
            "counts": {"queries": len(encoded.query_ids), "documents": len(encoded.doc_ids)}}
