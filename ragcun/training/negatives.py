"""Hard negatives for a training run: BM25 (ragcun.data.negatives) or mined with the run's own model.

Rank 0 mines BM25 negatives and writes the cache, the other ranks then read it; with ``--mine-negatives
model`` every rank encodes its share of the corpus (sharded encoding) and rank 0 writes the cache. Either
takes the false-negative filters (``bm25:skip=3,range=10-50,margin=0.05``; ragcun.data.negatives), and rank 0
writes how many candidates each removed, per training query, to ``mined_negatives.json`` in the run folder
(beside ``metrics.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ragcun.data.negatives import (DEFAULT_DEPTH, MiningSpec, filter_candidates, judged_relevant,
                                   load_or_mine_with_report, parse_mining_spec, split_positives, summarize)

REPORT_FILE = "mined_negatives.json"


def mine_with_model(model, dataset, depth: int = DEFAULT_DEPTH, relevant: dict[str, set[str]] | None = None,
                    batch_size: int = 64, spec: MiningSpec | None = None, report: dict | None = None
                    ) -> dict[str, list[str]]:
    """The model's own top ``depth`` non-relevant documents (its distance, exact search), filtered by ``spec``
    with the model's similarity as the score; sharded encoding. Filter counts per query go into ``report``."""
    import torch

    from ragcun.embedding import Embedding

    from ragcun.encoding import encode
    from ragcun.model import corpus_texts

    spec = spec or MiningSpec("model")
    relevant = judged_relevant(dataset.folder) if relevant is None else relevant
    doc_ids = list(dataset.corpus)
    where = {d: i for i, d in enumerate(doc_ids)}
    positives = split_positives(dataset)
    query_ids = sorted(dataset.queries)
    docs = encode(model, [model.document_prefix + t for t in corpus_texts([dataset.corpus[d] for d in doc_ids])],
                  batch_size)
    queries = encode(model, [model.query_prefix + dataset.queries[q] for q in query_ids], batch_size)
    extra = max((len(relevant.get(q, ())) for q in query_ids), default=0) + 1
    k = min(len(doc_ids), spec.retrieval_depth(depth) + extra)
    out: dict[str, list[str]] = {}
    for start in range(0, len(query_ids), 256):
        block = query_ids[start:start + 256]
        sims = model.distance.similarity(Embedding(queries.mean[start:start + 256], None if queries.logvar is None
                                                   else queries.logvar[start:start + 256]), docs)  # (q, N)
        top = torch.topk(sims, k, dim=1)
        for row, qid in enumerate(block):
            own = [where[d] for d in positives.get(qid, ()) if d in where]
            positive = float(sims[row, own].min()) if own and spec.uses_scores else None
            out[qid], counts = filter_candidates(
                ((doc_ids[i], float(s)) for i, s in zip(top.indices[row].tolist(), top.values[row].tolist())),
                qid, relevant, depth, spec, positive)
            if report is not None:
                report[qid] = counts | ({"positive_score": positive} if positive is not None else {})
    return out


def mined_negatives_for(config, model, ctx) -> dict[str, list[str]]:
    """Negatives for the run's BEIR training data; rank 0 mines and caches, the other ranks read the cache; rank 0
    writes the filter report (:func:`write_report`) into the run folder."""
    import ragcun.distributed as D
    from ragcun.data.beir import find_dataset, load_beir
    from ragcun.data.training import parse_data_spec

    spec = parse_data_spec(config.train_data)
    if spec.kind != "beir":
        raise ValueError(f"--mine-negatives works on BEIR training data (beir:NAME:SPLIT); {config.train_data!r} "
                         "brings its own negatives (use --negatives K)")
    mining = parse_mining_spec(config.mine_negatives)
    dataset = load_beir(find_dataset(spec.target, config.data_dir, download=False), spec.split,
                        name=Path(spec.target).name)
    depth = max(DEFAULT_DEPTH, 3 * config.negatives)
    key = json.dumps([config.encoder, config.head, config.distance, config.settings, config.seed], sort_keys=True)
    if mining.method == "model":  # every rank encodes its share; rank 0 writes the cache
        mined, report, path, _ = load_or_mine_with_report(
            mining, dataset, miner=lambda data, d, s, r: mine_with_model(model, data, d, spec=s, report=r),
            depth=depth, model_key=key, write=ctx.is_main)
        D.barrier(ctx)
    else:
        if ctx.is_main:
            mined, report, path, _ = load_or_mine_with_report(mining, dataset, depth=depth)
        D.barrier(ctx)
        if not ctx.is_main:
            mined, report, path, _ = load_or_mine_with_report(mining, dataset, depth=depth)
    if ctx.is_main:
        write_report(config.output_dir, mining, depth, path, report, training_queries=set(dataset.qrels))
    return mined


def write_report(folder, spec: MiningSpec, depth: int, cache: Path, report: dict | None,
                 training_queries: set[str] | None = None) -> Path:
    """``mined_negatives.json`` in the run folder: the mining spec and filters, the cache file, and per training
    query how many retrieved candidates each filter removed (``judged_relevant``, ``skip``, ``range``,
    ``margin``, ``relative_margin``, ``depth``) and how many were ``kept``, with totals and per-query means."""
    from ragcun.files import write_text_atomic

    queries = {q: c for q, c in (report or {}).items() if training_queries is None or q in training_queries}
    data = {"spec": spec.format(), "method": spec.method, "filters": spec.filters, "depth": depth,
            "cache": str(cache),
            "note": ("ranks count the candidates left after the judged-relevant ones; positive_score is the lowest "
                     "score among the query's positives of the split (the margin filters' reference)"),
            "summary": summarize(queries) if report is not None else None,
            "queries": queries if report is not None else None}
    if report is None:
        data["note"] = "the negatives came from a cache written before filter counts were recorded"
    path = Path(folder) / REPORT_FILE
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
