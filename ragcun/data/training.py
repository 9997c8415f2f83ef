"""Training examples ``(query, positive, negatives, ids)`` from real data, in a deterministic, resumable order.

Sources (``--train-data SPEC``)::

    beir:NAME[:SPLIT]      (query, relevant document) pairs from qrels/SPLIT.tsv (default split: train);
                           a pair counts when its graded score >= qrels_threshold; NAME is a folder or a name
                           under --data-dir
    jsonl:PATH | *.jsonl   MS MARCO-style lines {"query": str, "pos": [str, ...], "neg": [str, ...]}, streamed;
                           optional teacher scores "pos_scores"/"neg_scores" (one per passage) and ids
                           "query_id", "pos_ids"/"neg_ids", "relevant_ids" (the layout `ragcun data score` writes)
    triples:PATH | *.tsv   the official MS MARCO ``query<TAB>positive<TAB>negative`` triples, streamed
                           (``.gz`` files are read compressed)

Order: every epoch has one global order, fixed by ``(seed, epoch)``. In-memory sources (BEIR) permute
their pairs; streamed sources pass the file through a seeded shuffle buffer, so a multi-GB file is never in
memory. A *global batch* is ``world_size * batch_size`` consecutive examples of that order and rank ``r``
takes the ``r``-th slice, so the concatenation of the ranks' batches is exactly the batch one process with
``world_size * batch_size`` would see: 2 ranks x B and 1 process x 2B train on the same data. The position
``(epoch, examples consumed)`` is all a checkpoint needs to continue the same order.

Relevance: every example carries ``relevant_ids``, the ids of the documents judged relevant to its query (BEIR:
the training split's qrels with score >= qrels_threshold; JSONL: the line's ``pos`` passages, whose text is their
id; triples: the positive). :class:`BatchStream` turns them into each example's list of the *global batch's*
candidates (positives and hard negatives of every rank) relevant to its query, examples with the same query
(the same query text: the same id, or two ids with one text) pooling theirs, so the contrastive loss masks a query's
other relevant documents out of its in-batch negatives (``LossInputs.relevant_ids``).

Teacher scores: a JSONL line may carry a teacher's score for each passage (``pos_scores``, ``neg_scores``:
numbers, one per ``pos`` / ``neg`` entry, larger = more relevant; the MS MARCO sample and ``ragcun data
score`` output have them). Each example then carries the scores of the positive and the negatives it drew, and
a batch's ``teacher_scores[i]`` is ``[positive, negative_1..K]`` of example ``i`` (``LossInputs.teacher_scores``,
what ``margin-mse`` and ``distill-kl`` learn from). A batch mixing lines with and without scores is an error.

``no_duplicate_queries``: :func:`distinct_query_order` reorders each epoch's order so that a global batch holds
each query at most once, deferring a repeat to a later batch (deterministic, so resuming stays exact).
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingExample:
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    query_id: str | None = None
    positive_id: str | None = None
    negative_ids: list[str] | None = None
    relevant_ids: list[str] | None = None  # every document judged relevant to this query (None: unknown)
    positive_score: float | None = None  # a teacher's score of the positive (JSONL pos_scores)
    negative_scores: list[float] | None = None  # ... of each negative, in the order of ``negatives``


@dataclass
class TrainingBatch:
    """One rank's micro-batch; ``negatives`` are grouped by query (``K`` per query) as LossInputs expects.

    ``relevant_ids[i]``: the ids of the global batch's candidates judged relevant to query ``i`` (its own
    positive included), for label-aware in-batch negatives; None when the data carries no document ids.
    """

    queries: list[str]
    positives: list[str]
    negatives: list[str]
    positive_ids: list[str] | None
    negative_ids: list[str] | None
    relevant_ids: list[list[str]] | None = None
    teacher_scores: list[list[float]] | None = None  # (B, 1 + K): [positive, negatives] per query, when the data
                                                     # has them

    def __len__(self) -> int:
        return len(self.queries)


@dataclass
class DataPosition:
    epoch: int = 0
    position: int = 0  # examples of this epoch's global order already consumed (by all ranks together)

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def _rng(*parts: int) -> random.Random:
    # One independent, reproducible stream per (seed, epoch, ...): never the global RNG.
    # (a str seed is hashed with SHA-512 by ``random``: stable across processes and PYTHONHASHSEED)
    return random.Random("-".join(map(str, parts)))


def choose_negatives(negatives: Sequence, k: int, rng: random.Random) -> list:
    """``k`` of ``negatives`` (without replacement when there are enough, else cycling), order fixed by ``rng``."""
    if k == 0:
        return []
    if not negatives:
        return []
    if len(negatives) >= k:
        return rng.sample(list(negatives), k)
    pool = list(negatives)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(k)]


# -- sources ----------------------------------------------------------------------------------------------
class TrainingSource:
    """A deterministic sequence of examples per epoch. Subclasses implement :meth:`examples`."""

    description: str = ""
    negatives_per_example: int = 0  # what every example carries (0 = none)

    def __len__(self) -> int:  # number of examples per epoch
        raise NotImplementedError

    def examples(self, epoch: int, start: int = 0) -> Iterator[TrainingExample]:
        raise NotImplementedError


class BeirPairs(TrainingSource):
    """(query, relevant document) pairs from a BEIR qrels split, with optional mined hard negatives."""

    def __init__(self, folder: str | Path, split: str = "train", *, threshold: int = 1, seed: int = 0,
                 negatives: int = 0, mined: dict[str, list[str]] | None = None, name: str | None = None) -> None:
        from ragcun.data.beir import load_beir

        self.dataset = load_beir(folder, split, name=name)
        self.split, self.seed, self.threshold = split, int(seed), int(threshold)
        self.negatives_per_example = int(negatives)
        self.mined = mined or {}
        corpus = self.dataset.corpus
        self.pairs = [(qid, did) for qid in sorted(self.dataset.qrels)
                      for did, score in sorted(self.dataset.qrels[qid].items())
                      if score >= self.threshold and did in corpus]
        self.relevant: dict[str, list[str]] = {}  # qid -> its judged-relevant documents (this split's qrels)
        for qid, did in self.pairs:
            self.relevant.setdefault(qid, []).append(did)
        if not self.pairs:
            scores = sorted({s for docs in self.dataset.qrels.values() for s in docs.values()})
            raise ValueError(f"{self.dataset.qrels_file}: no (query, document) pair has a score >= {threshold} "
                             f"(scores present: {scores}); lower --qrels-threshold")
        if self.negatives_per_example and not self.mined:
            raise ValueError(f"--negatives {negatives} with beir:{self.dataset.name} needs mined hard negatives: "
                             "add --mine-negatives bm25 (or model)")
        self.description = (f"beir:{self.dataset.name}:{split} ({len(self.pairs)} pairs, "
                            f"{len(self.dataset.qrels)} queries, score >= {threshold})")

    def __len__(self) -> int:
        return len(self.pairs)

    def doc_text(self, did: str) -> str:
        from ragcun.data.beir import document_text

        return document_text(self.dataset.corpus[did])

    def examples(self, epoch: int, start: int = 0) -> Iterator[TrainingExample]:
        order = list(range(len(self.pairs)))
        _rng(self.seed, epoch, 0).shuffle(order)
        for index in range(start, len(order)):
            qid, did = self.pairs[order[index]]
            neg_ids = choose_negatives(self.mined.get(qid, []), self.negatives_per_example,
                                       _rng(self.seed, epoch, 1, index))
            if self.negatives_per_example and len(neg_ids) < self.negatives_per_example:
                raise ValueError(f"query {qid!r} has no mined negatives; re-mine with more candidates")
            yield TrainingExample(self.dataset.queries[qid], self.doc_text(did),
                                  [self.doc_text(n) for n in neg_ids], qid, did, neg_ids, self.relevant[qid])


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


class _StreamedSource(TrainingSource):
    """A line-per-example file read front to back through a seeded shuffle buffer (never held in memory)."""

    kind = ""

    def __init__(self, path: str | Path, *, seed: int = 0, negatives: int = 0, buffer: int = 10_000) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(f"--train-data: {self.path} does not exist")
        self.seed, self.buffer = int(seed), int(buffer)
        self.negatives_per_example = int(negatives)
        self._length: int | None = None
        self.description = f"{self.kind}:{self.path}"

    def __len__(self) -> int:
        if self._length is None:  # one pass over the file, counting non-blank lines
            with _open_binary(self.path) as fh:
                self._length = sum(1 for line in fh if line.strip())
        return self._length

    def _lines(self) -> Iterator[tuple[int, str]]:
        from ragcun.data.beir import decode_line

        with _open_binary(self.path) as fh:
            for number, raw in enumerate(fh, start=1):
                if raw.strip():
                    yield number, decode_line(raw, self.path, number)

    def _shuffled(self, epoch: int) -> Iterator[tuple[int, str]]:
        rng = _rng(self.seed, epoch, 0)
        pool: list[tuple[int, str]] = []
        for item in self._lines():
            if len(pool) < self.buffer:
                pool.append(item)
                continue
            j = rng.randrange(len(pool))
            yield pool[j]
            pool[j] = item
        rng.shuffle(pool)
        yield from pool

    def examples(self, epoch: int, start: int = 0) -> Iterator[TrainingExample]:
        # Resuming re-reads (without parsing) the lines before ``start``: the buffer's state depends on them.
        for index, (number, line) in enumerate(self._shuffled(epoch)):
            if index < start:
                continue
            yield self.parse(line, number, _rng(self.seed, epoch, 1, index))

    def parse(self, line: str, number: int, rng: random.Random) -> TrainingExample:  # pragma: no cover
        raise NotImplementedError


class JsonlExamples(_StreamedSource):
    """MS MARCO-style JSONL: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` per line."""

    kind = "jsonl"

    def parse(self, line: str, number: int, rng: random.Random) -> TrainingExample:
        where = f"{self.path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: malformed JSON ({exc.msg}; column {exc.colno})") from None
        return example_from_record(record, where, self.negatives_per_example, rng)


def example_from_record(record: Any, where: str, k: int, rng: random.Random) -> TrainingExample:
    """One training example from a JSONL-style record (``query``, ``pos``, ``neg``, optional ids and teacher
    scores; docs/data.md), checked, errors naming ``where``; ``k`` negatives chosen with ``rng``. The one reader
    of that format: JSONL files and in-memory examples (ragcun.data.in_memory) both go through it."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'query', 'pos' and 'neg'")
    query, pos, neg = record.get("query"), record.get("pos"), record.get("neg", [])
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{where}: 'query' must be a non-empty string")
    if isinstance(pos, str):
        pos = [pos]
    if not isinstance(pos, list) or not pos or not all(isinstance(p, str) for p in pos):
        raise ValueError(f"{where}: 'pos' must be a non-empty list of strings")
    if not isinstance(neg, list) or not all(isinstance(n, str) for n in neg):
        raise ValueError(f"{where}: 'neg' must be a list of strings")
    pos_scores = _scores(record, "pos_scores", len(pos), where)
    neg_scores = _scores(record, "neg_scores", len(neg), where)
    pos_ids = _ids(record, "pos_ids", len(pos), where)
    neg_ids = _ids(record, "neg_ids", len(neg), where)
    query_id = record.get("query_id")
    if query_id is not None and not isinstance(query_id, str):
        raise ValueError(f"{where}: 'query_id' must be a string")
    if k and not neg:
        raise ValueError(f"{where}: --negatives {k} but this line has no 'neg' passages")
    pick = 0 if len(pos) == 1 else rng.randrange(len(pos))
    # Without ids a passage's text identifies it (duplicate detection, label-aware negatives).
    chosen = choose_negatives(range(len(neg)), k, rng)
    negatives = [neg[j] for j in chosen]
    negative_ids = [neg_ids[j] for j in chosen] if neg_ids is not None else list(negatives)
    positive_id = pos_ids[pick] if pos_ids is not None else pos[pick]
    relevant = _ids(record, "relevant_ids", None, where)
    relevant = list(pos_ids if pos_ids is not None else pos) + [r for r in (relevant or []) if r not in
                                                                  (pos_ids or pos)]
    return TrainingExample(query, pos[pick], negatives, query_id, positive_id, negative_ids, relevant,
                           None if pos_scores is None else pos_scores[pick],
                           None if neg_scores is None or pos_scores is None else [neg_scores[j] for j in chosen])


def _scores(record: dict, key: str, n: int, where: str) -> list[float] | None:
    """A JSONL line's teacher scores ``key`` (one finite number per passage), or None when absent."""
    import math

    values = record.get(key)
    if values is None:
        return None
    if (not isinstance(values, list) or len(values) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        passages = "pos" if key.startswith("pos") else "neg"
        raise ValueError(f"{where}: '{key}' must be a list of {n} finite numbers, one per '{passages}' passage "
                         "(a teacher's scores; see docs/data.md)")
    return [float(v) for v in values]


def _ids(record: dict, key: str, n: int | None, where: str) -> list[str] | None:
    """A JSONL line's passage ids ``key`` (one string per passage when ``n`` is given), or None when absent."""
    values = record.get(key)
    if values is None:
        return None
    if (not isinstance(values, list) or (n is not None and len(values) != n)
            or not all(isinstance(v, str) and v for v in values)):
        count = f"{n} " if n is not None else ""
        raise ValueError(f"{where}: '{key}' must be a list of {count}non-empty strings (document ids)")
    return values


class TriplesExamples(_StreamedSource):
    """The official MS MARCO ``triples.train.small.tsv``: ``query<TAB>positive<TAB>negative``."""

    kind = "triples"

    def __init__(self, path: str | Path, *, seed: int = 0, negatives: int = 0, buffer: int = 10_000) -> None:
        if negatives > 1:
            raise ValueError(f"--negatives {negatives}: MS MARCO triples carry one negative per line; use 0 or 1")
        super().__init__(path, seed=seed, negatives=negatives, buffer=buffer)

    def parse(self, line: str, number: int, rng: random.Random) -> TrainingExample:
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"{self.path}:{number}: expected query<TAB>positive<TAB>negative "
                             f"(3 non-empty columns), got {len(parts)} columns")
        query, positive, negative = parts
        negs = [negative] if self.negatives_per_example else []
        return TrainingExample(query, positive, negs, None, positive, list(negs), [positive])


# -- the spec -----------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    kind: str  # beir | jsonl | triples
    target: str  # dataset name/folder, or file path
    split: str = "train"

    def format(self) -> str:
        return f"beir:{self.target}:{self.split}" if self.kind == "beir" else f"{self.kind}:{self.target}"


def parse_data_spec(spec: str, flag: str = "--train-data") -> DataSpec:
    """``beir:NAME[:SPLIT]``, ``jsonl:PATH``, ``triples:PATH`` (alias ``tsv:``), or a path with a known suffix."""
    if not spec or not spec.strip():
        raise ValueError(f"{flag} is empty; e.g. beir:scifact:train, jsonl:train.jsonl or triples:triples.tsv")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if sep and kind == "memory":
        raise ValueError(f"{flag} {spec}: this run trained on in-memory examples given from Python (ragcun.train("
                         "config, data=examples)), which no file holds; resume it from Python with the same examples: "
                         "ragcun.train(config, resume=True, data=examples)")
    if sep and kind == "beir":
        name, _, split = rest.partition(":")
        if not name:
            raise ValueError(f"{flag} {spec!r}: expected beir:NAME[:SPLIT], e.g. beir:scifact:train")
        return DataSpec("beir", name, split or "train")
    if sep and kind in ("jsonl", "triples", "tsv"):
        if not rest:
            raise ValueError(f"{flag} {spec!r}: give a file after '{kind}:'")
        return DataSpec("triples" if kind == "tsv" else kind, rest)
    path = Path(spec).expanduser()
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return DataSpec("jsonl", spec)
    if name.endswith(".tsv"):
        return DataSpec("triples", spec)
    if path.is_dir():
        return DataSpec("beir", spec, "train")
    raise ValueError(f"{flag} {spec!r}: not a data spec; use beir:NAME[:SPLIT] (BEIR qrels pairs), "
                     "jsonl:PATH (MS MARCO-style JSONL) or triples:PATH (MS MARCO triples TSV)")


def resolve_eval_split(spec: str, data_dir: str | None = None, flag: str = "--eval-data") -> tuple[Path, str]:
    """The BEIR split an evaluation spec names: ``beir:NAME[:SPLIT]`` -> (dataset folder, split); ``beir:NAME``
    alone means its test split (for training data the default is train)."""
    from ragcun.data.beir import find_dataset

    parsed = parse_data_spec(spec, flag=flag)
    if parsed.kind != "beir":
        raise ValueError(f"{flag} {spec!r}: evaluation needs a BEIR split, e.g. beir:scifact:test")
    split = parsed.split if spec.count(":") >= 2 else "test"
    return find_dataset(parsed.target, data_dir, download=False), split


def open_source(spec: str, *, data_dir: str | None = None, seed: int = 0, negatives: int = 0,
                qrels_threshold: int = 1, shuffle_buffer: int = 10_000,
                mined: dict[str, list[str]] | None = None) -> TrainingSource:
    parsed = parse_data_spec(spec)
    if parsed.kind == "beir":
        from ragcun.data.beir import find_dataset

        folder = find_dataset(parsed.target, data_dir, download=False)
        return BeirPairs(folder, parsed.split, threshold=qrels_threshold, seed=seed, negatives=negatives,
                         mined=mined, name=Path(parsed.target).name)
    if parsed.kind == "jsonl":
        return JsonlExamples(parsed.target, seed=seed, negatives=negatives, buffer=shuffle_buffer)
    return TriplesExamples(parsed.target, seed=seed, negatives=negatives, buffer=shuffle_buffer)


# -- batching -----------------------------------------------------------------------------------------------
class BatchStream:
    """Per-rank micro-batches of a source, endless over epochs, with a position a checkpoint can restore.

    Each call to :meth:`next_batch` consumes one global batch (``world_size * batch_size`` examples) and
    returns this rank's slice, with each example's relevant candidates of the whole global batch
    (:func:`batch_relevance`). An epoch's incomplete last global batch is dropped so every step has the
    same size on every rank.

    ``no_duplicate_queries=True`` reads each epoch through :func:`distinct_query_order` (global batches with
    each query at most once). That order is a function of the source's seeded order and the global batch size
    alone, so a resumed run (same global batch) regenerates it and skips the examples consumed: bit-identical.
    """

    def __init__(self, source: TrainingSource, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 position: DataPosition | None = None, no_duplicate_queries: bool = False) -> None:
        self.source, self.batch_size, self.rank, self.world_size = source, int(batch_size), rank, world_size
        self.global_batch = self.batch_size * self.world_size
        self.no_duplicate_queries = bool(no_duplicate_queries)
        self.state = DataPosition(**(position.as_dict() if position else {}))
        self._iter: Iterator[TrainingExample] | None = None

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def _take(self) -> list[TrainingExample]:
        if self._iter is None:
            if self.no_duplicate_queries:  # regenerate the epoch's reordering, then skip what was consumed
                order = distinct_query_order(self.source.examples(self.state.epoch), self.global_batch)
                self._iter = itertools.islice(order, self.state.position, None)
            else:
                self._iter = self.source.examples(self.state.epoch, self.state.position)
        out: list[TrainingExample] = []
        for example in self._iter:
            out.append(example)
            if len(out) == self.global_batch:
                return out
        return out

    def next_batch(self) -> TrainingBatch:
        examples = self._take()
        if len(examples) < self.global_batch:  # end of epoch: drop the remainder, start the next
            if self.state.position == 0 and not examples and self.state.epoch > 0:
                raise ValueError("the training data is empty")
            self.state = DataPosition(self.state.epoch + 1, 0)
            self._iter = None
            examples = self._take()
            if len(examples) < self.global_batch:
                raise ValueError(f"the training data has {len(self.source)} examples, fewer than one global batch "
                                 f"({self.world_size} rank(s) x --batch-size {self.batch_size}); lower --batch-size")
        self.state.position += self.global_batch
        k = self.source.negatives_per_example
        relevant = batch_relevance(examples, k)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return collate(examples[mine], k, None if relevant is None else relevant[mine])


def query_key(example: TrainingExample) -> str:
    """What identifies an example's query: its text. One query id always has one text, and two ids with the
    same text (NFCorpus has 14 such pairs in train) are one query to the model; data without query ids (JSONL,
    triples) has nothing else."""
    return example.query


def batch_relevance(examples: list[TrainingExample], k: int) -> list[list[str]] | None:
    """For each example of a (global) batch, the sorted ids of the batch's candidates (every positive and the
    first ``k`` hard negatives of every example) judged relevant to its query: the ``relevant_ids`` and
    positives of all examples with the same :func:`query_key`. Exact for the loss, which only ever asks about
    these candidates, and short (at most the batch's candidates). None when an example has no positive id
    (the loss then has no candidate ids to compare)."""
    if not examples or any(e.positive_id is None for e in examples):
        return None
    candidates = {e.positive_id for e in examples}
    if k:
        candidates.update(n for e in examples for n in (e.negative_ids or [])[:k])
    by_query: dict[str, set[str]] = {}
    for e in examples:
        judged = by_query.setdefault(query_key(e), set())
        judged.add(e.positive_id)
        judged.update(d for d in (e.relevant_ids or ()) if d in candidates)
    return [sorted(by_query[query_key(e)]) for e in examples]


TAIL_BATCHES = 8  # distinct_query_order: batches held back to repair the end of an epoch


def distinct_query_order(examples: Iterable[TrainingExample], batch_size: int,
                         tail_batches: int = TAIL_BATCHES) -> Iterator[TrainingExample]:
    """``examples`` reordered so that each run of ``batch_size`` holds each :func:`query_key` at most once.

    Greedy and deterministic (no randomness of its own: the order is a function of ``examples`` and
    ``batch_size``): a batch is filled first from the deferred examples (oldest first), then from ``examples``
    in order; an example whose query is already in the batch is deferred to a later batch. Every example comes
    out exactly once.

    The end: the last batches could only take what is left, often a few queries' repeats. So the greedy pass
    holds its last ``tail_batches`` batches back, and if the tail it would emit (those batches, then the
    partial batch and the deferred examples) repeats a query within a full batch, it re-deals that tail: the
    examples grouped by query (most examples first, then first appearance), laid end to end and dealt round
    robin into the tail's full batches, the surplus last (the incomplete batch, dropped by the stream as
    without reordering). A query then repeats in a batch only when it has more examples in the tail than the
    tail has batches. Memory: ``tail_batches`` batches plus the deferred examples, which stay few unless one
    query dominates a stretch of the data.
    """
    source = iter(examples)
    deferred: list[TrainingExample] = []
    held: list[list[TrainingExample]] = []
    while True:
        batch: list[TrainingExample] = []
        seen: set[str] = set()
        kept: list[TrainingExample] = []
        for example in deferred:
            key = query_key(example)
            if len(batch) < batch_size and key not in seen:
                batch.append(example)
                seen.add(key)
            else:
                kept.append(example)
        deferred = kept
        while len(batch) < batch_size:
            example = next(source, None)
            if example is None:
                break
            key = query_key(example)
            if key in seen:
                deferred.append(example)
            else:
                batch.append(example)
                seen.add(key)
        if len(batch) < batch_size:  # the end: too few distinct queries left for another batch
            yield from _deal_tail([e for b in held for e in b] + batch + deferred, batch_size)
            return
        held.append(batch)
        if len(held) > tail_batches:
            yield from held.pop(0)


def _deal_tail(tail: list[TrainingExample], batch_size: int) -> list[TrainingExample]:
    """``tail`` as it is when none of its full batches repeats a query, else re-dealt (distinct_query_order)."""
    full = len(tail) // batch_size
    if all(len({query_key(e) for e in tail[b * batch_size:(b + 1) * batch_size]}) == batch_size
           for b in range(full)):
        return tail
    groups: dict[str, list[TrainingExample]] = {}
    for example in tail:
        groups.setdefault(query_key(example), []).append(example)
    laid = [e for g in sorted(groups.values(), key=len, reverse=True) for e in g]  # stable: first appearance
    dealt: list[list[TrainingExample]] = [[] for _ in range(full)]
    for t, example in enumerate(laid[:full * batch_size]):
        dealt[t % full].append(example)  # a group of <= full examples lands in distinct batches
    return [e for b in dealt for e in b] + laid[full * batch_size:]


def collate(examples: list[TrainingExample], k: int, relevant: list[list[str]] | None = None) -> TrainingBatch:
    """One micro-batch; ``relevant``: each example's relevant candidate ids (:func:`batch_relevance`)."""
    negatives = [n for e in examples for n in e.negatives[:k]] if k else []
    has_ids = all(e.positive_id is not None for e in examples)
    neg_ids = [n for e in examples for n in (e.negative_ids or [])[:k]] if k and has_ids else None
    return TrainingBatch([e.query for e in examples], [e.positive for e in examples], negatives,
                         [e.positive_id for e in examples] if has_ids else None, neg_ids,
                         relevant if has_ids else None, teacher_scores(examples, k))


def teacher_scores(examples: list[TrainingExample], k: int) -> list[list[float]] | None:
    """``[positive score, negative scores...]`` per example (``(B, 1 + K)``), None when no example has scores; a
    batch in which only some examples have them is an error (the file mixes lines with and without scores)."""
    scored = [e.positive_score is not None and e.negative_scores is not None for e in examples]
    if not any(scored):
        return None
    if not all(scored):
        raise ValueError("the training data mixes lines with teacher scores ('pos_scores'/'neg_scores') and lines "
                         "without: give every line its scores (ragcun data score writes them all), or none")
    return [[e.positive_score, *e.negative_scores[:k]] for e in examples]
