"""Exact Euclidean top-k (issue 15, item 3): agreement with float64 brute force far from the origin, and the
search time, for ragcun's search now and (optionally) the search module of an earlier git revision side by side.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_search_exact.py --baseline-ref HEAD
    python benchmarks/bench_search_exact.py --quick          # small sizes (CI: keeps the benchmark from rotting)

Agreement: ``--agree-queries`` queries and ``--agree-docs`` documents drawn from N(offset, 1) per coordinate,
top-``--agree-k``; a query agrees when its top-k ids (as a set, and in order) equal a float64 brute force from
direct differences. Timing: ``--queries`` x ``--docs`` x ``--dim`` standard normal data (and the same offset by
``--offset``), top-k for each ``--k``, median of ``--repeats`` interleaved runs, one process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from pathlib import Path

import torch

from ragcun.components import build
from ragcun.embedding import Embedding
from ragcun.evaluation import search as current

ROOT = Path(__file__).resolve().parents[1]


def load_baseline(ref: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{ref}:ragcun/evaluation/search.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"search_at_{ref}")
    exec(compile(source, f"{ref}:ragcun/evaluation/search.py", "exec"), module.__dict__)
    return module


def brute_force(q: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:  # (Q, k) ids, float64, direct
    dist = torch.cdist(q.double(), d.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.topk(k, dim=1, largest=False).indices


def agreement(module, distance, q, d, k, kind="exact") -> tuple[int, int]:
    ids = [f"d{i}" for i in range(len(d))]
    qids = [f"q{i}" for i in range(len(q))]
    res = module.search(distance, Embedding(q), Embedding(d), k, query_ids=qids, doc_ids=ids, kind=kind)
    ref = brute_force(q, d, k)
    same_set = same_order = 0
    for i, qid in enumerate(qids):
        want = [ids[j] for j in ref[i].tolist()]
        got = [did for did, _ in sorted(res[qid].items(), key=lambda kv: (-kv[1], int(kv[0][1:])))]
        same_set += set(got) == set(want)
        same_order += got == want
    return same_set, same_order


def time_search(module, distance, q, d, k, kind="exact") -> float:
    ids = [f"d{i}" for i in range(len(d))]
    qids = [f"q{i}" for i in range(len(q))]
    t0 = time.perf_counter()
    module.search(distance, Embedding(q), Embedding(d), k, query_ids=qids, doc_ids=ids, kind=kind)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", default=None, help="git revision whose search.py to compare against")
    parser.add_argument("--agree-queries", type=int, default=150)
    parser.add_argument("--agree-docs", type=int, default=10_000)
    parser.add_argument("--agree-dim", type=int, default=384)
    parser.add_argument("--agree-k", type=int, default=100)
    parser.add_argument("--offset", type=float, default=20.0)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", default="100,1000")
    parser.add_argument("--kinds", default="exact")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.agree_queries, args.agree_docs, args.agree_dim = 30, 2000, 64
        args.queries, args.docs, args.dim, args.k, args.repeats = 50, 2000, 64, "10,100", 1
    versions = {"now": current}
    if args.baseline_ref:
        versions[f"at {args.baseline_ref}"] = load_baseline(args.baseline_ref)
    distance = build("distance", "euclidean")
    kinds = [s for s in args.kinds.split(",") if s]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    g = torch.Generator().manual_seed(0)
    q = torch.randn(args.agree_queries, args.agree_dim, generator=g) + args.offset
    d = torch.randn(args.agree_docs, args.agree_dim, generator=g) + args.offset
    print(f"\nagreement with float64 brute force: {args.agree_queries} queries, {args.agree_docs} docs x "
          f"{args.agree_dim}, N({args.offset:g}, 1), top-{args.agree_k}")
    for name, module in versions.items():
        for kind in kinds:
            same_set, same_order = agreement(module, distance, q, d, args.agree_k, kind)
            print(f"  {name:>12} {kind:>5}: same top-{args.agree_k} set {same_set}/{len(q)}, "
                  f"same order {same_order}/{len(q)}")

    g = torch.Generator().manual_seed(1)
    q = torch.randn(args.queries, args.dim, generator=g)
    d = torch.randn(args.docs, args.dim, generator=g)
    print(f"\nsearch time: {args.queries} queries x {args.docs} docs x {args.dim}, median of {args.repeats}")
    for offset in (0.0, args.offset):
        for k in (int(x) for x in args.k.split(",")):
            for kind in kinds:
                times = {name: [] for name in versions}
                for _name, module in versions.items():  # warm-up
                    time_search(module, distance, q[:8] + offset, d[:1000] + offset, min(k, 1000), kind)
                for _ in range(args.repeats):
                    for name, module in versions.items():
                        times[name].append(time_search(module, distance, q + offset, d + offset, k, kind))
                cells = ", ".join(f"{name} {statistics.median(t):.3f} s" for name, t in times.items())
                print(f"  offset {offset:g}, top-{k}, {kind}: {cells}")


if __name__ == "__main__":
    main()
