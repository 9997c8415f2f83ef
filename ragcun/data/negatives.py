"""Hard negatives for BEIR training pairs: BM25 mining (``bm25s``), the judged-relevant exclusion and the cache.

Mining with the model itself lives with training (:mod:`ragcun.training.negatives`), where the model is known;
it hands its miner to :func:`load_or_mine`, so this module never imports a model.

For every training query the miner ranks the corpus and keeps the top ``depth`` documents that are **not
judged relevant to that query in any qrels split of the dataset** (a judged-relevant document used as a
negative teaches the model the opposite of the labels). Training then samples ``--negatives K`` of them per
example and epoch.

False negatives (relevant but unjudged documents ranked near the top) are what the filters are for, each a
setting of ``--mine-negatives METHOD[:KEY=VALUE,...]`` (:func:`parse_mining_spec`), e.g.
``bm25:skip=3,range=10-50,margin=0.05``. Ranks count the candidates left after the judged-relevant ones are
removed (1 = the best-scored unjudged document):

* ``skip=R``: drop ranks 1..R (the likeliest false negatives);
* ``range=A-B``: keep only ranks A..B (sample the negatives from there); without it the first ``depth``
  candidates that pass the other filters are kept;
* ``margin=M``: keep a candidate only if its score is at most ``s_pos - M``;
* ``relative_margin=F``: keep it only if its score is at most ``s_pos - F * |s_pos|``: sign-safe, so that with
  negative scores (every Euclidean similarity, ``-||q - d||``) it filters *more* as F grows, as it does with
  positive ones (``s_pos * (1 - F)``, sentence-transformers' rule before their issue #3819, let more through
  when ``s_pos < 0``).

``s_pos`` is the query's lowest-scored positive of the mined split (every document with a positive qrels score
there): a candidate must sit below each of them. Scores are the miner's own (BM25 scores; the model's
similarity). How many candidates each filter removed is recorded per query (:func:`filter_candidates`).

The result is a JSON file ``{query id: [doc id, ...]}`` under ``$RAGCUN_CACHE/negatives`` (default
``~/.cache/ragcun/negatives``), named by a hash of the dataset files (path, size, mtime), the split, the method,
the depth, the filters (their canonical text, :meth:`MiningSpec.format`) and, for ``model``, the model's specs,
so a changed dataset or setting is mined afresh; the filter counts lie in ``reports/NAME`` beside it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ragcun.data.beir import CORPUS_FILE, QRELS_FOLDER, QUERIES_FILE, available_splits, document_text, load_qrels
from ragcun.files import write_text_atomic

CACHE_ENV = "RAGCUN_CACHE"
DEFAULT_DEPTH = 30
METHODS = ("bm25", "model")
FILTERS = ("skip", "range", "margin", "relative_margin")


@dataclass(frozen=True)
class MiningSpec:
    """``--mine-negatives METHOD[:skip=R,range=A-B,margin=M,relative_margin=F]`` parsed (see the module)."""

    method: str
    skip: int = 0
    range: tuple[int, int] | None = None
    margin: float | None = None
    relative_margin: float | None = None

    @property
    def filters(self) -> dict:
        """The filters that are set, as ``{name: value}`` (``range`` as ``"A-B"``)."""
        out: dict = {}
        if self.skip:
            out["skip"] = self.skip
        if self.range is not None:
            out["range"] = f"{self.range[0]}-{self.range[1]}"
        if self.margin is not None:
            out["margin"] = self.margin
        if self.relative_margin is not None:
            out["relative_margin"] = self.relative_margin
        return out

    @property
    def uses_scores(self) -> bool:
        return self.margin is not None or self.relative_margin is not None

    def format(self) -> str:
        """The canonical text (filters in a fixed order): part of the cache key."""
        filters = ",".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in self.filters.items())
        return f"{self.method}:{filters}" if filters else self.method

    def retrieval_depth(self, depth: int) -> int:
        """How many unjudged candidates to rank so that ``depth`` can survive the rank filters (and, with score
        filters, twice that, since those remove an unknown share)."""
        wanted = self.range[1] if self.range is not None else self.skip + depth
        return wanted * 2 if self.uses_scores and self.range is None else wanted


def parse_mining_spec(text: str | MiningSpec | None, flag: str = "--mine-negatives") -> MiningSpec | None:
    """``bm25``, ``model``, or either with filters: ``bm25:skip=3,range=10-50,margin=0.05,relative_margin=0.1``.
    A bad key or value is a ValueError naming ``flag`` and what to type."""
    if text is None or isinstance(text, MiningSpec):
        return text
    original = str(text)
    method, _, rest = original.strip().partition(":")
    method = method.strip().lower()
    example = "e.g. bm25, model or bm25:skip=3,range=10-50,margin=0.05"
    if method not in METHODS:
        raise ValueError(f"{flag} {original!r}: the method must be bm25 or model ({example})")
    values: dict = {}
    for part in [p.strip() for p in rest.split(",")] if rest.strip() else []:
        key, sep, value = part.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{flag} {original!r}: expected KEY=VALUE after '{method}:', got {part!r} ({example})")
        if key not in FILTERS:
            close = difflib.get_close_matches(key, FILTERS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"{flag} {original!r}: unknown filter {key!r}{hint} (filters: {', '.join(FILTERS)})")
        if key in values:
            raise ValueError(f"{flag} {original!r}: {key} is given twice")
        values[key] = _filter_value(key, value, flag, original)
    rng = values.get("range")
    if rng is not None and values.get("skip", 0) >= rng[1]:
        raise ValueError(f"{flag} {original!r}: skip={values['skip']} removes every rank of range={rng[0]}-{rng[1]}")
    return MiningSpec(method, **values)


def _filter_value(key: str, value: str, flag: str, original: str):
    where = f"{flag} {original!r}: {key}"
    if key == "skip":
        if not value.isdigit():
            raise ValueError(f"{where} must be a whole number of ranks (0 or more), got {value!r}")
        return int(value)
    if key == "range":
        low, sep, high = value.partition("-")
        if not (sep and low.strip().isdigit() and high.strip().isdigit()) or not 1 <= int(low) <= int(high):
            raise ValueError(f"{where} must be A-B, ranks with 1 <= A <= B (e.g. range=10-50), got {value!r}")
        return int(low), int(high)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    if key == "relative_margin" and number >= 1:
        raise ValueError(f"{where} is a fraction of the positive's score, below 1 (e.g. 0.05), got {value!r}")
    return number


def filter_candidates(ranked: Iterable[tuple[str, float | None]], qid: str, relevant: dict[str, set[str]],
                      depth: int, spec: MiningSpec | None, positive_score: float | None = None
                      ) -> tuple[list[str], dict]:
    """The negatives of query ``qid`` from its ranked ``(doc id, score)`` candidates (best first), and how many
    each filter removed: ``{"candidates", "judged_relevant", "skip", "range", "margin", "relative_margin",
    "depth", "kept"}`` (only the filters that are set, plus the judged ones and the depth cut-off).

    Order: judged-relevant documents (and the query itself) go first; the rest are ranked 1, 2, ...; ``skip``
    and ``range`` act on those ranks, then ``margin`` and ``relative_margin`` on the scores against
    ``positive_score`` (no score filter applies to a query without one: it has no positive in the split); at
    most ``depth`` survive without ``range`` (with it, every survivor of the range does)."""
    spec = spec or MiningSpec("bm25")
    bad = relevant.get(qid, set())
    counts = {"candidates": 0, "judged_relevant": 0, **{k: 0 for k in spec.filters}}
    if spec.range is None:
        counts["depth"] = 0
    kept: list[str] = []
    rank = 0
    for did, score in ranked:
        counts["candidates"] += 1
        if did in bad or did == qid:  # a document with the query's own id is the query itself (BEIR)
            counts["judged_relevant"] += 1
            continue
        rank += 1
        if rank <= spec.skip:
            counts["skip"] += 1
            continue
        if spec.range is not None and not spec.range[0] <= rank <= spec.range[1]:
            counts["range"] += 1
            continue
        if positive_score is not None and score is not None:
            if spec.margin is not None and score > positive_score - spec.margin:
                counts["margin"] += 1
                continue
            if spec.relative_margin is not None and score > positive_score - spec.relative_margin * abs(positive_score):
                counts["relative_margin"] += 1
                continue
        if spec.range is None and len(kept) >= depth:
            counts["depth"] += 1
            continue
        kept.append(did)
    counts["kept"] = len(kept)
    return kept, counts


def split_positives(dataset) -> dict[str, list[str]]:
    """Each query's positives in the mined split (qrels score > 0): the reference of the margin filters."""
    return {qid: [d for d, score in docs.items() if score > 0 and d in dataset.corpus]
            for qid, docs in dataset.qrels.items()}


def summarize(report: dict[str, dict]) -> dict:
    """Totals and per-query means of :func:`filter_candidates` counts, and the queries left with no negative."""
    keys = sorted({k for counts in report.values() for k in counts if k != "positive_score"})
    total = {k: sum(c.get(k, 0) for c in report.values()) for k in keys}
    n = max(len(report), 1)
    return {"queries": len(report), "total": total, "mean_per_query": {k: v / n for k, v in total.items()},
            "queries_without_negatives": sorted(q for q, c in report.items() if c.get("kept", 0) == 0)}


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
    return cache_dir() / (f"{folder.name}-{split}-{method}-d{depth}-"
                          f"{_fingerprint(folder, split, method, depth, extra)}.json")


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


def mine_bm25(dataset, depth: int = DEFAULT_DEPTH, relevant: dict[str, set[str]] | None = None,
              spec: MiningSpec | None = None, report: dict | None = None) -> dict[str, list[str]]:
    """BM25's top non-relevant documents for each query of ``dataset`` (a loaded BeirDataset), filtered by
    ``spec`` (:func:`filter_candidates`); each query's filter counts go into ``report`` when given."""
    try:
        import bm25s
    except ImportError:
        raise ValueError("--mine-negatives bm25 needs the bm25s package: pip install bm25s") from None
    spec = spec or MiningSpec("bm25")
    relevant = judged_relevant(dataset.folder) if relevant is None else relevant
    doc_ids = list(dataset.corpus)
    texts = [document_text(dataset.corpus[d]) for d in doc_ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    query_ids = sorted(dataset.queries)
    extra = max((len(relevant.get(q, ())) for q in query_ids), default=0) + 1
    k = min(len(doc_ids), spec.retrieval_depth(depth) + extra)
    query_texts = [dataset.queries[q] for q in query_ids]
    tokens = bm25s.tokenize(query_texts, stopwords="en", show_progress=False)
    indices, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    positive_scores: dict[str, float] = {}
    if spec.uses_scores:  # each positive's own BM25 score (it may be ranked below the retrieved ones)
        positives = split_positives(dataset)
        where = {d: i for i, d in enumerate(doc_ids)}
        words = bm25s.tokenize(query_texts, stopwords="en", show_progress=False, return_ids=False)
        for qid, query_words in zip(query_ids, words):
            docs = [where[d] for d in positives.get(qid, ()) if d in where]
            if docs:
                known = retriever.get_tokens_ids(list(query_words))
                row = retriever.get_scores(known) if known else [0.0] * len(doc_ids)
                positive_scores[qid] = float(min(row[i] for i in docs))
    out = {}
    for qid, row, row_scores in zip(query_ids, indices, scores):
        out[qid], counts = filter_candidates(((doc_ids[i], float(sc)) for i, sc in zip(row, row_scores)), qid,
                                             relevant, depth, spec, positive_scores.get(qid))
        if report is not None:
            report[qid] = counts | ({"positive_score": positive_scores[qid]} if qid in positive_scores else {})
    return out


def load_or_mine(method: str | MiningSpec, dataset, *, miner=None, depth: int = DEFAULT_DEPTH, model_key: str = "",
                 write: bool = True) -> tuple[dict[str, list[str]], Path, bool]:
    """The cached negatives for ``dataset`` (mining them first if needed). Returns (negatives, path, was_cached).

    ``method``: ``bm25``, ``model`` or a :class:`MiningSpec` / ``--mine-negatives`` text with filters (part of
    the cache key). ``method="model"`` needs ``miner(dataset, depth, spec, report) -> {qid: [doc id, ...]}`` (the
    training package's, which knows the model) and a ``model_key`` naming the model in the cache file. The
    filter counts of the mining are :func:`load_report`'s."""
    negatives, _report, path, cached = load_or_mine_with_report(method, dataset, miner=miner, depth=depth,
                                                                model_key=model_key, write=write)
    return negatives, path, cached


def load_or_mine_with_report(method: str | MiningSpec, dataset, *, miner=None, depth: int = DEFAULT_DEPTH,
                             model_key: str = "", write: bool = True
                             ) -> tuple[dict[str, list[str]], dict | None, Path, bool]:
    """:func:`load_or_mine`, with each query's filter counts (None for a cache written before they existed)."""
    spec = parse_mining_spec(method)
    key = spec.format() if spec.filters else ""
    if spec.method == "model":
        key = f"{key}|{model_key}" if key else model_key
    path = cache_path(dataset.folder, dataset.split, spec.method, depth, key)
    if path.is_file():
        try:
            mined = json.loads(path.read_text())
            report = None
            sidecar = report_path(path)
            if sidecar.is_file():
                try:
                    report = json.loads(sidecar.read_text()).get("queries")
                except (json.JSONDecodeError, AttributeError):
                    report = None
            return mined, report, path, True
        except json.JSONDecodeError:
            pass  # a damaged cache is mined again
    report: dict = {}
    if spec.method == "bm25":
        mined = mine_bm25(dataset, depth, spec=spec, report=report)
    else:
        if miner is None:
            raise ValueError("mining negatives with the model needs the model's miner")
        import inspect

        takes = len(inspect.signature(miner).parameters)
        if takes >= 4:
            mined = miner(dataset, depth, spec, report)
        elif spec.filters:
            raise ValueError(f"--mine-negatives {spec.format()}: this miner takes no filters (it is called as "
                             "miner(dataset, depth); give it (dataset, depth, spec, report))")
        else:
            mined, report = miner(dataset, depth), None
    if write:  # the counts first: the negatives file is what makes the cache entry exist
        if report is not None:
            write_text_atomic(report_path(path), json.dumps({"spec": spec.format(), "depth": depth,
                                                             "queries": report}))
        write_text_atomic(path, json.dumps(mined))
    return mined, report, path, False


def report_path(cache: Path) -> Path:
    """Where the filter counts of a cached mining are kept: ``reports/NAME`` beside it (a folder of their own,
    so the cache folder holds negatives files only)."""
    return cache.parent / "reports" / cache.name
