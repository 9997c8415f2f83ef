"""2 gloo ranks with per-rank batch B follow the same loss curve as 1 process with batch 2B."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import no_dropout_copy, tiny_config, write_pairs

from ragcun.testing.distributed import run_on_ranks

# 2-rank training runs and a torchrun relaunch: 14-23 s each
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def _train_on_rank(rank: int, world_size: int, config_dict: dict):
    from ragcun.training.config import TrainConfig
    from ragcun.training.loop import train

    result = train(TrainConfig(**config_dict))
    return result.losses, result.terms


def _final_head(run) -> torch.Tensor:
    from ragcun.model import load

    return load(run).head.mean.weight.detach()


@pytest.fixture()
def setup(tiny_model_dir, tmp_path):
    model = no_dropout_copy(tiny_model_dir, tmp_path / "tiny-no-dropout")
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    return model, data


@pytest.mark.parametrize("grad_cache_chunk", [None, 3])
def test_two_ranks_match_one_process_with_twice_the_batch(setup, tmp_path, grad_cache_chunk):
    model, data = setup
    common = dict(steps=4, negatives=1, save_every=100, grad_cache_chunk=grad_cache_chunk)
    single = tiny_config(model, tmp_path / "single", data, batch_size=8, **common)
    double = tiny_config(model, tmp_path / "double", data, batch_size=4, **common)
    [(expected, expected_terms)] = run_on_ranks(_train_on_rank, 1, single.to_dict())
    results = run_on_ranks(_train_on_rank, 2, double.to_dict())
    (got, got_terms), (got1, _) = results
    assert got == got1  # every rank logs the agreed (all-reduced) loss
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    for a, b in zip(got_terms, expected_terms):
        torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())), rtol=1e-5, atol=1e-5)
    assert expected[-1] != expected[0]  # the curve moved: the steps did something
    torch.testing.assert_close(_final_head(tmp_path / "double"), _final_head(tmp_path / "single"),
                               rtol=1e-4, atol=1e-6)


def test_nproc_per_node_relaunches_under_torchrun(tiny_model_dir, tmp_path):
    """``ragcun train --nproc-per-node 2`` runs torchrun itself (gloo on CPU); rank 0 writes the run."""
    import json
    import os
    import subprocess
    import sys

    data = write_pairs(tmp_path / "pairs.jsonl", 24)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ragcun", "train", "--nproc-per-node", "2",
           "--encoder", f"hf:{tiny_model_dir}", "--set", "head.gaussian.out_dim=16", "--set",
           "loss.isotropy.num_slices=16", "--train-data", str(data), "--output-dir", str(out), "--batch-size", "4",
           "--steps", "2", "--log-every", "1", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "train_config.json").read_text())
    assert config["batch_size"] == 4
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert (out / "ragcun.json").is_file()
