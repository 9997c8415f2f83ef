"""Hard negatives for a training run: BM25 (ragcun.data.negatives) or mined with the run's own model.

Rank 0 mines BM25 negatives and writes the cache, the other ranks then read it; with ``--mine-negatives
model`` every rank encodes its share of the corpus (sharded encoding) and rank 0 writes the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from ragcun.data.negatives import DEFAULT_DEPTH, exclude_judged, judged_relevant, load_or_mine


def mine_with_model(model, dataset, depth: int = DEFAULT_DEPTH, relevant: dict[str, set[str]] | None = None,
                    batch_size: int = 64) -> dict[str, list[str]]:
    """The model's own top ``depth`` non-relevant documents (its distance, exact search); sharded encoding."""
    import torch

    from ragcun.encoding import encode
    from ragcun.model import corpus_texts

    relevant = judged_relevant(dataset.folder) if relevant is None else relevant
    doc_ids = list(dataset.corpus)
    query_ids = sorted(dataset.queries)
    docs = encode(model, [model.document_prefix + t for t in corpus_texts([dataset.corpus[d] for d in doc_ids])],
                  batch_size)
    queries = encode(model, [model.query_prefix + dataset.queries[q] for q in query_ids], batch_size)
    extra = max((len(relevant.get(q, ())) for q in query_ids), default=0) + 1
    k = min(len(doc_ids), depth + extra)
    out: dict[str, list[str]] = {}
    for start in range(0, len(query_ids), 256):
        sims = model.distance.similarity(queries[start:start + 256], docs)  # (q, N)
        top = torch.topk(sims, k, dim=1).indices.tolist()
        for qid, row in zip(query_ids[start:start + 256], top):
            out[qid] = exclude_judged((doc_ids[i] for i in row), qid, relevant, depth)
    return out


def mined_negatives_for(config, model, ctx) -> dict[str, list[str]]:
    """Negatives for the run's BEIR training data; rank 0 mines and caches, the other ranks read the cache."""
    import ragcun.distributed as D
    from ragcun.data.beir import find_dataset, load_beir
    from ragcun.data.training import parse_data_spec

    spec = parse_data_spec(config.train_data)
    if spec.kind != "beir":
        raise ValueError(f"--mine-negatives works on BEIR training data (beir:NAME:SPLIT); {config.train_data!r} "
                         "brings its own negatives (use --negatives K)")
    dataset = load_beir(find_dataset(spec.target, config.data_dir, download=False), spec.split,
                        name=Path(spec.target).name)
    depth = max(DEFAULT_DEPTH, 3 * config.negatives)
    key = json.dumps([config.encoder, config.head, config.distance, config.settings, config.seed], sort_keys=True)
    if config.mine_negatives == "model":  # every rank encodes its share; rank 0 writes the cache
        mined, _, _ = load_or_mine("model", dataset, miner=lambda data, d: mine_with_model(model, data, d),
                                   depth=depth, model_key=key, write=ctx.is_main)
        D.barrier(ctx)
        return mined
    if ctx.is_main:
        mined, _, _ = load_or_mine("bm25", dataset, depth=depth)
    D.barrier(ctx)
    if not ctx.is_main:
        mined, _, _ = load_or_mine("bm25", dataset, depth=depth)
    return mined
