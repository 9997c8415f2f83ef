"""Search alone, at scale: ragcun's exact Euclidean top-k against beir's DenseRetrievalExactSearch loop and a
FAISS flat index, on the same synthetic embeddings (wall time, peak memory, growth with the corpus).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_search.py --docs 10000,100000,1000000 --dims 384,512 \\
        --queries 1000 --k 100 --repeats 3   # the full grid (the defaults); one method at 1M x 512 is ~1 TFLOP
                                             # and a worker holds ~5 GB (2 GB of data, FAISS's 2 GB index)
    python benchmarks/bench_search.py --docs 1000000 --dims 384 --methods ragcun --torchrun 2 --repeats 3
                                                    # ragcun's search in one process against 2 gloo ranks
    python benchmarks/bench_search.py --quick       # docs 2000,5000, dim 64, 50 queries, k 10, chunks of 2000, and
                                                    # the 2-rank run (CI)

Data: ``--queries`` queries and ``--docs`` documents of standard normal float32 vectors (seeded), searched under
``ragcun.components.build("distance", "euclidean")``. The three methods, each given the raw embeddings:

* ``ragcun``: ``ragcun.evaluation.search.search`` (exact float64 re-ranking), the documents handed over in chunks
  of ``--chunk`` (50000: ``ragcun eval beir``'s ``CORPUS_CHUNK_SIZE``); includes building its
  ``{query id: {doc id: score}}`` dict.
* ``beir``: beir's own ``DenseRetrievalExactSearch.search`` (score function ``dot``, ``corpus_chunk_size`` =
  ``--chunk``, beir's default 50000), given a stand-in model whose ``encode_queries`` / ``encode_corpus`` return the
  distance's inner-product vectors (``distance.query_vectors`` / ``document_vectors``) of the embeddings already
  made, so beir's real loop runs: one ``torch.mm`` + ``torch.topk`` per chunk, then its Python heap merge into the
  results dict (included in the time; nothing is subtracted).
* ``faiss``: ``faiss.IndexFlatIP`` over the same inner-product vectors (added chunk by chunk) + ``index.search``;
  returns arrays, no dict.
* ``ragcun-xN`` (with ``--torchrun N``): the same ``search`` with ``shard=True`` in ``N`` gloo ranks started by
  torchrun, each with ``T // N`` threads (at least 1), ``T`` the one-process runs' torch threads (the same cores,
  split into processes; with ``OMP_NUM_THREADS=1`` the N ranks use N cores against one):
  each rank searches every document for its ``1/N`` of the queries and the shares are all-gathered, so each rank
  ends with the whole result. Timed on rank 0 from a barrier after the data is built to the gathered result;
  its peak memory is rank 0's. The line after the table gives each rank's CPU time (the work split).

Each (method, size, repeat) runs in a fresh process (this script with the hidden ``--one METHOD``): it builds the
data, warms the method up on a slice, then times one search. Peak memory is the rise of the process's RSS
high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``, which cannot be reset) above the RSS just before the search;
"<=" marks a search that never passed the high-water mark the data building had left (an upper bound then).
Repeats are interleaved (ragcun, beir, faiss, ragcun, ...); the table gives the median time and the largest peak.
The top-k ids of ragcun and beir are checked against FAISS's (as sets; sets that differ must hold equally distant
documents, i.e. exchange ties, by float64 distances): the script exits 1 if they do not agree.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ragcun", "beir", "faiss")
SHARDED = "ragcun-sharded"  # shown as ragcun-xN
TIE_RTOL = 1e-5  # sorted float64 distances of two top-k sets within this relative tolerance: the same up to ties


def make_data(n_docs: int, dim: int, n_queries: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_queries, dim, generator=g), torch.randn(n_docs, dim, generator=g)


def chunks(x, size: int):
    return (x[s:s + size] for s in range(0, len(x), size))


# -- the three methods (each returns what its library returns; top_rows turns it into document rows) -----------
def run_ragcun(distance, q, d, k: int, chunk: int, qids, dids, shard: bool = False):
    from ragcun.embedding import Embedding
    from ragcun.evaluation.search import search

    return search(distance, Embedding(q), (Embedding(c) for c in chunks(d, chunk)), k, query_ids=qids, doc_ids=dids,
                  shard=shard)


def run_ragcun_sharded(distance, q, d, k: int, chunk: int, qids, dids):
    return run_ragcun(distance, q, d, k, chunk, qids, dids, shard=True)


def ragcun_inputs(n_queries: int, n_docs: int):
    return [f"q{i}" for i in range(n_queries)], [f"d{i}" for i in range(n_docs)]


class PrecomputedModel:
    """The model DenseRetrievalExactSearch calls: 'encodes' by returning the distance's inner-product vectors of
    the embeddings already made (every corpus entry carries its row, whatever order beir sorts them into)."""

    def __init__(self, distance, q, d) -> None:
        self.distance, self.q, self.d = distance, q, d

    def encode_queries(self, queries, batch_size=None, **kwargs):
        from ragcun.embedding import Embedding

        assert len(queries) == len(self.q)
        return self.distance.query_vectors(Embedding(self.q))

    def encode_corpus(self, corpus, batch_size=None, **kwargs):
        from ragcun.embedding import Embedding

        rows = [c["row"] for c in corpus]
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        docs = self.d[rows[0]:rows[0] + len(rows)] if contiguous else self.d[rows]
        return self.distance.document_vectors(Embedding(docs))


def beir_inputs(n_queries: int, n_docs: int):
    corpus = {f"d{i}": {"title": "", "text": "", "row": i} for i in range(n_docs)}
    queries = {f"q{i}": "" for i in range(n_queries)}
    return corpus, queries


def run_beir(distance, q, d, k: int, chunk: int, corpus, queries):
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    searcher = DenseRetrievalExactSearch(PrecomputedModel(distance, q, d), corpus_chunk_size=chunk,
                                         show_progress_bar=False)
    return searcher.search(corpus, queries, k, "dot")


def run_faiss(distance, q, d, k: int, chunk: int):
    import faiss

    from ragcun.embedding import Embedding

    index = faiss.IndexFlatIP(d.shape[1] + 1)  # euclidean inner-product vectors: [2d, -|d|^2], [q, 1]
    for c in chunks(d, chunk):
        index.add(distance.document_vectors(Embedding(c)).contiguous().numpy())
    return index.search(distance.query_vectors(Embedding(q)).contiguous().numpy(), k)


METHOD_RUNS = {"ragcun": (run_ragcun, ragcun_inputs), "beir": (run_beir, beir_inputs),
               "faiss": (run_faiss, lambda n_queries, n_docs: ()), SHARDED: (run_ragcun_sharded, ragcun_inputs)}


def top_rows(result) -> list[list[int]]:
    """The (Q, k) document rows of a results dict {"q0": {"d17": score, ...}} or of FAISS's (scores, ids)."""
    if isinstance(result, dict):
        return [[int(did[1:]) for did in result[f"q{i}"]] for i in range(len(result))]
    return result[1].tolist()


# -- one measurement, in its own process ------------------------------------------------------------------------
def measure_one(args) -> dict | None:
    """Time one search in this process (under torchrun: this rank's part; only rank 0 returns the row)."""
    from ragcun.components import build
    from ragcun.memory import peak_resident_mib, resident_mib

    sharded = args.one == SHARDED
    if sharded:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    distance = build("distance", "euclidean")
    q, d = make_data(args.docs, args.dim, args.queries)
    search, inputs = METHOD_RUNS[args.one]
    n = min(len(d), 1000)
    search(distance, q[:8], d[:n], min(args.k, n), args.chunk, *inputs(8, n))  # warm-up: imports, thread pools
    extra = inputs(len(q), len(d))  # the ids (and beir's corpus / queries dicts), built outside the timing
    gc.collect()
    if sharded:
        dist.barrier()  # every rank has its data: start together
    base, high_before = resident_mib(), peak_resident_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    result = search(distance, q, d, args.k, args.chunk, *extra)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    high = peak_resident_mib()
    row = {"wall_s": wall, "cpu_s": cpu, "peak_extra_mib": high - base, "upper_bound": high <= high_before}
    if sharded:
        import torch

        from ragcun.distributed import all_gather_rows

        cpus = all_gather_rows(torch.tensor([cpu], dtype=torch.float64), [1] * dist.get_world_size())
        row["rank_cpu_s"] = [float(c) for c in cpus]
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank:
            return None
    if args.ids_out:
        Path(args.ids_out).write_text(json.dumps(top_rows(result)))
    return row


def rank_threads(ranks: int) -> int:
    """Threads per rank of the sharded run: the one-process runs' threads, shared out (at least one each)."""
    import torch

    return max(1, torch.get_num_threads() // ranks)


def run_one(method: str, docs: int, dim: int, args, ids_out: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--one", method, "--docs", str(docs), "--dims", str(dim),
           "--queries", str(args.queries), "--k", str(args.k), "--chunk", str(args.chunk)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if method == SHARDED:  # torchrun's N ranks share the cores one process would use
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.torchrun)]
        env["OMP_NUM_THREADS"] = str(rank_threads(args.torchrun))
    if ids_out is not None:
        cmd += ["--ids-out", str(ids_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{method} on {docs} x {dim} failed:\n{proc.stderr[-4000:]}")
    return json.loads(next(line for line in reversed(proc.stdout.strip().splitlines()) if line.startswith("{")))


# -- agreement with FAISS -----------------------------------------------------------------------------------------
def agreement(q, d, ids: list[list[int]], reference: list[list[int]]) -> tuple[int, int, int]:
    """(same set, same up to ties, different) over the queries; ties judged on float64 direct distances."""
    same = ties = different = 0
    for i, (got, want) in enumerate(zip(ids, reference)):
        if set(got) == set(want):
            same += 1
            continue
        if len(got) != len(want):
            different += 1
            continue
        qi = q[i].double()
        dist = [((d[sorted(s)].double() - qi) ** 2).sum(1).sqrt().sort().values for s in (set(got), set(want))]
        close = len(dist[0]) == len(dist[1]) and bool(
            ((dist[0] - dist[1]).abs() <= TIE_RTOL * dist[1].abs().clamp_min(1e-12)).all())
        ties += close
        different += not close
    return same, ties, different


def fmt_mib(r: dict) -> str:
    return ("<=" if r["upper_bound"] else "") + f"{r['peak_extra_mib']:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default="10000,100000,1000000", help="comma list of corpus sizes")
    parser.add_argument("--dims", default="384,512", help="comma list of dimensions")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=50_000,
                        help="documents per chunk handed to ragcun's search and beir's corpus_chunk_size")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--torchrun", type=int, default=0, help="also run ragcun's search sharded over N gloo ranks")
    parser.add_argument("--quick", action="store_true",
                        help="docs 2000,5000, dim 64, 50 queries, k 10, one repeat, chunks of 2000, --torchrun 2")
    parser.add_argument("--one", choices=[*METHODS, SHARDED], help=argparse.SUPPRESS)
    parser.add_argument("--ids-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.dims, args.queries, args.k, args.repeats, args.chunk = "2000,5000", "64", 50, 10, 1, 2000
        args.torchrun = args.torchrun or 2  # CI keeps the sharded path working too

    if args.one:
        args.docs, args.dim = int(args.docs), int(args.dims)
        row = measure_one(args)
        if row is not None:
            print(json.dumps(row))
        return 0

    import faiss
    import torch

    methods = [m for m in args.methods.split(",") if m]
    if args.torchrun > 1:
        methods.append(SHARDED)
    label = {SHARDED: f"ragcun-x{args.torchrun}"}
    docs_list, dims = [int(x) for x in args.docs.split(",")], [int(x) for x in args.dims.split(",")]
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), {os.cpu_count()} CPUs; {args.queries} queries, top-{args.k}, "
          f"chunks of {args.chunk}, median of {args.repeats} (interleaved, one process each)"
          + (f"; ragcun-x{args.torchrun}: {args.torchrun} ranks x {rank_threads(args.torchrun)} threads"
             if args.torchrun > 1 else ""))
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-search-") as work:
        for dim in dims:
            for docs in docs_list:
                times = {m: [] for m in methods}
                for r in range(args.repeats):
                    for m in methods:
                        ids_out = Path(work) / f"{m}-{docs}-{dim}.json" if r == 0 else None
                        times[m].append(run_one(m, docs, dim, args, ids_out))
                for m in methods:
                    rows.append({"method": m, "docs": docs, "dim": dim,
                                 "wall_s": statistics.median(x["wall_s"] for x in times[m]),
                                 "peak": max(times[m], key=lambda x: x["peak_extra_mib"])})
                if "faiss" in methods:
                    q, d = make_data(docs, dim, args.queries)
                    reference = json.loads((Path(work) / f"faiss-{docs}-{dim}.json").read_text())
                    for m in (m for m in methods if m != "faiss"):
                        ids = json.loads((Path(work) / f"{m}-{docs}-{dim}.json").read_text())
                        same, ties, different = agreement(q, d, ids, reference)
                        failed |= different > 0
                        name = label.get(m, m)
                        print(f"{docs} x {dim}: {name} top-{args.k} vs faiss: same set {same}/{len(q)}, same up to "
                              f"ties {ties}, DIFFERENT {different}" if different else
                              f"{docs} x {dim}: {name} top-{args.k} vs faiss: same set {same}/{len(q)}, "
                              f"same up to ties {ties}")
                    del q, d

    by_key = {(r["method"], r["docs"], r["dim"]): r for r in rows}
    print("\n| method | docs | dim | wall s | peak extra MiB | x FAISS | growth (t / t at previous docs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        faiss_row = by_key.get(("faiss", r["docs"], r["dim"]))
        ratio = f"{r['wall_s'] / faiss_row['wall_s']:.2f}" if faiss_row else "-"
        i = docs_list.index(r["docs"])
        prev = by_key.get((r["method"], docs_list[i - 1], r["dim"])) if i else None
        growth = f"{r['wall_s'] / prev['wall_s']:.2f} (docs x{r['docs'] / prev['docs']:g})" if prev else "-"
        print(f"| {label.get(r['method'], r['method'])} | {r['docs']} | {r['dim']} | {r['wall_s']:.3f} | "
              f"{fmt_mib(r['peak'])} | {ratio} | {growth} |")
    print("\nragcun: search() incl. its result dict; beir: DenseRetrievalExactSearch.search incl. beir's heap merge "
          "into its results dict; faiss: IndexFlatIP add + search, arrays only. All three start from the raw "
          "embeddings (the euclidean inner-product vectors are made inside the timing).")
    for r in rows:
        if r["method"] == SHARDED:
            one = by_key.get(("ragcun", r["docs"], r["dim"]))
            vs = f"; {one['wall_s'] / r['wall_s']:.2f}x the one-process ragcun's speed" if one else ""
            print(f"{label[SHARDED]} at {r['docs']} x {r['dim']}: CPU s by rank "
                  f"{', '.join(f'{c:.2f}' for c in r['peak']['rank_cpu_s'])}{vs}")
    if failed:
        print("ERROR: a search disagrees with FAISS beyond ties", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
