"""``ragcun data score``: a teacher's scores for every (query, positive, negatives) of a training set, written as
the JSONL that distillation trains from (``margin-mse``, ``distill-kl``).

One function, :func:`score_training_data`. The teacher is any ``--model`` ragcun resolves (a checkpoint,
``hf:PATH``, an encoder name, ``ENCODER+HEAD``, a plugin's encoder: a bi-encoder scoring with its own
distance's similarity) or ``cross-encoder:PATH`` (sentence-transformers' ``CrossEncoder`` on a local folder:
its raw logit, no activation). The training data is any ``--train-data`` spec, read in file order:

* ``beir:NAME:SPLIT``: one line per (query, judged-relevant document) pair (score >= ``qrels_threshold``), its
  hard negatives the first K mined ones (``--mine-negatives``, filters included; default ``bm25``);
* ``jsonl:PATH``: one line per input line, all its positives, its first K negatives (every one with K = 0);
* ``triples:PATH``: one line per triple.

Each output line (the layout ragcun's JSONL loader reads, MS MARCO / FlagEmbedding-compatible)::

    {"query": str, "query_id": str, "pos": [str], "pos_ids": [str], "neg": [str, ...], "neg_ids": [str, ...],
     "relevant_ids": [str, ...], "pos_scores": [float], "neg_scores": [float, ...]}

(ids and ``relevant_ids``, every document judged relevant to the query, when the data has them.) Beside it,
``OUTPUT.meta.json`` states the teacher, its similarity (``"cosine"``, ``"euclidean"`` = ``-||q - d||``, ...
or ``"cross-encoder logit"``), the sign (larger = more relevant, always) and the scale (1: the teacher's own
units; map them onto the student's with ``loss.margin-mse.teacher_scale`` or ``loss.distill-kl
.teacher_temperature``).

Resumable and atomic: progress goes to ``OUTPUT.part-rankR.jsonl`` (one per rank, each line with its item's
index) and ``OUTPUT.part.json`` (the job, so a restart with other settings is refused); a restarted run keeps the
finished lines and scores the rest (a half-written last line is dropped). At the end rank 0 merges the parts in
the input's order into a temporary file renamed to ``OUTPUT`` (after ``OUTPUT.meta.json``), and removes the
parts. Sharded under torchrun: rank R scores items R, R + W, R + 2W, ...; a restart with another world size
still keeps every finished line.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "ragcun-teacher-scores"
VERSION = 1
CROSS_ENCODER = "cross-encoder:"
SIGN = "higher scores mean more relevant"


@dataclass
class ScoringItem:
    """One line to score (and write)."""

    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    query_id: str | None = None
    pos_ids: list[str] | None = None
    neg_ids: list[str] | None = None
    relevant_ids: list[str] | None = None

    def record(self, pos_scores: list[float], neg_scores: list[float]) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query}
        if self.query_id is not None:
            out["query_id"] = self.query_id
        out["pos"] = self.pos
        if self.pos_ids is not None:
            out["pos_ids"] = self.pos_ids
        out["neg"] = self.neg
        if self.neg_ids is not None:
            out["neg_ids"] = self.neg_ids
        if self.relevant_ids is not None:
            out["relevant_ids"] = self.relevant_ids
        out["pos_scores"] = [float(s) for s in pos_scores]
        out["neg_scores"] = [float(s) for s in neg_scores]
        return out


# -- the items, in the input's order -------------------------------------------------------------------------------
class ScoringInput:
    """The items of a ``--train-data`` spec, counted and iterated in file order (streamed for files)."""

    def __init__(self, train_data: str, *, data_dir: str | None = None, negatives: int = 0,
                 mine_negatives: str | None = None, qrels_threshold: int = 1, miner=None, is_main: bool = True,
                 barrier: Callable[[], None] = lambda: None, sample: int | None = None, sample_seed: int = 0) -> None:
        from ragcun.data.training import parse_data_spec

        if negatives < 0:
            raise ValueError(f"--negatives must be 0 or more, got {negatives}")
        self.spec = parse_data_spec(train_data)
        self.negatives = int(negatives)
        self.path = None
        self._items: list[ScoringItem] | None = None
        if self.spec.kind == "beir":
            self._items = _beir_items(self.spec, data_dir, self.negatives, mine_negatives, qrels_threshold, miner,
                                      is_main, barrier)
            self.count = len(self._items)
        else:
            if mine_negatives:
                raise ValueError(f"--mine-negatives works on BEIR data (beir:NAME:SPLIT); {train_data!r} brings its "
                                 "own negatives")
            if self.spec.kind == "triples" and self.negatives > 1:
                raise ValueError(f"--negatives {negatives}: MS MARCO triples carry one negative per line")
            self.path = Path(self.spec.target).expanduser()
            if not self.path.is_file():
                raise ValueError(f"--train-data: {self.path} does not exist")
            self.count = sum(1 for _ in self._lines())
        self._pick(sample, sample_seed)

    def _pick(self, sample: int | None, seed: int) -> None:
        """Keep a fixed random ``sample`` of the items (their input order kept; positions 0..sample-1 from here
        on): a pilot, or a teacher too slow for the whole set. ``None``, or a sample as large as the input: all."""
        self.total, self._position, self.sample_seed = self.count, None, seed
        if sample is None:
            return
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ValueError(f"--sample must be a positive integer, got {sample!r}")
        if sample < self.count:
            import random

            picked = sorted(random.Random(seed).sample(range(self.count), sample))
            self._position = {index: position for position, index in enumerate(picked)}
            self.count = sample

    def _lines(self) -> Iterator[tuple[int, str]]:
        from ragcun.data.beir import decode_line
        from ragcun.data.training import _open_binary

        with _open_binary(self.path) as fh:
            for number, raw in enumerate(fh, start=1):
                if raw.strip():
                    yield number, decode_line(raw, self.path, number)

    def items(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, ScoringItem]]:
        """``(index, item)`` for the indices ``wanted`` accepts, in order (only those are parsed); with a sample,
        the index is the item's position in the sample."""
        position = self._position

        def kept(i: int) -> int | None:  # the item's index in the output, or None when it is not sampled
            return i if position is None else position.get(i)

        if self._items is not None:
            for i, item in enumerate(self._items):
                if (at := kept(i)) is not None and wanted(at):
                    yield at, item
            return
        for index, (number, line) in enumerate(self._lines()):
            if (at := kept(index)) is not None and wanted(at):
                yield at, self._parse(line, f"{self.path}:{number}")

    def _parse(self, line: str, where: str) -> ScoringItem:
        k = self.negatives
        if self.spec.kind == "triples":
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise ValueError(f"{where}: expected query<TAB>positive<TAB>negative")
            return ScoringItem(parts[0], [parts[1]], [parts[2]])
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: malformed JSON ({exc.msg}; column {exc.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise ValueError(f"{where}: expected a JSON object with 'query', 'pos' and 'neg'")
        pos, neg = record.get("pos"), record.get("neg", [])
        pos = [pos] if isinstance(pos, str) else pos
        if not isinstance(pos, list) or not pos or not all(isinstance(p, str) for p in pos):
            raise ValueError(f"{where}: 'pos' must be a non-empty list of strings")
        if not isinstance(neg, list) or not all(isinstance(n, str) for n in neg):
            raise ValueError(f"{where}: 'neg' must be a list of strings")
        if k and len(neg) < k:
            raise ValueError(f"{where}: --negatives {k} but this line has {len(neg)} 'neg' passages")
        take = slice(0, k) if k else slice(None)
        ids = lambda key: record[key] if isinstance(record.get(key), list) else None  # noqa: E731
        neg_ids = ids("neg_ids")
        return ScoringItem(record["query"], pos, neg[take], record.get("query_id"), ids("pos_ids"),
                           neg_ids[take] if neg_ids is not None else None, ids("relevant_ids"))


def _beir_items(spec, data_dir, k: int, mine_negatives, threshold: int, miner, is_main: bool,
                barrier) -> list[ScoringItem]:
    from ragcun.data.beir import document_text, find_dataset, load_beir
    from ragcun.data.negatives import DEFAULT_DEPTH, load_or_mine, parse_mining_spec

    dataset = load_beir(find_dataset(spec.target, data_dir, download=False), spec.split, name=Path(spec.target).name)
    corpus = dataset.corpus
    pairs = [(qid, did) for qid in sorted(dataset.qrels) for did, score in sorted(dataset.qrels[qid].items())
             if score >= threshold and did in corpus]
    if not pairs:
        raise ValueError(f"{dataset.qrels_file}: no (query, document) pair has a score >= {threshold}")
    relevant: dict[str, list[str]] = {}
    for qid, did in pairs:
        relevant.setdefault(qid, []).append(did)
    mined: dict[str, list[str]] = {}
    if k:
        mining = parse_mining_spec(mine_negatives or "bm25")
        depth = max(DEFAULT_DEPTH, k)
        if mining.method == "model" and miner is None:
            raise ValueError("--mine-negatives model mines with the teacher, which must then be a bi-encoder")
        if mining.method == "model":
            mined, _, _ = load_or_mine(mining, dataset, miner=miner, depth=depth, model_key=miner.key, write=is_main)
            barrier()
        else:
            if is_main:
                mined, _, _ = load_or_mine(mining, dataset, depth=depth)
            barrier()
            if not is_main:
                mined, _, _ = load_or_mine(mining, dataset, depth=depth)
    items = []
    for qid, did in pairs:
        neg_ids = list(mined.get(qid, []))[:k]
        if k and len(neg_ids) < k:
            raise ValueError(f"query {qid!r} has {len(neg_ids)} mined negatives, fewer than --negatives {k}: relax "
                             "the --mine-negatives filters")
        items.append(ScoringItem(dataset.queries[qid], [document_text(corpus[did])],
                                 [document_text(corpus[n]) for n in neg_ids], qid, [did], neg_ids, relevant[qid]))
    return items


# -- teachers ----------------------------------------------------------------------------------------------------------
# Distinct passages whose vectors a bi-encoder teacher keeps (least recently used dropped first): a 768-d vector
# is 3 KB, so at most ~300 MB, and SQuAD's whole corpus (20,963 paragraphs) fits.
DOCUMENT_CACHE_SIZE = 100_000


class TextVectorCache:
    """Embeddings by text, at most ``size`` of them, the least recently used dropped first (``size`` 0 keeps
    nothing)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, Any] = OrderedDict()

    def get(self, text: str):
        vector = self.entries.get(text)
        if vector is not None:
            self.entries.move_to_end(text)
        return vector

    def put(self, text: str, vector) -> None:
        if self.size <= 0:
            return
        self.entries[text] = vector
        self.entries.move_to_end(text)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

class BiEncoderTeacher:
    """A ragcun model scoring with its own distance's similarity (exact, float64)."""

    kind = "bi-encoder"

    def __init__(self, spec: str, *, distance: str | None = None, settings=None, device=None,
                 query_prefix: str | None = None, document_prefix: str | None = None, batch_size: int = 32,
                 dtype: str = "float32") -> None:
        from ragcun.components import component_name
        from ragcun.distances.base import similarity_formula
        from ragcun.evaluation.pipeline import autocast_dtype, inference_model
        from ragcun.precision import precision
        from ragcun.resolve import resolve_model

        self.model = resolve_model(spec, distance=distance, settings=settings)
        if device is not None:
            self.model.to(device)
        self.model.eval()
        # --dtype as in ragcun eval beir: the same encoding (a prepared copy, autocast) as its evaluation
        self.dtype = precision(dtype, "eval")
        self.autocast = autocast_dtype(self.dtype, self.model.device)
        self.model = inference_model(self.model, self.dtype)
        self.query_prefix = self.model.query_prefix if query_prefix is None else query_prefix
        self.document_prefix = self.model.document_prefix if document_prefix is None else document_prefix
        self.batch_size = batch_size
        self.similarity = component_name(self.model.distance)
        self.formula = similarity_formula(self.model.distance)
        self.key = json.dumps(["teacher", spec, distance, settings], sort_keys=True, default=str)
        # Mined negatives and positives come from one corpus, so the same passage recurs across lines (a sample
        # of 16,000 SQuAD lines with 4 negatives names ~20,000 distinct paragraphs 80,000 times): each distinct
        # text is encoded once and its vector reused, which also gives it one score-defining vector everywhere
        # (in bfloat16 a vector depends slightly on the batch it was padded with). Queries rarely recur and
        # would only evict passages, so they are deduplicated within a batch only.
        self.documents = TextVectorCache(DOCUMENT_CACHE_SIZE)

    def _encode(self, texts: list[str], cache: TextVectorCache | None = None):
        """The embeddings of ``texts`` in order, each distinct one encoded once, and none that ``cache`` holds."""
        from ragcun.embedding import Embedding

        distinct = list(dict.fromkeys(texts))
        found = {t: v for t in distinct if cache is not None and (v := cache.get(t)) is not None}
        missing = [t for t in distinct if t not in found]
        if missing:
            new = self.model.encode_embeddings(missing, self.batch_size, show_progress=False,
                                               autocast_dtype=self.autocast)
            for i, text in enumerate(missing):
                found[text] = new[i:i + 1]
                if cache is not None:
                    cache.put(text, found[text])
        return Embedding.cat([found[t] for t in texts])

    def score(self, items: list[ScoringItem]) -> list[list[float]]:
        """``[pos scores..., neg scores...]`` per item."""
        from ragcun.distances.base import exact_similarity

        queries = self._encode([self.query_prefix + it.query for it in items])
        docs = self._encode([self.document_prefix + d for it in items for d in it.pos + it.neg], self.documents)
        out, start = [], 0
        for i, it in enumerate(items):
            n = len(it.pos) + len(it.neg)
            sims = exact_similarity(self.model.distance, queries[i:i + 1], docs[start:start + n])[0]
            out.append(sims.tolist())
            start += n
        return out

    def __call__(self, dataset, depth, spec, report):  # the miner for --mine-negatives model
        from ragcun.training.negatives import mine_with_model

        return mine_with_model(self.model, dataset, depth, spec=spec, report=report)


class CrossEncoderTeacher:
    """sentence-transformers' ``CrossEncoder`` on a local folder: its raw logit per (query, passage) pair."""

    kind = "cross-encoder"
    similarity = "cross-encoder logit"
    formula = "the cross-encoder's raw output logit (no sigmoid or softmax)"

    def __init__(self, path: str, *, device=None, batch_size: int = 32, query_prefix: str | None = None,
                 document_prefix: str | None = None) -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise ValueError("--teacher cross-encoder:PATH needs sentence-transformers (pip install "
                             "sentence-transformers)") from None
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--teacher cross-encoder:{path}: not a folder; ragcun loads cross-encoders from local "
                             "folders only (download one with huggingface-cli first, where the network allows)")
        import torch

        self.model = CrossEncoder(str(folder), device=None if device is None else str(device), local_files_only=True)
        self.identity = torch.nn.Identity()
        self.batch_size = batch_size
        self.query_prefix, self.document_prefix = query_prefix or "", document_prefix or ""
        self.key = json.dumps(["cross-encoder", str(folder)])

    def score(self, items: list[ScoringItem]) -> list[list[float]]:
        pairs = [(self.query_prefix + it.query, self.document_prefix + d) for it in items for d in it.pos + it.neg]
        scores = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=self.identity,
                                    show_progress_bar=False, convert_to_numpy=True)
        scores = [float(s) for s in scores.reshape(len(pairs), -1)[:, 0]] if len(pairs) else []
        out, start = [], 0
        for it in items:
            n = len(it.pos) + len(it.neg)
            out.append(scores[start:start + n])
            start += n
        return out


def load_teacher(spec: str, **kwargs):
    """``cross-encoder:PATH`` or any ``--model`` spec (a bi-encoder)."""
    if spec.startswith(CROSS_ENCODER):
        kwargs.pop("distance", None)
        kwargs.pop("settings", None)
        if kwargs.pop("dtype", "float32") != "float32":
            raise ValueError("--dtype: a cross-encoder teacher scores in float32 (sentence-transformers' "
                             "CrossEncoder); --dtype is for bi-encoder teachers")
        if not spec[len(CROSS_ENCODER):]:
            raise ValueError("--teacher cross-encoder:PATH needs a folder after 'cross-encoder:'")
        return CrossEncoderTeacher(spec[len(CROSS_ENCODER):], **kwargs)
    return BiEncoderTeacher(spec, **kwargs)


# -- files -------------------------------------------------------------------------------------------------------------
def meta_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".meta.json")


def part_path(output: str | os.PathLike, rank: int) -> Path:
    return Path(f"{output}.part-rank{rank}.jsonl")


def job_path(output: str | os.PathLike) -> Path:
    return Path(f"{output}.part.json")


def _part_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f"{output.name}.part-rank*.jsonl"))


def _read_part(path: Path) -> tuple[dict[int, dict], int]:
    """The complete lines of a part file by index, and the byte length of that complete prefix (a half-written
    last line, from a kill, is not part of it)."""
    done: dict[int, dict] = {}
    good = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
                index = int(record.pop("_index"))
            except (ValueError, KeyError, TypeError):
                break
            done[index] = record
            good += len(raw)
    return done, good


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The ``.meta.json`` beside a scored JSONL, or None when it has none."""
    meta = meta_path(path)
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{meta}: not valid JSON") from None


def score_training_data(teacher: str, train_data: str, output: str | os.PathLike, *, negatives: int = 0,
                        data_dir: str | None = None, mine_negatives: str | None = None, qrels_threshold: int = 1,
                        batch_size: int = 32, device: str | None = None, distance: str | None = None,
                        settings=None, query_prefix: str | None = None, document_prefix: str | None = None,
                        ctx=None, progress: Callable[[int, int], None] | None = None, sample: int | None = None,
                        sample_seed: int = 0, dtype: str = "float32") -> dict[str, Any]:
    """Score every item of ``train_data`` with ``teacher`` into ``output`` (see the module docstring); return the
    metadata written beside it, with ``"resumed"`` (lines kept from an earlier run) and ``"scored"`` (lines this
    call scored, on this rank). ``ctx``: the torchrun context (:func:`ragcun.distributed.setup`); None: one process.
    ``progress(done, total)`` is called on rank 0 after each batch. ``sample``: score a fixed random sample of that
    many items (chosen with ``sample_seed``, kept in input order); ``dtype``: a bi-encoder teacher's precision, named
    as in ``ragcun eval beir --dtype``. Both are part of the job, so a resumed run must give the same."""
    import ragcun.distributed as D

    ctx = ctx or D.DistributedContext()
    output = Path(output).expanduser()
    _check_batch_size_and_output(batch_size, output)
    job = {"teacher": teacher, "train_data": train_data, "negatives": int(negatives), "mine_negatives": mine_negatives,
           "qrels_threshold": int(qrels_threshold), "distance": distance, "settings": settings,
           "query_prefix": query_prefix, "document_prefix": document_prefix,
           # recorded only when given, so a job written before they existed compares equal
           **({"sample": sample, "sample_seed": sample_seed} if sample is not None else {}),
           **({"dtype": dtype} if dtype != "float32" else {})}
    finished = _metadata_if_already_scored(output, job)
    if finished is not None:
        return {**finished, "resumed": finished.get("lines", 0), "scored": 0, "already_complete": True}
    output.parent.mkdir(parents=True, exist_ok=True)

    target = D.pick_device(device, ctx.local_rank)
    model = load_teacher(teacher, distance=distance, settings=settings, device=target, batch_size=batch_size,
                         query_prefix=query_prefix, document_prefix=document_prefix, dtype=dtype)
    data = ScoringInput(train_data, data_dir=data_dir, negatives=negatives, mine_negatives=mine_negatives,
                        qrels_threshold=qrels_threshold,
                        miner=model if isinstance(model, BiEncoderTeacher) else None, is_main=ctx.is_main,
                        barrier=lambda: D.barrier(ctx), sample=sample, sample_seed=sample_seed)
    job["lines"] = data.count
    recorded = json.loads(json.dumps(job))  # the job as its JSON file reads back, for comparing with one
    _record_or_check_job(output, recorded, ctx)

    done = _finished_lines(output)  # every rank's finished lines, whatever world size wrote them
    mine = part_path(output, ctx.rank)
    _cut_half_written_line(mine)
    resumed = len(done)
    scored = _score_this_ranks_share(model, data, mine, done, ctx, batch_size, progress)
    D.barrier(ctx)

    meta = _scores_metadata(teacher, train_data, negatives, mine_negatives, qrels_threshold, model, data, recorded)
    if ctx.is_main:
        _merge_parts_into_output(output, data.count, meta)
    D.barrier(ctx)
    return {**meta, "resumed": resumed, "scored": scored, "already_complete": False}


def _check_batch_size_and_output(batch_size: int, output: Path) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name, e.g. {output / 'scores.jsonl'}")


def _metadata_if_already_scored(output: Path, job: dict[str, Any]) -> dict | None:
    """None when ``output`` does not exist yet; its metadata when an earlier run finished this same job (so
    rerunning a finished command is a no-op); otherwise an error, as ragcun never overwrites an output."""
    if not output.exists():
        return None
    meta = read_metadata(output)
    finished = {k: v for k, v in (meta or {}).get("job", {}).items() if k != "lines"}
    if meta is not None and finished == json.loads(json.dumps(job)):
        return meta
    raise ValueError(f"--output {output} exists" + (" and was scored with other settings" if meta else "")
                     + "; ragcun does not overwrite it: remove it or choose another file")


def _record_or_check_job(output: Path, recorded: dict[str, Any], ctx) -> None:
    """Rank 0 writes the job file (or, on a restart, refuses one with other settings, whose parts would not mix
    with this run's); then every rank waits for it."""
    import ragcun.distributed as D
    from ragcun.files import write_text_atomic

    if ctx.is_main:
        if job_path(output).is_file():
            previous = json.loads(job_path(output).read_text())
            if previous != recorded:
                changed = sorted(k for k in set(previous) | set(recorded) if previous.get(k) != recorded.get(k))
                raise ValueError(f"{job_path(output)}: the unfinished run that wrote {output.name}.part-* used other "
                                 f"settings ({', '.join(changed)}); run it with the same ones, or delete "
                                 f"{output}.part* to start over")
        else:
            for stale in _part_files(output):  # parts without a job file are not ours to trust
                stale.unlink()
            write_text_atomic(job_path(output), json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    D.barrier(ctx)


def _finished_lines(output: Path) -> dict[int, dict]:
    """The complete lines of every part file of ``output``, by item index."""
    done: dict[int, dict] = {}
    for path in _part_files(output):
        lines, _ = _read_part(path)
        done.update(lines)
    return done


def _cut_half_written_line(part: Path) -> None:
    """Truncate ``part`` to its complete lines, so that appending to it starts on a fresh line."""
    if part.is_file():
        _, good = _read_part(part)
        with part.open("r+b") as fh:
            fh.truncate(good)


def _score_this_ranks_share(model, data: ScoringInput, part: Path, done: dict[int, dict], ctx, batch_size: int,
                            progress: Callable[[int, int], None] | None) -> int:
    """Score the items this rank owns (R, R + W, ...) that are not ``done``, appending them to ``part`` batch by
    batch; return how many it scored. ``progress`` (rank 0 only) estimates the total from this rank's count."""
    resumed = len(done)

    def todo(i):
        return i % ctx.world_size == ctx.rank and i not in done

    scored = 0
    with part.open("a", encoding="utf-8") as out:
        for batch in _batches(data.items(todo), batch_size):
            _append_scored_batch(model, batch, out)
            scored += len(batch)
            if progress is not None and ctx.is_main:
                progress(resumed + scored * ctx.world_size, data.count)
    return scored


def _batches(items: Iterator[tuple[int, ScoringItem]], size: int) -> Iterator[list[tuple[int, ScoringItem]]]:
    """``items`` in lists of ``size`` (the last one shorter), pulled lazily so a batch is scored before the next
    is read."""
    batch: list[tuple[int, ScoringItem]] = []
    for pair in items:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _append_scored_batch(model, batch: list[tuple[int, ScoringItem]], out) -> None:
    """Score ``batch`` and append its lines (each with its item's ``_index``) to ``out``, flushed and fsynced so a
    kill loses at most the batch in hand."""
    scores = model.score([item for _, item in batch])
    for (index, item), row in zip(batch, scores):
        record = item.record(row[:len(item.pos)], row[len(item.pos):])
        out.write(json.dumps({"_index": index, **record}, ensure_ascii=False) + "\n")
    out.flush()
    os.fsync(out.fileno())


def _scores_metadata(teacher: str, train_data: str, negatives: int, mine_negatives: str | None,
                     qrels_threshold: int, model, data: ScoringInput, recorded: dict[str, Any]) -> dict[str, Any]:
    """The ``OUTPUT.meta.json`` content: the teacher, its similarity, sign, scale and precision, the job, and of
    how many lines a sample was drawn."""
    from ragcun import __version__

    return {"format": FORMAT, "version": VERSION, "teacher": teacher, "teacher_kind": model.kind,
            "similarity": model.similarity, "similarity_formula": model.formula, "sign": SIGN, "scale": 1.0,
            "note": ("pos_scores/neg_scores are the teacher's own similarity, unscaled; map them onto the student's "
                     "with loss.margin-mse.teacher_scale or loss.distill-kl.teacher_temperature (ragcun's euclidean "
                     "similarity is -||q - d||, sqeuclidean -||q - d||^2)"),
            "lines": data.count, "train_data": train_data, "negatives": int(negatives),
            "mine_negatives": mine_negatives, "qrels_threshold": int(qrels_threshold),
            "query_prefix": getattr(model, "query_prefix", ""),
            "document_prefix": getattr(model, "document_prefix", ""),
            "job": recorded, "ragcun_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "teacher_dtype": getattr(model, "dtype", "float32"),
            **({"sampled_from": data.total, "sample_seed": data.sample_seed} if data.count != data.total else {})}


def _merge_parts_into_output(output: Path, count: int, meta: dict[str, Any]) -> None:
    """Rank 0: merge every part in the input's order, write ``OUTPUT.meta.json`` then ``output`` atomically (the
    output appears complete or not at all), and remove the parts and the job file."""
    from ragcun.files import atomic_path, write_text_atomic

    merged = _finished_lines(output)
    missing = [i for i in range(count) if i not in merged]
    if missing:
        raise ValueError(f"{output}: {len(missing)} of {count} lines were not scored (first: {missing[0]}); "
                         "run the same command again to finish")
    write_text_atomic(meta_path(output), json.dumps(meta, indent=1) + "\n")
    with atomic_path(output) as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for i in range(count):
                fh.write(json.dumps(merged[i], ensure_ascii=False) + "\n")
    for path in _part_files(output):
        path.unlink()
    job_path(output).unlink(missing_ok=True)
