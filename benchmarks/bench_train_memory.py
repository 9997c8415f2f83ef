"""Where training's host memory goes, phase by phase, and what the memory knobs cost (issue #15, item 5).

Each variant is the quickstart's training command (``scripts/quickstart.sh`` step 1: all-MiniLM-L6-v2 + gaussian
head, contrastive+isotropy, SciFact train, batch 32) run for a few steps in a fresh ``ragcun train`` process. The
run's own metrics.jsonl gives the process's resident-set high-water mark after each phase (start: Python, torch
and ragcun imported; model; data; head calibration) and after every step, so the table says which phase raised
the peak and by how much. Variants:

* ``plain``: the quickstart as it is (float32, every layer's activations kept for the backward pass);
* ``grad-cache-N``: ``--grad-cache-chunk N`` (GradCache: the same gradient, activations of N pairs at a time);
* ``gradient-checkpointing``: ``--gradient-checkpointing`` (each encoder layer recomputed in the backward pass:
  the same gradient, one layer's activations at a time);
* ``bfloat16``: ``--dtype bfloat16``, only where the CPU has native bf16 (it is about 7x slower where emulated)
  or when ``--variants`` names it.

Steady s/step leaves out the first step (allocation, warm-up). "last loss" is the last step's loss: every variant
computes the gradient of the same loss on the same batches, but dropout is on, so the losses agree only where the
dropout masks do: gradient checkpointing replays the plain run's masks (the same losses to float rounding), while
GradCache's chunks draw different ones (the same expected gradient; its two passes share their masks), so its
losses differ from the plain run's by dropout noise.

    python benchmarks/bench_train_memory.py             # 4 steps of batch 32 per variant (~5 min on 2 cores)
    python benchmarks/bench_train_memory.py --quick     # 2 steps of batch 8: checks the harness (CI runs it)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RAGCUN_DATA", REPO.parent / "shared" / "data" / "beir"))
PHASES = ("start", "model", "data", "calibration")


def variant_args(name: str) -> list[str]:
    if name == "plain":
        return []
    if name.startswith("grad-cache-"):
        return ["--grad-cache-chunk", name.removeprefix("grad-cache-")]
    if name == "gradient-checkpointing":
        return ["--gradient-checkpointing"]
    if name in ("bfloat16", "bfloat16-weights"):
        return ["--dtype", name]
    raise SystemExit(f"--variants: unknown variant {name!r} (plain, grad-cache-N, gradient-checkpointing, "
                     "bfloat16, bfloat16-weights)")


def default_variants(quick: bool) -> list[str]:
    from ragcun.precision import cpu_has_native_bfloat16

    names = ["plain", "grad-cache-4" if quick else "grad-cache-8", "gradient-checkpointing"]
    return names + (["bfloat16"] if cpu_has_native_bfloat16() else [])


def run_variant(name: str, args, work: Path) -> dict:
    out = work / name
    command = [sys.executable, "-m", "ragcun", "train", "--head", "gaussian", "--loss", "contrastive+isotropy",
               "--train-data", "beir:scifact:train", "--data-dir", str(DATA_DIR), "--output-dir", str(out),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "5e-5",
               "--save-every", "1000000", "--log-every", "1", "--no-progress", *variant_args(name)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "RAGCUN_DATA": str(DATA_DIR), "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    memory = next(r["memory"] for r in records if "memory" in r)
    steps = [r for r in records if "loss" in r]
    final = next(r["final"] for r in records if "final" in r)
    steady = [r["step_s"] for r in steps[1:]] or [steps[0]["step_s"]]
    return {"variant": name, "args": variant_args(name), "wall_s": wall, "memory": memory,
            "step_peaks_mb": [r["peak_rss_mb"] for r in steps], "peak_rss_mb": final["peak_rss_mb"],
            "steady_step_s": sum(steady) / len(steady), "losses": [r["loss"] for r in steps]}


def print_table(rows: list[dict], args) -> None:
    print(f"\nall-MiniLM-L6-v2 + gaussian head, contrastive+isotropy, SciFact train, batch {args.batch_size}, "
          f"{args.steps} steps per variant; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("host memory is the resident-set high-water mark (MiB) after each phase; +X is the rise in that phase\n")
    print("| variant | start | model | data | calibration | steps (peak) | steps' share | steady s/step | "
          "time vs plain | peak vs plain | last loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    plain = next((r for r in rows if r["variant"] == "plain"), rows[0])
    for r in rows:
        marks = [r["memory"][p]["peak_rss_mb"] for p in PHASES]
        cells = [f"{marks[0]:.0f}"] + [f"+{b - a:.0f}" for a, b in itertools.pairwise(marks)]
        before_steps = r["memory"]["calibration"]["rss_mb"]
        print(f"| {r['variant']} | {' | '.join(cells)} | {r['peak_rss_mb']:.0f} | "
              f"+{r['peak_rss_mb'] - before_steps:.0f} | {r['steady_step_s']:.2f} | "
              f"{r['steady_step_s'] / plain['steady_step_s']:.2f}x | {r['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x | "
              f"{r['losses'][-1]:.4f} |")
    print("\nsteps' share: the peak during the steps above the resident set just before them (model, optimizer "
          "state once created, one batch's activations)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 steps of batch 8 (checks the harness)")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant (default 4; --quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (the quickstart's); --quick 8")
    parser.add_argument("--variants", default=None,
                        help="comma list: plain, grad-cache-N, gradient-checkpointing, bfloat16, bfloat16-weights "
                             "(default: plain, grad-cache-8, gradient-checkpointing, and bfloat16 where the CPU "
                             "has it natively)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 4)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    if not (DATA_DIR / "scifact").is_dir():
        raise SystemExit(f"no SciFact folder in {DATA_DIR}: set RAGCUN_DATA to the BEIR data folder")
    names = args.variants.split(",") if args.variants else default_variants(args.quick)
    for name in names:
        variant_args(name)  # reject a typo before the first run
    rows = []
    with tempfile.TemporaryDirectory(prefix="ragcun-train-memory-") as tmp:
        for name in names:
            print(f"{name}: running", flush=True)
            rows.append(run_variant(name, args, Path(tmp)))
            print(f"{name}: peak {rows[-1]['peak_rss_mb']:.0f} MiB, {rows[-1]['steady_step_s']:.2f} s/step",
                  flush=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
