"""Sharded evaluation (2 gloo ranks) gives exactly what one process gives."""

from __future__ import annotations

import pytest
from _training_helpers import write_beir

# both tests spawn gloo ranks (2, then 1): several seconds each
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def _evaluate(rank, world_size, checkpoint, data_dir):
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.encoding import encode
    from ragcun.resolve import resolve_model

    model = resolve_model(checkpoint)
    texts = [f"text number {i} " + "word " * (i % 13) for i in range(23)]
    emb = encode(model, texts, batch_size=4)
    report = evaluate_beir(model, "tiny", data_dir, "test", batch_size=4, corpus_chunk_size=10, download=False,
                           device="cpu", per_query=True, return_results=True, show_progress=False)
    # numpy, not tensors: torch's queue shares tensor storage through the worker, which has exited by then
    return {"report": report, "mean": emb.mean.numpy().copy(), "logvar": emb.logvar.numpy().copy()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from ragcun.model import EmbeddingModel
    from ragcun.testing.tiny import make_tiny_bert

    root = tmp_path_factory.mktemp("dist-eval")
    tiny = make_tiny_bert(root / "tiny")
    torch.manual_seed(0)
    model = EmbeddingModel.build(f"hf:{tiny}", "gaussian", "wasserstein",
                                 {"head": {"gaussian": {"out_dim": 8, "logvar": True}}})
    torch.nn.init.normal_(model.head.logvar.weight, std=0.3)  # make the variances depend on the text
    model.save_pretrained(root / "ckpt")
    data = root / "data"
    write_beir(data / "tiny")
    return str(root / "ckpt"), str(data)


@pytest.mark.distributed
def test_two_ranks_equal_one_process(checkpoint):
    import numpy as np

    from ragcun.testing.distributed import run_on_ranks

    ckpt, data_dir = checkpoint
    (single,) = run_on_ranks(_evaluate, 1, ckpt, data_dir)
    pair = run_on_ranks(_evaluate, 2, ckpt, data_dir)
    for out in pair:
        assert np.array_equal(out["mean"], single["mean"])  # same batches on every layout: bitwise equal
        assert np.array_equal(out["logvar"], single["logvar"])
        assert out["report"]["datasets"] == single["report"]["datasets"]
        assert out["report"]["runs"] == single["report"]["runs"]
        assert out["report"]["per_query"] == single["report"]["per_query"]
        assert out["report"]["settings"]["world_size"] == 2
    assert single["report"]["settings"]["distance"] == "wasserstein"
    # the shared query/document id "d5" never retrieves itself
    assert "d5" not in single["report"]["runs"]["tiny"]["d5"]


def test_one_process_without_torch_distributed(checkpoint):
    """Outside torchrun the same function runs unsharded and agrees with the 1-rank group."""
    ckpt, data_dir = checkpoint
    import numpy as np

    from ragcun.testing.distributed import run_on_ranks

    out = _evaluate(0, 1, ckpt, data_dir)
    assert out["report"]["settings"]["world_size"] == 1
    assert set(out["report"]["runs"]["tiny"]) == {"d5", *(f"q{i}" for i in range(1, 9))}
    (group,) = run_on_ranks(_evaluate, 1, ckpt, data_dir)
    assert np.array_equal(out["mean"], group["mean"]) and np.array_equal(out["logvar"], group["logvar"])
    assert out["report"]["datasets"] == group["report"]["datasets"]
    assert out["report"]["per_query"] == group["report"]["per_query"]
