"""ragcun eval beir vs the sentence-transformers + beir path, in one process, on the same data.

    python benchmarks/bench_eval_beir.py --dataset scifact              # the full SciFact test split
    python benchmarks/bench_eval_beir.py --dataset scifact --limit 500  # a quick run on 500 documents
    python benchmarks/bench_eval_beir.py --quick    # nq-utd cut to 200 documents, batch 32, no bf16w (CI)
    (contenders: st, f32, bf16 = --dtype bfloat16-autocast, bf16w = --dtype bfloat16-weights, the whole model)
    python benchmarks/bench_eval_beir.py --model all-mpnet-base-v2 --dataset scifact \
        --results-dir benchmarks/mpnet-parity/scifact      # plugins/ragcun-mpnet; resumable, one file per contender

Each contender retrieves the top 1000 for every test query with the same model (``--model``, a ragcun model
spec; default all-MiniLM-L6-v2, the copy packaged with ragcun: sentence-transformers loads the folder the ragcun
encoder reads), the same batch size and the same number of threads, and is scored with beir's
EvaluateRetrieval. With ``--results-dir`` each contender's row is written there as it finishes and a rerun
skips the contenders already there (an mpnet contender takes tens of minutes on a CPU). Reported: wall time
(encode queries + encode corpus + search + metrics; the model is loaded
beforehand and warmed up), documents per second (corpus size / wall time), peak memory, NDCG@10, and the
ratio to sentence-transformers.

Peak memory is the process's resident set size (RSS, from /proc/self/statm sampled every 5 ms by a thread):
the highest RSS during the run, and that peak minus the RSS just before the run ("+RSS"). ``resource``'s
high-water mark cannot separate runs inside one process and ``tracemalloc`` does not see torch's buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
K_VALUES = [1, 3, 5, 10, 100, 1000]


class RssSampler:
    """Peak resident set size (bytes) while the ``with`` block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        from ragcun.memory import resident_mib

        self.interval = interval
        self._resident_mib = resident_mib  # imported once, not on every 5 ms sample

    def rss(self) -> int:
        return int(self._resident_mib() * 2**20)

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def subset(folder: Path, limit: int, seed: int = 0) -> Path:
    """A BEIR folder with at most ``limit`` documents: every document judged for the test queries first
    (in qrels order), then random others, so the numbers stay meaningful on a small corpus."""
    from ragcun.data.beir import load_beir

    ds = load_beir(folder, "test")
    judged = list(dict.fromkeys(d for docs in ds.qrels.values() for d in docs if d in ds.corpus))
    rest = [d for d in ds.corpus if d not in set(judged)]
    random.Random(seed).shuffle(rest)
    keep = (judged + rest)[:limit]
    keep_set = set(keep)
    qrels = {q: {d: s for d, s in docs.items() if d in keep_set} for q, docs in ds.qrels.items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    out = Path(tempfile.mkdtemp(prefix=f"bench-{folder.name}-")) / folder.name
    (out / "qrels").mkdir(parents=True)
    with (out / "corpus.jsonl").open("w") as fh:
        for d in keep:
            fh.write(json.dumps({"_id": d, **ds.corpus[d]}) + "\n")
    with (out / "queries.jsonl").open("w") as fh:
        for q in qrels:
            fh.write(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n")
    with (out / "qrels" / "test.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, s in docs.items():
                fh.write(f"{q}\t{d}\t{s}\n")
    return out


def cpu_description() -> str:
    """Which kind of CPU a row ran on: rows from different sessions may come from different machines, and bfloat16
    is native on some (AVX512-BF16, AMX) and emulated, about 7x slower than float32, on others."""
    import torch

    from ragcun.precision import cpu_has_native_bfloat16

    native = "native bfloat16" if cpu_has_native_bfloat16() else "bfloat16 emulated"
    return f"{torch.backends.cpu.get_cpu_capability()}, {native}, {os.cpu_count()} cores"


def model_folder(spec: str) -> str:
    """The sentence-transformers folder ragcun's model ``spec`` encodes with (its encoder's ``path``)."""
    from ragcun.resolve import resolve_model

    path = getattr(resolve_model(spec).encoder, "path", None)
    if path is None:
        raise SystemExit(f"--model {spec}: its encoder has no model folder that sentence-transformers could load")
    return str(path)


def run_sentence_transformers(folder: Path, batch_size: int, st_folder: str) -> dict:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    model = SentenceBERT(st_folder, device="cpu")
    model.q_model.encode(["warm up"] * 4)
    with RssSampler() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        corpus, queries, qrels = GenericDataLoader(str(folder)).load("test")
        retriever = EvaluateRetrieval(DenseRetrievalExactSearch(model, batch_size=batch_size,
                                                                show_progress_bar=False),
                                      k_values=K_VALUES, score_function="cos_sim")
        results = retriever.retrieve(corpus, queries)
        scores = retriever.evaluate(qrels, results, K_VALUES)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics = {name: value for table in scores for name, value in table.items()}
    return {"wall_s": wall, "cpu_s": cpu, "docs": len(corpus), "ndcg10": metrics["NDCG@10"], "peak_rss": mem.peak,
            "delta_rss": mem.peak - mem.start, "metrics": metrics}


def run_ragcun(folder: Path, batch_size: int, dtype: str, spec: str) -> dict:
    from ragcun.encoding import encode
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.resolve import resolve_model

    model = resolve_model(spec)
    import torch

    encode(model, ["warm up"] * 4, autocast_dtype=torch.bfloat16 if dtype.startswith("bfloat16") else None)
    with RssSampler() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        report = evaluate_beir(model, str(folder), None, "test", batch_size=batch_size, dtype=dtype,
                               download=False, device="cpu", show_progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    name = next(iter(report["datasets"]))
    metrics = report["datasets"][name]
    return {"wall_s": wall, "cpu_s": cpu, "docs": report["counts"][name]["documents"], "ndcg10": metrics["NDCG@10"],
            "peak_rss": mem.peak, "delta_rss": mem.peak - mem.start, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-minilm-l6-v2",
                        help="ragcun model spec (encoder name, checkpoint, hf:PATH) whose folder both contenders load")
    parser.add_argument("--dataset", default="scifact", help="dataset name under --data-dir (default scifact)")
    parser.add_argument("--data-dir", default=os.environ.get("RAGCUN_DATA", str(REPO.parent / "shared/data/beir")))
    parser.add_argument("--limit", type=int, default=None, help="use at most this many documents")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip", default="", help="comma list of contenders to skip: st,f32,bf16,bf16w")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--results-dir", default=None,
                        help="write each contender's row here as it finishes; contenders already there are skipped")
    parser.add_argument("--quick", action="store_true",
                        help="--dataset nq-utd --limit 200 --batch-size 32 (and --skip bf16w unless --skip is given)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.limit, args.batch_size = "nq-utd", 200, 32
        # the whole-model bfloat16 adds nothing to the harness the autocast contender does not exercise (the
        # encoding path is bench_encode_peak's quick run's), and on a CPU without native
        # bfloat16 (emulated: ~5x slower than float32 here) it would double the quick run's time
        args.skip = args.skip or "bf16w"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.data_dir) / args.dataset
    if args.limit:
        folder = subset(folder, args.limit)
    skip = set(filter(None, args.skip.split(",")))
    st_folder = model_folder(args.model) if "st" not in skip else ""
    contenders = {
        "st": ("sentence-transformers + beir (float32)", lambda: run_sentence_transformers(folder, args.batch_size,
                                                                                          st_folder)),
        "f32": ("ragcun eval beir (float32)", lambda: run_ragcun(folder, args.batch_size, "float32", args.model)),
        "bf16": ("ragcun eval beir (bfloat16 autocast)",
                 lambda: run_ragcun(folder, args.batch_size, "bfloat16-autocast", args.model)),
        "bf16w": ("ragcun eval beir (bfloat16-weights, whole model)",
                  lambda: run_ragcun(folder, args.batch_size, "bfloat16-weights", args.model)),
    }
    results_dir = Path(args.results_dir) if args.results_dir else None
    rows = []
    for key, (label, run) in contenders.items():
        if key in skip:
            continue
        done = results_dir / f"{key}.json" if results_dir else None
        if done is not None and done.exists():
            print(f"{label}: already in {done}, skipped", flush=True)
            rows.append((label, json.loads(done.read_text())))
            continue
        print(f"{label}: running", flush=True)
        load_before = os.getloadavg()
        row = run()
        row.update(load_before=load_before, load_after=os.getloadavg(), model=args.model, dataset=args.dataset,
                   batch_size=args.batch_size, threads=torch.get_num_threads(), torch=torch.__version__,
                   cpu=cpu_description(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if done is not None:
            from ragcun.files import write_text_atomic

            results_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(done, json.dumps(row, indent=2) + "\n")
        print(f"{label}: {row['wall_s']:.1f} s, NDCG@10 {row['ndcg10']:.5f}", flush=True)
        rows.append((label, row))
    if not rows:
        raise SystemExit("every contender was skipped (--skip)")

    base, base_cpu = rows[0][1]["wall_s"], rows[0][1]["cpu_s"]
    print(f"model {args.model}, dataset {args.dataset} ({rows[0][1]['docs']} documents), batch size {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}")
    print(f"command: python {' '.join(sys.argv)}")
    header = (f"| {'contender':40} | wall s | CPU s | docs/s | peak RSS MiB | +RSS MiB | NDCG@10 | "
              f"speed (wall) | speed (CPU) |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for label, r in rows:
        print(f"| {label:40} | {r['wall_s']:6.1f} | {r['cpu_s']:5.0f} | {r['docs'] / r['wall_s']:6.1f} | "
              f"{r['peak_rss'] / 2**20:12.0f} | {r['delta_rss'] / 2**20:8.0f} | {r['ndcg10']:.5f} | "
              f"{base / r['wall_s']:11.2f}x | {base_cpu / r['cpu_s']:10.2f}x |")
    reference = dict(rows).get("sentence-transformers + beir (float32)")
    for label, r in rows:
        if reference is not None and r is not reference:
            shared = set(reference["metrics"]) & set(r["metrics"])
            worst = max(shared, key=lambda m: abs(r["metrics"][m] - reference["metrics"][m]))
            print(f"{label}: largest metric difference from sentence-transformers + beir over {len(shared)} metrics: "
                  f"{worst} {r['metrics'][worst] - reference['metrics'][worst]:+.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"contender": label, **r} for label, r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
