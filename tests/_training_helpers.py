"""Shared helpers for the training tests (tiny offline models, small real-format data)."""

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
    lines = [json.loads(x) for x in MSMARCO_SAMPLE.read_text().splitlines() if x.strip()] if MSMARCO_SAMPLE.is_file() else []
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
