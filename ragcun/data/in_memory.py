"""Training examples held in memory: a notebook's list of pairs, or a ``datasets.Dataset``.

``ragcun.train(config, data=examples)`` trains on them as on a file, with the same checks (each example is read
by the JSONL reader, :func:`ragcun.data.training.example_from_record`, errors naming ``data[i]``), the same
seeded order per epoch and the same resume semantics. The run records ``train_data = "memory:FINGERPRINT"``, a
SHA-256 of the examples: a resumed run needs the same examples (``ragcun.train(config, resume=True,
data=examples)``), and other ones are refused like any other changed setting.

Accepted examples (every item of ``data`` in one of these forms)::

    ("query", "positive")                              a pair
    ("query", "positive", "negative", ...)             with hard negatives (as sentence-transformers' texts)
    ("query", "positive", ["negative", ...])
    {"query": ..., "pos": ... , "neg": [...]}           a JSONL record (ids, teacher scores: docs/data.md)
    {"anchor": ..., "positive": ..., "negative": ...}   sentence-transformers' column names
    an object with ``.texts`` (sentence-transformers' InputExample)

A ``datasets.Dataset`` gives dict rows: named as above, or else read by column order (the first column the
query, the second the positive, the others negatives), as sentence-transformers reads a training dataset.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

from ragcun.data.training import TrainingExample, TrainingSource, _rng, example_from_record

MEMORY_PREFIX = "memory:"
_ST_NAMES = {"anchor": "query", "positive": "pos", "negative": "neg", "negatives": "neg"}


def is_memory_spec(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.startswith(MEMORY_PREFIX)


def _as_record(row: Any, where: str, columns: list[str] | None) -> dict[str, Any]:
    """One item of ``data`` as a JSONL-style record (not yet checked: example_from_record does that)."""
    texts = getattr(row, "texts", None)
    if texts is not None:  # sentence-transformers' InputExample
        row = list(texts)
    if isinstance(row, dict):
        if "query" in row or "pos" in row:
            return dict(row)
        if any(k in row for k in _ST_NAMES):
            record: dict[str, Any] = {}
            for key, value in row.items():
                name = _ST_NAMES.get(key)
                if name == "neg":
                    record["neg"] = record.get("neg", []) + (list(value) if isinstance(value, (list, tuple))
                                                               else [value])
                elif name is not None:
                    record[name] = value
            return record
        if columns is not None:  # a dataset read by column order
            row = [row[c] for c in columns]
        else:
            raise ValueError(f"{where}: a dict example needs 'query' and 'pos' (or 'anchor' and 'positive'), got "
                             f"the keys {sorted(row)}")
    if isinstance(row, (tuple, list)):
        if len(row) < 2:
            raise ValueError(f"{where}: an example needs a query and a positive, got {len(row)} item(s)")
        rest = list(row[2:])
        negatives = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        return {"query": row[0], "pos": row[1], "neg": list(negatives)}
    raise ValueError(f"{where}: an example is a (query, positive[, negatives]) tuple or a dict, got "
                     f"{type(row).__name__}")


def _canonical(record: dict[str, Any]) -> dict[str, Any]:
    """One spelling per example (a lone positive as a list, no negatives as []), so that one set of examples has
    one fingerprint whichever form it came in."""
    if isinstance(record.get("pos"), str):
        record["pos"] = [record["pos"]]
    record.setdefault("neg", [])
    return record


def _rows(data: Any) -> tuple[Iterator[Any], list[str] | None]:
    columns = getattr(data, "column_names", None)  # a datasets.Dataset
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ValueError(f"data= must be a list of examples or a datasets.Dataset, got {type(data).__name__} (a file "
                         "goes in train_data instead)")
    return iter(data), list(columns) if isinstance(columns, list) else None


class InMemoryExamples(TrainingSource):
    """A list of examples (module docstring) as a training source: one seeded permutation per epoch."""

    kind = "memory"

    def __init__(self, data: Any, *, seed: int = 0, negatives: int = 0) -> None:
        rows, columns = _rows(data)
        self.seed, self.negatives_per_example = int(seed), int(negatives)
        self.records = [_canonical(_as_record(row, f"data[{i}]", columns)) for i, row in enumerate(rows)]
        if not self.records:
            raise ValueError("data= holds no training examples")
        digest = hashlib.sha256()
        check = random.Random(0)
        for i, record in enumerate(self.records):
            example_from_record(record, f"data[{i}]", self.negatives_per_example, check)  # every one, before training
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")
        self.fingerprint = digest.hexdigest()[:16]
        self.spec = MEMORY_PREFIX + self.fingerprint
        self.description = f"{len(self.records)} in-memory examples ({self.spec})"

    def __len__(self) -> int:
        return len(self.records)

    def examples(self, epoch: int, start: int = 0) -> Iterator[TrainingExample]:
        order = list(range(len(self.records)))
        _rng(self.seed, epoch, 0).shuffle(order)
        for index in range(start, len(order)):
            i = order[index]
            yield example_from_record(self.records[i], f"data[{i}]", self.negatives_per_example,
                                      _rng(self.seed, epoch, 1, index))


def in_memory_config(config, data: Any):
    """``(config, source)``: ``config`` with ``train_data`` naming the examples' fingerprint, and the source. A
    ``train_data`` already set must be that same fingerprint (a resumed run's) or unset."""
    import dataclasses

    source = data if isinstance(data, InMemoryExamples) else InMemoryExamples(
        data, seed=config.seed, negatives=config.negatives)
    if config.train_data and config.train_data != source.spec:
        if is_memory_spec(config.train_data):
            raise ValueError(f"the run's train_data is {config.train_data}, and these in-memory examples are "
                             f"{source.spec}: a resumed run needs the same examples it started with")
        raise ValueError(f"train_data is {config.train_data!r} and data= gives in-memory examples too: give one "
                         "(leave train_data unset with data=)")
    if config.mine_negatives:
        raise ValueError("--mine-negatives mines a BEIR dataset's corpus; in-memory examples bring their own hard "
                         "negatives (put them in each example: (query, positive, negative, ...))")
    return dataclasses.replace(config, train_data=source.spec), source
