"""CI's short real training run: the embedded MiniLM, SciFact train pairs, periodic nq-utd evaluation and
isotropy diagnostics, through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from ragcun.cli.root import build_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # restores the thread count


def test_short_real_run_on_minilm_and_scifact(data_dir, tmp_path):
    import torch

    torch.set_num_threads(2)  # single_thread (above) puts the original count back after the module
    out = tmp_path / "minilm-scifact"
    args = ["train", "--head", "gaussian", "--loss", "contrastive+isotropy", "--encoder", "all-minilm-l6-v2",
            "--train-data", "beir:scifact:train", "--data-dir", str(data_dir), "--output-dir", str(out),
            "--batch-size", "8", "--steps", "4", "--lr", "5e-5", "--warmup", "1", "--log-every", "1",
            "--save-every", "4", "--set", "encoder.all-minilm-l6-v2.max_seq_length=64",
            "--set", "loss.isotropy.num_slices=256", "--eval-data", "beir:nq-utd:test", "--eval-every", "4",
            "--max-eval-queries", "20", "--diagnostics-every", "4", "--no-progress"]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and evals[0]["dataset"] == "nq-utd:test"
    assert evals[0]["NDCG@10"] > 0.2  # MiniLM's ranking survives a few steps with the gaussian head
    diagnostics = [r["diagnostics"] for r in records if "diagnostics" in r]
    assert diagnostics and "sigreg_raw" in diagnostics[0]
    from ragcun.model import load

    model = load(out)
    assert model.dim == 512 and model.encode(["a claim about cells"]).shape == (1, 512)
