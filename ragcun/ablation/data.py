"""The plan's data: a dev split carved from the training queries (never the test split), and a dev corpus.

The dev queries are a fixed fraction of the training queries, chosen by a hash of their ids (so the same on
every machine and independent of file order). The derived BEIR folder links the original corpus and queries
and holds two qrels files, ``train.tsv`` (the rest) and ``dev.tsv``; training reads ``train``, lambda is chosen
on ``dev``. The dev corpus keeps every document judged for a dev query plus a fixed random sample of the
others: smaller than the whole corpus (fast to encode for each candidate), the same for every candidate.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from ragcun.data.beir import BeirDataset, find_dataset, load_beir, load_qrels
from ragcun.files import write_text_atomic

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split_queries(query_ids, fraction: float, salt: str) -> tuple[list[str], list[str]]:
    """(train ids, dev ids): the ``fraction`` of ids with the smallest salted hash go to dev."""
    ordered = sorted(query_ids, key=lambda q: (_hash(f"{salt}:{q}"), q))
    n_dev = max(1, round(fraction * len(ordered)))
    return sorted(ordered[n_dev:]), sorted(ordered[:n_dev])


def _write_qrels(path: Path, qrels: dict[str, dict[str, int]], ids: list[str]) -> None:
    # runs side by side prepare the same folder: an unchanged file is left alone
    lines = "".join(f"{q}\t{d}\t{s}\n" for q in ids for d, s in sorted(qrels[q].items()))
    write_text_atomic(path, QRELS_HEADER + lines,
                      skip_unchanged=True)


def carve_dev_split(dataset: str, data_dir: str | None, fraction: float, out: Path, *, salt: str,
                    split: str = "train") -> tuple[Path, dict]:
    """Write ``out`` (a BEIR folder: links to the corpus and queries, qrels/train.tsv and qrels/dev.tsv) and
    return it with a description of the split (ids and counts)."""
    source = find_dataset(dataset, data_dir, download=False)
    qrels = load_qrels(source / "qrels" / f"{split}.tsv")
    train_ids, dev_ids = split_queries(list(qrels), fraction, salt)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = out / name
        if not link.exists():
            try:
                link.symlink_to((source / name).resolve())
            except FileExistsError:  # another run, side by side, made it first
                pass
    _write_qrels(out / "qrels" / "train.tsv", qrels, train_ids)
    _write_qrels(out / "qrels" / "dev.tsv", qrels, dev_ids)
    info = {"source": str(source), "split": split, "fraction": fraction, "salt": salt,
            "train_queries": len(train_ids), "dev_queries": len(dev_ids), "dev_query_ids": dev_ids}
    write_text_atomic(out / "split.json", json.dumps(info, indent=1) + "\n", skip_unchanged=True)
    return out, info


def own_dev_split(dataset: str, data_dir: str | None, split: str = "dev", trained: str = "train") -> tuple[Path, dict]:
    """A dataset that has its own dev split (SQuAD's, NFCorpus's): train on all of ``trained``, choose on
    ``split``. Returns the dataset folder itself and a description like :func:`carve_dev_split`'s."""
    source = find_dataset(dataset, data_dir, download=False)
    counts = {}
    for name in (trained, split):
        path = source / "qrels" / f"{name}.tsv"
        if not path.is_file():
            raise ValueError(f"{source}: no qrels/{name}.tsv (the plan's [train] dev_split = {split!r} needs the "
                             f"dataset's own {trained} and {split} splits)")
        counts[name] = len(load_qrels(path))
    return source, {"source": str(source), "split": split, "own_split": True, "train_queries": counts[trained],
                    "dev_queries": counts[split], **({"trained_split": trained} if trained != "train" else {})}


def dev_dataset(folder: Path, corpus_sample: int, seed: int = 0, split: str = "dev") -> BeirDataset:
    """The dev split with its corpus cut to the judged documents plus random others (``corpus_sample`` in all,
    at least every judged one)."""
    dataset = load_beir(folder, split, name="dev")
    judged = sorted({d for docs in dataset.qrels.values() for d in docs if d in dataset.corpus})
    others = sorted(set(dataset.corpus) - set(judged))
    random.Random(seed).shuffle(others)
    keep = judged + others[:max(0, corpus_sample - len(judged))]
    dataset.corpus = {d: dataset.corpus[d] for d in sorted(keep)}
    return dataset
