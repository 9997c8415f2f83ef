"""Hard negatives for BEIR training pairs: mined with BM25 (``bm25s``) or with the current model, cached on disk.

For every training query the miner ranks the corpus and keeps the top ``depth`` documents that are **not
judged relevant to that query in any qrels split of the dataset** (a judged-relevant document used as a
negative teaches the model the opposite of the labels). Training then samples ``--negatives K`` of them per
example and epoch.

The result is a JSON file ``{query id: [doc id, ...]}`` under ``$RAGCUN_CACHE/negatives`` (default
``~/.cache/ragcun/negatives``), named by a hash of the dataset files (path, size, mtime), the split, the method,
the depth and, for ``model``, the model's specs, so a changed dataset or setting is mined afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ragcun.data.beir import CORPUS_FILE, QRELS_FOLDER, QUERIES_FILE, available_splits, load_qrels

CACHE_ENV = "RAGCUN_CACHE"
DEFAULT_DEPTH = 30


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / "negatives"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ragcun" / "negatives"


def judged_relevant(folder: str | Path) -> dict[str, set[str]]:
    """Every (query, document) pair with a positive score in any qrels split of the dataset."""
    relevant: dict[str, set[str]] = {}
    for split in available_splits(folder):
        for qid, docs in load_qrels(Path(folder) / QRELS_FOLDER / f"{split}.tsv").items():
            relevant.setdefault(qid, set()).update(d for d, s in docs.items() if s > 0)
    return relevant


def _fingerprint(folder: Path, split: str, method: str, depth: int, extra: str = "") -> str:
    digest = hashlib.sha256()
    files = [folder / CORPUS_FILE, folder / QUERIES_FILE, *sorted((folder / QRELS_FOLDER).glob("*.tsv"))]
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    digest.update(f"{split}:{method}:{depth}:{extra}".encode())
    return digest.hexdigest()[:16]


def cache_path(folder: str | Path, split: str, method: str, depth: int, extra: str = "") -> Path:
    folder = Path(folder)
    return cache_dir() / f"{folder.name}-{split}-{method}-d{depth}-{_fingerprint(folder, split, method, depth, extra)}.json"


def _exclude(ranked: Iterable[str], qid: str, relevant: dict[str, set[str]], depth: int) -> list[str]:
    bad = relevant.get(qid, set())
    out = []
    for did in ranked:
        if did not in bad and did != qid:  # a document with the query's own id is the query itself (BEIR)
            out.append(did)
            if len(out) == depth:
                break
    return out


def mine_bm25(dataset, depth: int = DEFAULT_DEPTH, relevant: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """BM25 top ``depth`` non-relevant documents for each query of ``dataset`` (a loaded BeirDataset)."""
    try:
        import bm25s
    except ImportError:
        raise ValueError("--mine-negatives bm25 needs the bm25s package: pip install bm25s") from None
    relevant = judged_relevant(dataset.folder) if relevant is None else relevant
    doc_ids = list(dataset.corpus)
    texts = [((dataset.corpus[d].get("title") or "") + " " + (dataset.corpus[d].get("text") or "")).strip()
             for d in doc_ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    query_ids = sorted(dataset.queries)
    extra = max((len(relevant.get(q, ())) for q in query_ids), default=0) + 1
    k = min(len(doc_ids), depth + extra)
    tokens = bm25s.tokenize([dataset.queries[q] for q in query_ids], stopwords="en", show_progress=False)
    indices, _scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return {qid: _exclude((doc_ids[i] for i in row), qid, relevant, depth) for qid, row in zip(query_ids, indices)}


def mine_with_model(model, dataset, depth: int = DEFAULT_DEPTH, relevant: dict[str, set[str]] | None = None,
                    batch_size: int = 64) -> dict[str, list[str]]:
    """The model's own top ``depth`` non-relevant documents (its distance, exact search); sharded encoding."""
    import torch

    from ragcun.evaluation.encoding import encode
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
            out[qid] = _exclude((doc_ids[i] for i in row), qid, relevant, depth)
    return out


def load_or_mine(method: str, dataset, *, model=None, depth: int = DEFAULT_DEPTH, model_key: str = "",
                 write: bool = True) -> tuple[dict[str, list[str]], Path, bool]:
    """The cached negatives for ``dataset`` (mining them first if needed). Returns (negatives, path, was_cached)."""
    path = cache_path(dataset.folder, dataset.split, method, depth, model_key if method == "model" else "")
    if path.is_file():
        try:
            return json.loads(path.read_text()), path, True
        except json.JSONDecodeError:
            pass  # a damaged cache is mined again
    if method == "bm25":
        mined = mine_bm25(dataset, depth)
    elif method == "model":
        if model is None:
            raise ValueError("mining negatives with the model needs a model")
        mined = mine_with_model(model, dataset, depth)
    else:
        raise ValueError(f"--mine-negatives must be bm25 or model, got {method!r}")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mined))
        tmp.replace(path)
    return mined, path, False


def mined_negatives_for(config, model, ctx) -> dict[str, list[str]]:
    """Negatives for the run's BEIR training data; rank 0 mines and caches, the other ranks read the cache."""
    from ragcun.data.beir import find_dataset, load_beir
    from ragcun.data.training import parse_data_spec
    from ragcun.training import distributed as D

    spec = parse_data_spec(config.train_data)
    if spec.kind != "beir":
        raise ValueError(f"--mine-negatives works on BEIR training data (beir:NAME:SPLIT); {config.train_data!r} "
                         "brings its own negatives (use --negatives K)")
    dataset = load_beir(find_dataset(spec.target, config.data_dir, download=False), spec.split,
                        name=Path(spec.target).name)
    depth = max(DEFAULT_DEPTH, 3 * config.negatives)
    key = json.dumps([config.encoder, config.head, config.distance, config.settings, config.seed], sort_keys=True)
    if config.mine_negatives == "model":  # every rank encodes its share; rank 0 writes the cache
        mined, _, _ = load_or_mine("model", dataset, model=model, depth=depth, model_key=key, write=ctx.is_main)
        D.barrier(ctx)
        return mined
    if ctx.is_main:
        mined, _, _ = load_or_mine("bm25", dataset, depth=depth)
    D.barrier(ctx)
    if not ctx.is_main:
        mined, _, _ = load_or_mine("bm25", dataset, depth=depth)
    return mined
