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

Where the runs go (``parallel``, ``slots``) is :mod:`ragcun.launch`'s one meaning of ``--parallel``: by default
(``"auto"``) on a node with at least two GPUs the runs go side by side, each slot with an equal share of the GPUs
(``n // slots``, so the runs keep the same global batch; a remainder stays idle and is reported) through
``CUDA_VISIBLE_DEVICES`` and its own ``torchrun``; otherwise one after another in this process. ``"yes"`` goes
side by side on a CPU too (2 processes at once by default, sharing the cores), ``"no"`` one after another.
"""

from __future__ import annotations

import json
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


def run_sweep(configs: dict[str, TrainConfig], *, resume: bool = False, parallel: str = "auto",
              slots: int | None = None, show=print) -> dict[str, dict[str, Any]]:
    """Train every config (skipping runs already finished); returns per-run status.

    Where they go is :func:`ragcun.launch.placement` (the one meaning of ``--parallel`` and ``--slots``): one
    after another in this process, or side by side, each run its resolved config saved as ``OUTPUT_DIR/NAME.json``
    and started as ``ragcun train --config NAME.json`` under its own torchrun (one rank per GPU of its slot),
    its output in ``OUTPUT_DIR/NAME.log``."""
    from ragcun.launch import Job, gpu_count, placement, run_jobs, where
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
    gpus = gpu_count()
    groups = placement(len(todo), gpus, parallel, slots)
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
    idle = gpus - len(set().union(*groups))
    if gpus and idle > 0:
        show(f"{idle} of {gpus} GPUs stay idle: every run gets the same number, so all keep the same global batch")
    jobs = []
    for (name, (config, again)), port in zip(todo.items(), range(29511, 29600)):
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        spec = Path(config.output_dir).parent / f"{name}.json"
        spec.write_text(json.dumps(config.to_dict(), indent=2))
        jobs.append(Job(name, config=spec, distributed=True, master_port=port,
                        args=["--no-progress", *(["--resume", "--output-dir", config.output_dir] if again else [])],
                        log=Path(config.output_dir).parent / f"{name}.log"))

    def started(job, devices, threads) -> None:
        config = todo[job.name][0]
        show(f"{job.name}: training on {where(devices, threads)} ({config.loss}) -> {config.output_dir}; "
             f"log {job.log}")

    codes = run_jobs(jobs, groups, show=show, grace=300.0, on_start=started)
    failed = [job for job in jobs if codes.get(job.name)]
    for job in jobs:
        code = codes.get(job.name)
        status[job.name] = {"trained": "now" if code == 0 else f"failed (exit {code}, see {job.log})"}
    if failed:
        raise ValueError(f"sweep: run(s) {', '.join(j.name for j in failed)} failed; see their logs in "
                         f"{Path(failed[0].log).parent}")
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
