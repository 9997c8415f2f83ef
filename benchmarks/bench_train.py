"""Training throughput and memory: ragcun's loop against sentence-transformers' own ``fit`` (MNRL), in one run.

What is compared (same model, same (query, positive) pairs in the same order, same batch size, same steps,
same max_seq_length, lr 2e-5, AdamW, weight decay 0.01, clipping 1.0, float32):

* ``sentence-transformers``: ``SentenceTransformer.fit`` with ``MultipleNegativesRankingLoss`` (cosine x 20,
  in-batch negatives);
* ``ragcun (=MNRL)``: ``ragcun.training.loop.train`` with the identity head, cosine distance and the
  ``contrastive`` loss at temperature 0.05: the same objective;
* ``ragcun gaussian+isotropy``: the configuration ragcun exists for (512-d gaussian head, euclidean,
  contrastive+isotropy), for information.

Throughput is measured the same way for both: the loss module's forward is time-stamped, and pairs/s is
``batch * intervals / time`` over the steady-state steps (the first two steps are warm-up and excluded).
Each system runs in its own fresh process, so peak memory is that process's peak RSS (``ru_maxrss``; on CUDA
also ``torch.cuda.max_memory_allocated``). The two systems alternate ``--repeats`` times (default 2) and each
one's best run is reported beside all of them: on a shared machine the load changes from minute to minute.
``wall s`` is the training call: for ragcun it includes loading the model from disk, for sentence-transformers
(loaded before the call) it includes ``fit``'s own setup.

Also measured: 2-rank gloo scaling (``ragcun train --nproc-per-node 2`` against one process, same global
batch) and GradCache memory (batch 1024 with chunks of 64 against a plain batch of 64).

    python benchmarks/bench_train.py            # MiniLM (the packaged model); ~10-20 min on 2 busy cores
    python benchmarks/bench_train.py --quick    # a tiny random BERT: checks the harness in a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RAGCUN_DATA", REPO.parent / "shared" / "data" / "beir"))


# -- shared ------------------------------------------------------------------------------------------------
def write_pairs(path: Path, n: int) -> Path:
    """The first n NFCorpus train pairs (110k; title + abstract documents) in ragcun's seeded order, as JSONL,
    so both systems see the same pairs in the same order."""
    from ragcun.data.training import open_source

    source = open_source("beir:nfcorpus:train", data_dir=str(DATA_DIR), seed=0)
    with path.open("w") as fh:
        for i, example in enumerate(source.examples(0)):
            if i == n:
                break
            fh.write(json.dumps({"query": example.query, "pos": [example.positive]}) + "\n")
    return path


def read_pairs(path: Path) -> list[tuple[str, str]]:
    return [(r["query"], r["pos"][0]) for r in map(json.loads, path.read_text().splitlines())]


class Stamps:
    def __init__(self) -> None:
        self.times: list[float] = []

    def stamp(self) -> None:
        self.times.append(time.perf_counter())

    def pairs_per_s(self, batch: int, warmup: int = 2) -> float:
        t = self.times[warmup:]
        return batch * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def peak_memory() -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def model_path(args) -> str:
    if args.quick:
        from ragcun.testing.tiny import make_tiny_bert

        folder = Path(args.work) / "tiny"
        if not (folder / "config.json").is_file():
            make_tiny_bert(folder, hidden_size=64, layers=2, heads=2)
        return str(folder)
    from ragcun.encoders.embedded import embedded_model_path

    return embedded_model_path()


# -- workers (each in its own process) ------------------------------------------------------------------------
def _st_setup(args):
    """What both sentence-transformers workers share: the model, the pairs, and MNRL (scale 20 = 1 / 0.05,
    cosine similarity) with its forward time-stamped."""
    import torch
    from sentence_transformers import SentenceTransformer, losses

    torch.manual_seed(0)
    model = SentenceTransformer(model_path(args), device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = args.max_seq_length
    stamps = Stamps()

    class TimedMNRL(losses.MultipleNegativesRankingLoss):
        def forward(self, *a, **k):
            stamps.stamp()
            return super().forward(*a, **k)

    return model, read_pairs(Path(args.pairs)), TimedMNRL(model), stamps


def _st_result(system: str, dtype: str, args, stamps: Stamps, wall_s: float) -> dict:
    return {"system": system, "dtype": dtype, "pairs_per_s": stamps.pairs_per_s(args.batch_size),
            "steps": len(stamps.times), "wall_s": wall_s, **peak_memory()}


def worker_st(args) -> dict:
    from sentence_transformers import InputExample
    from torch.utils.data import DataLoader

    model, pairs, loss, stamps = _st_setup(args)
    loader = DataLoader([InputExample(texts=[q, p]) for q, p in pairs], batch_size=args.batch_size, shuffle=False)
    t0 = time.perf_counter()
    model.fit(train_objectives=[(loader, loss)], epochs=1, steps_per_epoch=args.steps, warmup_steps=1,
              optimizer_params={"lr": 2e-5}, weight_decay=0.01, max_grad_norm=1.0, show_progress_bar=False)
    return _st_result("sentence-transformers fit (MNRL)", "float32", args, stamps, time.perf_counter() - t0)


def worker_st_bf16(args) -> dict:
    """bf16 the way a sentence-transformers user gets it: ``fit`` only offers fp16 AMP (CUDA), so this is
    ``SentenceTransformerTrainer`` with ``bf16=True`` (torch.autocast through accelerate, on CPU too); same
    pairs, no shuffling, same optimizer settings as the ``fit`` run."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from torch.utils.data import SequentialSampler

    model, pairs, loss, stamps = _st_setup(args)
    dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})

    class InOrderTrainer(SentenceTransformerTrainer):  # the same order as the other runs
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.work) / f"st-bf16-{os.getpid()}"), bf16=True, use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=2e-5, weight_decay=0.01,
        warmup_steps=1, max_grad_norm=1.0, lr_scheduler_type="linear", save_strategy="no", report_to=[],
        logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True, seed=0)
    trainer = InOrderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    t0 = time.perf_counter()
    trainer.train()
    return _st_result("sentence-transformers Trainer bf16 (MNRL)", "bfloat16", args, stamps, time.perf_counter() - t0)


def _ragcun_config(args, out: Path, **overrides):
    from ragcun.training.config import TrainConfig

    encoder = f"hf:{model_path(args)}"
    name = "hf"
    base = dict(output_dir=str(out), train_data=f"jsonl:{args.pairs}", shuffle_buffer=1, encoder=encoder,
                head="identity", distance="cosine", loss="contrastive",
                settings={"encoder": {name: {"max_seq_length": args.max_seq_length}}},
                batch_size=args.batch_size, steps=args.steps, lr=2e-5, warmup=1, weight_decay=0.01,
                max_grad_norm=1.0, dtype="float32", save_every=10**9, log_every=1, show_progress=False, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


def worker_ragcun(args, gaussian: bool = False, dtype: str = "float32") -> dict:
    import torch

    from ragcun.components import build
    from ragcun.losses.composite import build_loss
    from ragcun.training.loop import train

    torch.manual_seed(0)
    overrides = {"dtype": dtype}
    if gaussian:
        settings = {"encoder": {"hf": {"max_seq_length": args.max_seq_length}},
                    "loss": {"isotropy": {"num_slices": 256}}}
        overrides = dict(head="gaussian", distance="euclidean", loss="contrastive+isotropy", settings=settings)
    if args.grad_cache_chunk:
        overrides["grad_cache_chunk"] = args.grad_cache_chunk
    config = _ragcun_config(args, Path(args.work) / f"ragcun-{os.getpid()}", **overrides)
    # the same loss train() would build, with its forward time-stamped like the MNRL one
    loss = build_loss(config.loss, config.settings, distance=build("distance", config.distance))
    import transformers.models.bert.modeling_bert  # noqa: F401  (import cost out of the timing, as for ST)
    stamps = Stamps()

    def timed(inputs):
        stamps.stamp()
        return loss(inputs)

    t0 = time.perf_counter()
    result = train(config, loss_fn=timed)
    total = time.perf_counter() - t0
    label = "ragcun gaussian+isotropy" if gaussian else "ragcun train (= MNRL)"
    if dtype != "float32":
        label += f" {'bf16' if dtype == 'bfloat16' else dtype}"
    if args.grad_cache_chunk:
        label += f", GradCache chunk {args.grad_cache_chunk}"
    return {"system": label, "dtype": dtype, "pairs_per_s": stamps.pairs_per_s(args.batch_size), "steps": result.step,
            "wall_s": total, "batch_size": args.batch_size, **peak_memory()}


# -- orchestration ---------------------------------------------------------------------------------------------
TORCH_DROPOUT = "+torch-dropout"  # a worker kind with this suffix runs with RAGCUN_CPU_FAST_DROPOUT=0


def run_worker(kind: str, args, **overrides) -> dict:
    argv = [sys.executable, __file__, "--worker", kind, "--work", args.work, "--pairs", args.pairs,
            "--batch-size", str(overrides.get("batch_size", args.batch_size)),
            "--steps", str(overrides.get("steps", args.steps)), "--max-seq-length", str(args.max_seq_length)]
    if args.quick:
        argv.append("--quick")
    if overrides.get("grad_cache_chunk"):
        argv += ["--grad-cache-chunk", str(overrides["grad_cache_chunk"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    if kind.endswith(TORCH_DROPOUT):  # the same ragcun run with torch's own dropout masks (the A/B of the gain)
        kind = kind[: -len(TORCH_DROPOUT)]
        argv[argv.index("--worker") + 1] = kind
        env["RAGCUN_CPU_FAST_DROPOUT"] = "0"
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if env.get("RAGCUN_CPU_FAST_DROPOUT") == "0":
        row["system"] += ", torch's dropout"
    return row


def run_scaling(args) -> list[dict]:
    """ragcun train on 1 process (batch 2B) and on 2 gloo ranks (B each): same global batch and data."""
    out = []
    model = model_path(args)
    for nproc, batch in ((1, args.batch_size), (2, args.batch_size // 2)):
        run = Path(args.work) / f"scale-{nproc}"
        cmd = [sys.executable, "-m", "ragcun", "train", "--encoder", f"hf:{model}", "--head", "identity",
               "--distance", "cosine", "--loss", "contrastive",
               "--set", f"encoder.hf.max_seq_length={args.max_seq_length}",
               "--train-data", f"jsonl:{args.pairs}", "--shuffle-buffer", "1", "--output-dir", str(run),
               "--batch-size", str(batch), "--steps", str(args.steps), "--warmup", "1", "--save-every", "1000000000",
               "--log-every", "1", "--no-progress", "--dtype", "float32"]
        if nproc > 1:
            cmd += ["--nproc-per-node", str(nproc)]
        threads = max(1, args.threads // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            raise SystemExit(f"scaling run ({nproc} process(es)) failed:\n{proc.stderr[-4000:]}")
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        step_s = [r["step_s"] for r in records if "step_s" in r][2:]
        out.append({"processes": nproc, "batch_per_process": batch, "global_batch": args.batch_size,
                    "threads_per_process": threads,
                    "pairs_per_s": args.batch_size * len(step_s) / sum(step_s) if step_s else float("nan")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random BERT instead of MiniLM")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per system (OMP_NUM_THREADS); 1 by default: on a busy machine more "
                             "threads than free cores make OpenMP spin, which slows every system by 10x or more")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each system (best is kept)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="precisions to compare, each as a (ragcun, sentence-transformers) pair")
    parser.add_argument("--grad-cache-batch", type=int, default=1024)
    parser.add_argument("--grad-cache-chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: st,torch-dropout,gaussian,scaling,"
                                                   "gradcache (torch-dropout: ragcun again with torch's dropout "
                                                   "masks instead of ragcun.encoders.cpu_dropout's)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        result = {"st": worker_st, "ragcun": worker_ragcun, "st-bf16": worker_st_bf16,
                  "ragcun-bf16": lambda a: worker_ragcun(a, dtype="bfloat16"),
                  "gaussian": lambda a: worker_ragcun(a, gaussian=True)}[args.worker](args)
        print(json.dumps(result))
        return

    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="ragcun-bench-") as work:
        args.work = work
        need = max(args.batch_size * args.steps, args.grad_cache_batch * 2)
        args.pairs = str(write_pairs(Path(work) / "pairs.jsonl", need))
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores visible)"
        header = {"model": "tiny random BERT (hidden 64)" if args.quick else "all-MiniLM-L6-v2 (packaged)",
                  "device": device, "batch_size": args.batch_size, "steps": args.steps,
                  "max_seq_length": args.max_seq_length, "threads": args.threads, "data": "NFCorpus train pairs",
                  "torch": torch.__version__}
        print(json.dumps(header))
        results: dict = {"setup": header, "throughput": []}
        # alternate the two systems, --repeats times each, and keep each one's best run: on a shared machine
        # the load changes minute to minute, and the best run is the one least disturbed by it
        # pairs (ragcun, sentence-transformers) per precision: fp32 against ``fit`` (what the issue names),
        # bf16 against ST's Trainer with bf16=True (``fit`` has no bf16)
        # and ragcun once more with torch's dropout masks: how much of the ratio the CPU dropout gives
        pairs_to_run = [(dtype, ("ragcun", "st") if dtype == "float32" else ("ragcun-bf16", "st-bf16"))
                        for dtype in args.dtypes.split(",")]
        if "torch-dropout" not in skip and not torch.cuda.is_available():
            pairs_to_run = [(dtype, (*kinds, kinds[0] + TORCH_DROPOUT)) for dtype, kinds in pairs_to_run]
        results["ratios"] = {}
        for dtype, kinds in pairs_to_run:
            samples: dict[str, list[dict]] = {k: [] for k in kinds}
            for _ in range(args.repeats):
                for kind in kinds:
                    if kind.startswith("st") and "st" in skip:
                        continue
                    samples[kind].append(run_worker(kind, args))
                    print(json.dumps(samples[kind][-1]), flush=True)
            best = {k: max(v, key=lambda r: r["pairs_per_s"]) for k, v in samples.items() if v}
            for kind, row in best.items():
                row["samples_pairs_per_s"] = [r["pairs_per_s"] for r in samples[kind]]
                results["throughput"].append(row)
            ours, theirs = best.get(kinds[0]), best.get(kinds[1])
            if ours and theirs:
                results["ratios"][dtype] = {"throughput": ours["pairs_per_s"] / theirs["pairs_per_s"],
                                            "peak_rss": ours["peak_rss_mb"] / theirs["peak_rss_mb"]}
            torch_dropout = best.get(kinds[0] + TORCH_DROPOUT)
            if ours and torch_dropout:
                results["ratios"].setdefault(dtype, {})["cpu_dropout_gain"] = (ours["pairs_per_s"]
                                                                              / torch_dropout["pairs_per_s"])
        if "gaussian" not in skip:
            g = run_worker("gaussian", args)
            results["throughput"].append(g)
            print(json.dumps(g), flush=True)
        if "scaling" not in skip:
            results["scaling_gloo"] = run_scaling(args)
            print(json.dumps(results["scaling_gloo"]), flush=True)
        if "gradcache" not in skip:
            # one step each: memory is the point (a plain batch of 1024 would not fit a laptop: that is the point too)
            plain = run_worker("ragcun", args, batch_size=64, steps=1)
            cached = run_worker("ragcun", args, batch_size=args.grad_cache_batch, steps=1, grad_cache_chunk=64)
            results["grad_cache"] = {"plain_batch_64": plain,
                                     f"grad_cache_batch_{args.grad_cache_batch}_chunk_64": cached}
            print(json.dumps(results["grad_cache"]), flush=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"training throughput ({results['setup']['model']}, {results['setup']['device']}, "
                        f"batch {results['setup']['batch_size']}, max_seq_length {results['setup']['max_seq_length']})")
    for col in ("system", "pairs/s (best)", "all runs", "peak RSS MiB", "wall s"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for row in results["throughput"]:
        runs = ", ".join(f"{x:.2f}" for x in row.get("samples_pairs_per_s", [row["pairs_per_s"]]))
        table.add_row(row["system"], f"{row['pairs_per_s']:.2f}", runs, f"{row['peak_rss_mb']:.0f}",
                      f"{row['wall_s']:.1f}")
    console.print(table)
    for dtype, ratio in results.get("ratios", {}).items():
        if "throughput" in ratio:
            console.print(f"{dtype}: ragcun / sentence-transformers throughput {ratio['throughput']:.2f}x; "
                          f"peak RSS ratio {ratio['peak_rss']:.2f}")
        if "cpu_dropout_gain" in ratio:
            console.print(f"{dtype}: ragcun with its CPU dropout / with torch's dropout: "
                          f"{ratio['cpu_dropout_gain']:.2f}x")
    if "scaling_gloo" in results:
        one, two = results["scaling_gloo"]
        console.print(f"2-rank gloo scaling (global batch {one['global_batch']}): 1 process {one['pairs_per_s']:.2f} "
                      f"pairs/s, 2 ranks {two['pairs_per_s']:.2f} pairs/s "
                      f"({two['pairs_per_s'] / one['pairs_per_s']:.2f}x)")
    if "grad_cache" in results:
        (n1, a), (n2, b) = results["grad_cache"].items()
        console.print(f"GradCache memory (one step each): {n1}: peak RSS {a['peak_rss_mb']:.0f} MiB, "
                      f"{a['wall_s']:.0f}s; {n2}: peak RSS {b['peak_rss_mb']:.0f} MiB, {b['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
