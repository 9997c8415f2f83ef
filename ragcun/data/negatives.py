"""Hard negatives for BEIR training pairs: BM25 mining (``bm25s``), the judged-relevant exclusion and the cache.

Mining with the model itself lives with training (:mod:`ragcun.training.negatives`), where the model is known;
it hands its miner to :func:`load_or_mine`, so this module never imports a model.

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

from ragcun.data.beir import CORPUS_FILE, QRELS_FOLDER, QUERIES_FILE, available_splits, document_text, load_qrels
from ragcun.files import write_text_atomic

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


def exclude_judged(ranked: Iterable[str], qid: str, relevant: dict[str, set[str]], depth: int) -> list[str]:
    """The first ``depth`` documents of ``ranked`` that are neither judged relevant to ``qid`` nor ``qid`` itself."""
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
    texts = [document_text(dataset.corpus[d]) for d in doc_ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    query_ids = sorted(dataset.queries)
    extra = max((len(relevant.get(q, ())) for q in query_ids), default=0) + 1
    k = min(len(doc_ids), depth + extra)
    tokens = bm25s.tokenize([dataset.queries[q] for q in query_ids], stopwords="en", show_progress=False)
    indices, _scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return {qid: exclude_judged((doc_ids[i] for i in row), qid, relevant, depth)
            for qid, row in zip(query_ids, indices)}


def load_or_mine(method: str, dataset, *, miner=None, depth: int = DEFAULT_DEPTH, model_key: str = "",
                 write: bool = True) -> tuple[dict[str, list[str]], Path, bool]:
    """The cached negatives for ``dataset`` (mining them first if needed). Returns (negatives, path, was_cached).

    ``method="model"`` needs ``miner(dataset, depth) -> {qid: [doc id, ...]}`` (the training package's, which
    knows the model) and a ``model_key`` naming the model in the cache file."""
    path = cache_path(dataset.folder, dataset.split, method, depth, model_key if method == "model" else "")
    if path.is_file():
        try:
            return json.loads(path.read_text()), path, True
        except json.JSONDecodeError:
            pass  # a damaged cache is mined again
    if method == "bm25":
        mined = mine_bm25(dataset, depth)
    elif method == "model":
        if miner is None:
            raise ValueError("mining negatives with the model needs the model's miner")
        mined = miner(dataset, depth)
    else:
        raise ValueError(f"--mine-negatives must be bm25 or model, got {method!r}")
    if write:
        write_text_atomic(path, json.dumps(mined))
    return mined, path, False
