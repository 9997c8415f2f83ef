"""The real all-mpnet-base-v2, assembled from the installed parts (the first run assembles it into the cache,
``$RAGCUN_HOME/models`` or ``~/.cache/ragcun/models``, in a few seconds; later runs find it ready)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import ragcun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder():
    from ragcun_mpnet.assemble import is_ready, model_path

    path = model_path()
    assert is_ready(path)
    return path


def _texts(data_dir) -> list[str]:
    """About 30 texts: SciFact documents (title + abstract; many are longer than mpnet's 384 tokens),
    queries, and an empty string."""
    with open(data_dir / "scifact" / "corpus.jsonl") as fh:
        docs = [json.loads(next(fh)) for _ in range(24)]
    with open(data_dir / "scifact" / "queries.jsonl") as fh:
        queries = [json.loads(next(fh))["text"] for _ in range(5)]
    return [f"{d.get('title', '')} {d['text']}".strip() for d in docs] + queries + [""]


def test_encode_equals_sentence_transformers(folder, data_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    texts = _texts(data_dir)
    tokens = [len(ids) for ids in AutoTokenizer.from_pretrained(str(folder))(texts, verbose=False)["input_ids"]]
    assert sum(n > 384 for n in tokens) >= 5, tokens  # truncation is part of what must agree

    model = ragcun.build_model("all-mpnet-base-v2", head="identity", distance="cosine")
    assert (model.encoder.dim, model.encoder.max_seq_length, model.encoder.pooling, model.encoder.normalize) == \
        (768, 384, "mean", True)
    ours = model.encode(texts, batch_size=8)
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    assert st.max_seq_length == 384
    theirs = st.encode(texts, batch_size=8, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(texts), 768)
    print(f"all-mpnet-base-v2 parity on {len(texts)} texts: max abs difference {np.abs(ours - theirs).max():.2e}")
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_short_training_run_and_its_checkpoint(folder, data_dir, tmp_path, monkeypatch):
    """`ragcun train` on mpnet for 4 steps (bf16 autocast on a CPU that has bfloat16 natively, float32 on one that
    would emulate it, several times slower); the checkpoint records the plugin that supplied the encoder, loads
    back, and without the plugin names the package to install."""
    from ragcun.precision import cpu_has_native_bfloat16

    out = tmp_path / "run"
    dtype = "bfloat16" if cpu_has_native_bfloat16() else "float32"
    args = [sys.executable, "-m", "ragcun", "train", "--encoder", "all-mpnet-base-v2", "--head", "gaussian",
            "--loss", "contrastive+isotropy", "--steps", "4", "--batch-size", "8", "--train-data", "beir:scifact:train",
            "--data-dir", str(data_dir), "--output-dir", str(out), "--dtype", dtype, "--no-progress"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses))

    config = json.loads((out / "ragcun.json").read_text())
    assert config["encoder"]["name"] == "all-mpnet-base-v2"
    assert config["encoder"]["provider"] == "ragcun-mpnet"
    assert config["encoder"]["provider_version"] == metadata.version("ragcun-mpnet")
    assert config["encoder"]["config"]["path"] == "encoder"  # self-contained: the parts are not needed to load it
    model = ragcun.load(out)
    assert model.dim == 512 and model.encode("a query").shape == (512,)

    # The same checkpoint on a machine without the plugin: the distribution is gone and its entry point with it.
    from ragcun import plugins

    real_version = plugins.metadata.version

    def version(name):
        if name.lower() == "ragcun-mpnet":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(plugins.metadata, "version", version)
    monkeypatch.setenv("RAGCUN_DISABLE_PLUGINS", "ragcun-mpnet")
    plugins.reset_host()
    try:
        with pytest.raises(ValueError, match="needs encoder 'all-mpnet-base-v2' from the package 'ragcun-mpnet'.*"
                                             "not installed: pip install ragcun-mpnet"):
            ragcun.load(out)
    finally:
        monkeypatch.undo()
        plugins.reset_host()
