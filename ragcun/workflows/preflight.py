"""``ragcun preflight``: a few minutes that save an expensive run from a silly failure.

Checks, in order: environment (versions), devices (GPUs, bf16, NCCL or gloo actually initializing), the data
(train spec opens, eval split loads), disk space where the run will write, a few real training steps of the
real model on the real data (finite loss, checkpoint written and reloadable), and a tiny evaluation end to end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ragcun.training.config import TrainConfig

MIN_FREE_GB = 2.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but look at it


_PG_CHECK = """
import os, sys, torch, torch.distributed as dist
backend = sys.argv[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
dev = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
dist.init_process_group(backend, rank=0, world_size=1)
t = torch.ones(4, device=dev)
dist.all_reduce(t)
assert float(t.sum()) == 4.0
dist.destroy_process_group()
print("ok")
"""


def check_environment() -> list[Check]:
    import platform

    import torch
    import transformers

    from ragcun import __version__

    return [Check("environment", True, f"ragcun {__version__}, python {platform.python_version()}, torch "
                                       f"{torch.__version__}, transformers {transformers.__version__}, "
                                       f"{platform.platform()}")]


def check_devices() -> list[Check]:
    import torch
    import torch.distributed as dist

    from ragcun.distributed import free_port

    checks = []
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        checks.append(Check("GPUs", True, f"{n} x {', '.join(names)} ({mem:.0f} GiB each), CUDA {torch.version.cuda}, "
                                          f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
        backend = "nccl" if dist.is_nccl_available() else None
        if backend is None:
            checks.append(Check("NCCL", False, "torch was built without NCCL: multi-GPU training will not work"))
    else:
        checks.append(Check("GPUs", True, "none: training runs on the CPU (gloo for several processes)", warning=True))
        backend = "gloo"
    if backend:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PG_CHECK, backend, str(free_port())], capture_output=True,
                              text=True, timeout=180, check=False)
        ok = proc.returncode == 0 and "ok" in proc.stdout
        detail = (f"{backend} process group initialized and all-reduced in {time.perf_counter() - t0:.1f}s" if ok
                  else f"{backend} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        checks.append(Check("torch.distributed", ok, detail))
    return checks


def check_data(config: TrainConfig, eval_data: str | None) -> tuple[list[Check], object]:
    from ragcun.data.training import open_source

    checks = []
    try:
        source = open_source(config.train_data, data_dir=config.data_dir, seed=config.seed, negatives=0,
                             qrels_threshold=config.qrels_threshold, shuffle_buffer=config.shuffle_buffer)
        count = len(source)
        checks.append(Check("training data", count >= config.batch_size,
                            f"{source.description}: {count:,} examples"
                            + ("" if count >= config.batch_size else f", fewer than --batch-size {config.batch_size}")))
    except ValueError as exc:
        checks.append(Check("training data", False, str(exc)))
    dataset = None
    if eval_data:
        try:
            from ragcun.evaluation.training_callbacks import load_eval_set

            dataset = load_eval_set(replace(config, eval_data=eval_data, eval_every=1))
            checks.append(Check("evaluation data", True, f"{dataset.name}:{dataset.split}: {len(dataset.corpus):,} "
                                                         f"documents, {len(dataset.queries):,} queries"))
        except ValueError as exc:
            checks.append(Check("evaluation data", False, str(exc)))
    return checks, dataset


def check_disk(output_dir: str) -> Check:
    path = Path(output_dir).resolve()
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free / 2**30
    ok = free >= MIN_FREE_GB
    return Check("disk", ok, f"{free:.1f} GiB free at {path}" + ("" if ok else f" (need at least {MIN_FREE_GB} GiB "
                                                                              "for checkpoints)"))


def check_training(config: TrainConfig, steps: int, workdir: Path) -> tuple[Check, Path | None]:
    import math

    from ragcun.model import load
    from ragcun.training import checkpoint as ckpt
    from ragcun.workflows.run import train

    trial = replace(config, output_dir=str(workdir / "run"), steps=steps, epochs=None, save_every=steps,
                    keep_checkpoints=1, log_every=1, eval_every=None, eval_data=None, diagnostics_every=None,
                    show_progress=False, warmup=0.0)
    try:
        t0 = time.perf_counter()
        result = train(trial)
        took = time.perf_counter() - t0
    except Exception as exc:  # anything: this is what preflight is for
        return Check("training steps", False, f"{type(exc).__name__}: {exc}"), None
    finite = all(math.isfinite(x) for x in result.losses)
    latest = ckpt.latest_checkpoint(trial.output_dir)
    try:
        load(latest.folder / ckpt.MODEL_FOLDER)
        reload_ok = True
    except Exception:
        reload_ok = False
    memory = f", peak GPU memory {result.peak_memory_mb:.0f} MiB" if result.peak_memory_mb else ""
    detail = (f"{steps} steps in {took:.1f}s ({result.pairs_per_s:.1f} pairs/s{memory}), losses "
              f"{', '.join(f'{x:.3f}' for x in result.losses)}; "
              f"checkpoint {'reloads' if reload_ok else 'does NOT reload'}")
    return Check("training steps", finite and reload_ok, detail), Path(trial.output_dir)


def check_eval(model_dir: Path, dataset, queries: int = 20, extra_docs: int = 300) -> Check:
    from ragcun.evaluation.pipeline import evaluate_dataset
    from ragcun.model import load

    keep = sorted(dataset.queries)[:queries]
    relevant = {d for q in keep for d in dataset.qrels[q]}
    docs = (sorted(relevant & set(dataset.corpus))
            + [d for d in sorted(dataset.corpus) if d not in relevant][:extra_docs])
    small = replace(dataset, queries={q: dataset.queries[q] for q in keep}, qrels={q: dataset.qrels[q] for q in keep},
                    corpus={d: dataset.corpus[d] for d in docs})
    try:
        model = load(model_dir)
        t0 = time.perf_counter()
        out = evaluate_dataset(model, small, k=100, k_values=[10, 100], batch_size=32)
        return Check("tiny evaluation", True, f"{len(keep)} queries x {len(docs)} documents in "
                                              f"{time.perf_counter() - t0:.1f}s: "
                                              f"NDCG@10 {out['metrics']['NDCG@10']:.3f}")
    except Exception as exc:
        return Check("tiny evaluation", False, f"{type(exc).__name__}: {exc}")


def preflight(config: TrainConfig, *, eval_data: str | None = None, steps: int = 3,
              report: Callable[[Check], None] = lambda c: None) -> list[Check]:
    """Run every check (reporting each as it finishes); training and evaluation use a temporary folder."""
    checks: list[Check] = []

    def add(items):
        for item in items if isinstance(items, list) else [items]:
            checks.append(item)
            report(item)

    add(check_environment())
    add(check_devices())
    data_checks, dataset = check_data(config, eval_data)
    add(data_checks)
    add(check_disk(config.output_dir))
    if not all(c.ok for c in checks):
        add(Check("training steps", False, "skipped: fix the failures above first"))
        return checks
    with tempfile.TemporaryDirectory(prefix="ragcun-preflight-") as tmp:
        check, run_dir = check_training(config, steps, Path(tmp))
        add(check)
        if dataset is not None and run_dir is not None:
            add(check_eval(run_dir, dataset))
    return checks
