"""The recommended three-run ablation, trained and evaluated the same way, in one comparison table.

=============  ============================================  ================================================
run            loss                                          what it tests
=============  ============================================  ================================================
baseline       ``contrastive+0*isotropy``                    contrastive alone (SIGReg is computed with weight
                                                             0: no gradient; the logged weighted term is 0;
                                                             the table's SIGReg column compares the runs)
isotropy       ``contrastive+W*isotropy`` (W = 1.0)          does the isotropy term help retrieval?
frozen         ``contrastive+W*isotropy``, encoder frozen    how far does training the head alone go
                                                             (the head gets ``head_lr``, default 1e-3: a
                                                             fresh linear map needs a larger step than a
                                                             pretrained encoder)
=============  ============================================  ================================================

W defaults to 1.0 and ``--isotropy-weight`` changes it. The gaussian head calibrates itself before the first
step (``head.gaussian.init_scale="auto"``, ragcun.training.calibration): MiniLM's unit vectors would otherwise
give each coordinate a spread of about 0.04, which SIGReg sees as a nearly collapsed batch. For a credible
answer (seeds, a dev-chosen weight, paired significance) use ``ragcun ablation run PLAN`` instead.

Where the runs go (``parallel``): by default (``"auto"``) on a node with at least one GPU per run each run
gets an equal share of the GPUs (``n // runs``, so the three runs keep the same global batch; a remainder stays
idle and is reported) through ``CUDA_VISIBLE_DEVICES`` and its own ``torchrun``, in parallel; otherwise the runs
go one after another in this process. ``"yes"`` forces the parallel launch (on a CPU each run is one process
with its share of the cores), ``"no"`` forces one after another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ragcun.training.config import TrainConfig

RUNS = ("baseline", "isotropy", "frozen")
FROZEN_HEAD_LR = 1e-3


def sweep_configs(base: TrainConfig, isotropy_weight: float = 1.0, runs=RUNS) -> dict[str, TrainConfig]:
    """The ablation's configs, each in ``base.output_dir/NAME``."""
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise ValueError(f"--runs: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if not isotropy_weight > 0:
        raise ValueError(f"--isotropy-weight must be positive (the baseline is the weight-0 run), "
                         f"got {isotropy_weight}")
    contrastive = "contrastive"
    w = f"{isotropy_weight:g}"
    out = Path(base.output_dir)
    all_configs = {
        "baseline": replace(base, output_dir=str(out / "baseline"), loss=f"{contrastive}+0*isotropy",
                            freeze_encoder=False),
        "isotropy": replace(base, output_dir=str(out / "isotropy"), loss=f"{contrastive}+{w}*isotropy",
                            freeze_encoder=False),
        "frozen": replace(base, output_dir=str(out / "frozen"), loss=f"{contrastive}+{w}*isotropy",
                          freeze_encoder=True, head_lr=base.head_lr or FROZEN_HEAD_LR),
    }
    return {name: all_configs[name] for name in runs}


def _partition(n_gpus: int, n_runs: int) -> list[list[int]] | None:
    """Equal, disjoint GPU groups, one per run (``None`` when there are fewer GPUs than runs)."""
    if n_runs < 1 or n_gpus < n_runs:
        return None
    per = n_gpus // n_runs
    return [list(range(i * per, (i + 1) * per)) for i in range(n_runs)]


def plan_placement(n_gpus: int, n_runs: int, parallel: str = "auto") -> list[list[int]] | None:
    """Which GPUs each run gets when the runs go in parallel (``[]`` per run: CPU processes), or ``None`` for
    one after another in this process."""
    if parallel not in ("auto", "yes", "no"):
        raise ValueError(f"--parallel must be auto, yes or no, got {parallel!r}")
    if parallel == "no" or n_runs == 0:
        return None
    groups = _partition(n_gpus, n_runs)
    if groups is not None:
        return groups
    if parallel == "auto":
        return None
    if n_gpus:
        raise ValueError(f"--parallel yes: {n_runs} runs need at least one GPU each and this node has {n_gpus}; "
                         "use --parallel no to train them one after another")
    return [[] for _ in range(n_runs)]


def run_sweep(configs: dict[str, TrainConfig], *, resume: bool = False, parallel: str = "auto",
              show=print) -> dict[str, dict[str, Any]]:
    """Train every config (skipping runs already finished); returns per-run status."""
    import torch

    from ragcun.model import CONFIG_FILE
    from ragcun.training import checkpoint as ckpt
    from ragcun.workflows.run import train

    status: dict[str, dict[str, Any]] = {}
    todo = {}
    for name, config in configs.items():
        run_dir = Path(config.output_dir)
        if (run_dir / CONFIG_FILE).is_file():
            show(f"{name}: already finished in {run_dir}; skipping")
            status[name] = {"trained": "earlier"}
            continue
        todo[name] = (config, resume and ckpt.latest_checkpoint(run_dir) is not None)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    groups = plan_placement(gpus, len(todo), parallel)
    if groups is None:
        for name, (config, again) in todo.items():
            show(f"{name}: training ({config.loss}{', frozen encoder' if config.freeze_encoder else ''}) "
                 f"-> {config.output_dir}")
            result = train(config, resume=again)
            status[name] = {"trained": "now", "steps": result.step, "pairs_per_s": result.pairs_per_s,
                            "interrupted": result.interrupted}
            if result.interrupted:
                raise KeyboardInterrupt
        return status
    idle = gpus - sum(len(g) for g in groups)
    if gpus and idle:
        show(f"{idle} of {gpus} GPUs stay idle: every run gets the same number, so all keep the same global batch")
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    procs = {}
    for (name, (config, again)), devices, port in zip(todo.items(), groups, range(29511, 29600)):
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        spec = Path(config.output_dir).parent / f"{name}.json"
        spec.write_text(json.dumps(config.to_dict(), indent=2))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(1, len(devices))}",
               f"--master-port={port}", "--master-addr=127.0.0.1", "--rdzv-backend=static", "--nnodes=1",
               "--node-rank=0", "-m", "ragcun", "train", "--config", str(spec), "--no-progress"]
        if again:
            cmd += ["--resume", "--output-dir", config.output_dir]
        log = open(Path(config.output_dir).parent / f"{name}.log", "a")  # noqa: SIM115 (outlives this block)
        if devices:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
            where = f"GPUs {devices}"
        else:  # CPU processes side by side: share the cores instead of each spinning on all of them
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
            where = f"CPU ({threads} thread(s))"
        show(f"{name}: training on {where} ({config.loss}) -> {config.output_dir}; log {log.name}")
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for name, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        status[name] = {"trained": "now" if code == 0 else f"failed (exit {code}, see {log.name})"}
        if code:
            failed.append(name)
    if failed:
        raise ValueError(f"sweep: run(s) {', '.join(failed)} failed; see their logs in {Path(log.name).parent}")
    return status


def _last_terms(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "loss" in record:
                last = {"loss": record["loss"], **record.get("terms", {})}
    return last


def evaluate_sweep(configs: dict[str, TrainConfig], eval_data: str, *, data_dir: str | None = None,
                   batch_size: int = 64, dtype: str = "float32", diagnostics_sample: int = 1000,
                   show=print, show_progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate each finished run on the BEIR split ``eval_data``; one row per run.

    Each evaluation encodes the whole corpus (minutes on a CPU), so it says what it is doing and shows the
    encoding progress bars unless ``show_progress=False``. The retrieval is ``eval beir``'s (:func:`evaluate_beir`,
    :mod:`ragcun.evaluation.pipeline`: BEIR's document order, the corpus chunked, ``dtype`` an ``eval beir``
    ``--dtype`` name); the isotropy columns are the first ``diagnostics_sample`` documents by id, encoded apart
    (:func:`ragcun.evaluation.pipeline.first_documents_isotropy`)."""
    import torch

    from ragcun.data.training import resolve_eval_split
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.model import load

    folder, split = resolve_eval_split(eval_data, data_dir)
    rows = []
    for name, config in configs.items():
        run_dir = Path(config.output_dir)
        model = load(run_dir)
        show(f"{name}: evaluating {run_dir} on {folder.name} {split}")
        report = evaluate_beir(model, [str(folder)], None, split, batch_size=batch_size, dtype=dtype,
                               show_progress=show_progress)
        metrics = next(iter(report["datasets"].values()))
        row = {"run": name, "loss": config.loss, "frozen_encoder": config.freeze_encoder,
               "trainable_params": sum(p.numel() for n, p in model.named_parameters()
                                       if not (config.freeze_encoder and n.startswith("encoder."))),
               "NDCG@10": metrics.get("NDCG@10"), "MRR@10": metrics.get("MRR@10"),
               "Recall@100": metrics.get("Recall@100"), "final_train": _last_terms(run_dir)}
        try:
            from ragcun.data.beir import load_corpus
            from ragcun.evaluation.pipeline import first_documents_isotropy

            row["isotropy"] = first_documents_isotropy(model, load_corpus(folder), diagnostics_sample, batch_size)
        except ImportError:
            row["isotropy"] = {}
        rows.append(row)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows
