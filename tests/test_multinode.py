"""The multi-node and elastic launches of ``ragcun train``, run for real by torchrun on one machine (gloo, CPU).

* Two nodes: two ``torchrun --nnodes 2 --nproc-per-node 1`` agents meet through a c10d rendezvous on
  localhost, exactly as two machines would (node 0 hosts the rendezvous store, as the machine named by
  ``--rdzv-endpoint`` does); the run must log the same losses and end with the same weights as one
  ``ragcun train --nproc-per-node 2`` run.
* Elastic restart: under ``torchrun --max-restarts 1`` one worker is SIGKILLed mid-run (tests/_elastic_worker.py);
  torchrun restarts both workers with the same command line (no ``--resume``), ragcun resumes from the last
  checkpoint by itself, and the run ends bit-identical to an uninterrupted one.

Every run uses one tiny model with dropout off and identical settings, so the uninterrupted reference run is
made once for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from _training_helpers import no_dropout_copy, write_pairs

from ragcun.distributed import free_port

STEPS = 8
SAVE_EVERY = 2
KILL_AT_STEP = 5  # after the checkpoint of step 4, before step 5's optimizer step
TIMEOUT_S = 240  # per launch; a tiny run takes ~20-30 s on a busy 2-core machine
ELASTIC_WORKER = Path(__file__).with_name("_elastic_worker.py")


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multinode")
    model = no_dropout_copy(tiny_model_dir, folder / "tiny-no-dropout")  # runs comparable bit for bit
    data = write_pairs(folder / "pairs.jsonl", 64)  # 8 steps x 2 ranks x batch 4: one epoch, no wrap-around
    return model, data


def _train_args(inputs, output_dir: Path) -> list[str]:
    model, data = inputs
    return ["train", "--encoder", f"hf:{model}", "--set", "head.gaussian.out_dim=16",
            "--set", "loss.isotropy.num_slices=32", "--train-data", f"jsonl:{data}", "--output-dir", str(output_dir),
            "--batch-size", "4", "--steps", str(STEPS), "--lr", "1e-3", "--warmup", "0", "--seed", "0",
            "--save-every", str(SAVE_EVERY), "--log-every", "1", "--no-progress"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, output: str, what: str) -> None:
    assert proc.returncode == 0, f"{what} exited with {proc.returncode}; its output ends:\n{output[-4000:]}"


def _losses(run: Path) -> dict[int, float]:
    """step -> logged loss; a step logged twice (a resume that did not drop the records it redid) fails."""
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            assert record["step"] not in out, f"{run}/metrics.jsonl logs step {record['step']} twice"
            out[record["step"]] = record["loss"]
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    """The same losses at every step (to 1e-6) and bit-identical final weights."""
    import torch
    from safetensors.torch import load_file

    got, expected = _losses(run), _losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1)), f"{run} logged steps {sorted(got)}"
    assert sorted(expected) == sorted(got)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, \
            f"step {step}: loss {got[step]!r} in {run}, {expected[step]!r} in the reference run {reference}"
    # the same world size, data shards, seeds and collectives (a 2-rank all-reduce is one float addition, which
    # commutes), so the weights agree to the bit, not merely closely. Tensors are compared, not the files:
    # the safetensors header's metadata may list its keys in another order.
    a, b = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"final weights differ from the reference run in {len(differ)} tensors, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """One uninterrupted single-node run: ``ragcun train --nproc-per-node 2`` (it launches torchrun itself)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run([sys.executable, "-m", "ragcun", *_train_args(inputs, out), "--nproc-per-node", "2"],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), check=False)
    _check(proc, proc.stdout + proc.stderr, "ragcun train --nproc-per-node 2")
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_on_one_machine_match_a_two_process_run(inputs, reference, tmp_path):
    out = tmp_path / "two-nodes"
    port, run_id = free_port(), f"ragcun-test-{uuid.uuid4().hex[:8]}"
    procs, logs = [], [tmp_path / f"node{node}.log" for node in (0, 1)]
    try:
        for node in (0, 1):
            # with c10d, --node-rank is only informative (torchrun says so): the rendezvous hands out the ranks.
            # is_host says which agent serves the rendezvous store, as only the machine named in --rdzv-endpoint
            # would on a real cluster (on one machine both match the address, and the first to bind would win).
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", run_id, "--rdzv-conf", f"is_host={int(node == 0)}",
                   "-m", "ragcun", *_train_args(inputs, out)]
            with logs[node].open("w") as log:  # files, not pipes: a node waited on later cannot block on a full pipe
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env()))
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [log.read_text() for log in logs]
    for node, (p, output) in enumerate(zip(procs, outputs)):
        _check(p, output, f"node {node}'s torchrun")
    # exactly one worker (global rank 0) reports the run, and the job had two ranks (one RNG state each in
    # the checkpoints)
    joined = "\n".join(outputs)
    assert joined.count(f"done: {STEPS} steps") == 1, joined[-4000:]
    from ragcun.training import checkpoint as ckpt

    assert len(ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["rng"]) == 2
    _assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_elastic_restart_resumes_from_the_last_checkpoint_by_itself(inputs, reference, tmp_path):
    out = tmp_path / "elastic"
    marker = tmp_path / "killed.marker"
    # --standalone: a c10d rendezvous on localhost with a fresh run id. The worker script is `python -m ragcun`
    # plus the fault: rank 1 SIGKILLs itself before step KILL_AT_STEP on the first attempt only.
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: each attempt gets a fresh TCP store; with torchrun's default shared
    # store the restarted workers may read the killed attempt's addresses and fail or hang (pytorch#135712;
    # ragcun warns about it, see ragcun/distributed.py)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", str(ELASTIC_WORKER), *_train_args(inputs, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          env=_env(RAGCUN_TEST_KILL_AT_STEP=str(KILL_AT_STEP), RAGCUN_TEST_KILL_RANK="1",
                                   RAGCUN_TEST_KILL_MARKER=str(marker), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"))
    output = proc.stdout + proc.stderr
    _check(proc, output, "torchrun --max-restarts 1")
    assert marker.is_file(), f"the injected kill never fired; output:\n{output[-4000:]}"
    assert "torchrun restarted the workers" in output, output[-4000:]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" not in output  # no warning: this launch restarts cleanly
    # the first attempt started the run, the restart (same command, no --resume) resumed it at the last
    # checkpoint before the kill, and both entries carry this torchrun job's id
    history = json.loads((out / "config_history.json").read_text())
    assert [(e["event"], e["step"], e["torchelastic_restart"]) for e in history] == \
        [("start", 0, 0), ("resume", KILL_AT_STEP - 1, 1)], history
    assert history[0]["torchelastic_run_id"] == history[1]["torchelastic_run_id"]
    # steps 5.. were logged once only (metrics of the killed attempt beyond the checkpoint were dropped)
    _assert_same_run(out, reference)


@pytest.mark.usefixtures("single_thread")
def test_a_restart_resumes_only_a_run_its_own_torchrun_job_started(tiny_model_dir, tmp_path, monkeypatch):
    """The decision alone, in one process: torchrun's restart environment (TORCHELASTIC_RESTART_COUNT > 0)
    makes ``train`` continue a run of the same job (run id) and the same settings; another job's run in the
    folder is refused as any existing run is."""
    from _training_helpers import tiny_config

    from ragcun.training.loop import train

    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    config = tiny_config(tiny_model_dir, tmp_path / "run", data, steps=2, save_every=1)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert train(config, stop_after=1).step == 1  # the first attempt: one step and its checkpoint, then "killed"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    result = train(config)  # no resume=True: the restart environment alone makes it resume
    assert (result.resumed_from, result.step, result.model_dir) == (1, 2, Path(config.output_dir))
