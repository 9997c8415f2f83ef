"""Shared helpers for the tests (tiny offline models, small real-format data, fault injection); tests import
this module, never each other."""

from __future__ import annotations

import json
from pathlib import Path

MSMARCO_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msmarco-train-sample" / "train.jsonl"


def no_dropout_copy(src: Path, dst: Path) -> Path:
    """A copy of a tiny model folder with dropout off (bitwise-comparable runs across batch layouts)."""
    import shutil

    if not dst.exists():
        shutil.copytree(src, dst)
        config = json.loads((dst / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def write_pairs(path: Path, n: int = 64, negs: int = 4) -> Path:
    """MS MARCO-style JSONL built from the real sample's passages (so texts are realistic), n lines."""
    lines = ([json.loads(x) for x in MSMARCO_SAMPLE.read_text().splitlines() if x.strip()]
             if MSMARCO_SAMPLE.is_file() else [])
    with path.open("w") as fh:
        for i in range(n):
            if lines:
                src = lines[i % len(lines)]
                words = src["query"].split()
                query = " ".join(words[i % len(words):] + words[:i % len(words)]) + f" {i}"
                record = {"query": query, "pos": [f"{i} " + src["pos"][0][:300]],
                          "neg": [n[:300] for n in src["neg"][i % 5:i % 5 + negs]]}
            else:
                record = {"query": f"what is item {i}", "pos": [f"item {i} is a thing number {i}"],
                          "neg": [f"item {i + j + 1} is another thing" for j in range(negs)]}
            fh.write(json.dumps(record) + "\n")
    return path


def tiny_config(model_dir: Path, output_dir: Path, data: Path, **overrides):
    from ragcun.training.config import TrainConfig

    base = dict(output_dir=str(output_dir), train_data=str(data), encoder=f"hf:{model_dir}",
                settings={"head": {"gaussian": {"out_dim": 16}}, "loss": {"isotropy": {"num_slices": 32}}},
                loss="contrastive+isotropy", batch_size=4, steps=6, lr=1e-3, warmup=0.0, save_every=3, log_every=1,
                show_progress=False, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


class NaNAtStep:
    """The real loss, made NaN from a given step on (a diverging run)."""

    def __init__(self, inner, step):
        self.inner, self.step = inner, step

    def __call__(self, inputs):
        out = self.inner(inputs)
        if inputs.step + 1 >= self.step:
            out.total = out.total * float("nan")
        return out


def write_beir(folder, n_docs: int = 37, n_queries: int = 9, same_qrels_as: tuple[str, ...] = ()):
    """A small synthetic BEIR folder: varied lengths, graded qrels, one query id shared with a document; each split
    of ``same_qrels_as`` (e.g. ``("train",)``, for a plan that trains on it) gets the test split's qrels."""
    import random

    rng = random.Random(0)
    words = ["gaussian", "embedding", "retrieval", "isotropy", "distance", "query", "document", "corpus", "vector",
             "rank", "score"]
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as fh:
        for i in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
            fh.write(json.dumps({"_id": f"d{i}", "title": f"title {i}" if i % 3 else "", "text": text}) + "\n")
    query_ids = ["d5"] + [f"q{i}" for i in range(1, n_queries)]
    with (folder / "queries.jsonl").open("w") as fh:
        for qid in query_ids:
            fh.write(json.dumps({"_id": qid,
                                 "text": " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))}) + "\n")
    with (folder / "qrels" / "test.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid in query_ids:
            for j in rng.sample(range(n_docs), 3):
                fh.write(f"{qid}\td{j}\t{rng.randint(0, 2)}\n")
    for split in same_qrels_as:
        (folder / "qrels" / f"{split}.tsv").write_text((folder / "qrels" / "test.tsv").read_text())
    return folder


def write_distribution(root: Path, dist: str, module: str, source: str, entry_name: str | None = None) -> None:
    """A fake installed distribution ``dist`` (version 1.2.3) whose ``ragcun`` entry point names ``module``,
    written as ``root/module.py`` from ``source`` (put ``root`` on sys.path to "install" it)."""
    import textwrap

    entry_name = entry_name or module
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[ragcun]\n{entry_name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))
