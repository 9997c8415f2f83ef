"""Forward+backward time of the ``isotropy`` (SIGReg) loss against ``contrastive`` (InfoNCE), on the CPU.

    python benchmarks/bench_losses.py                       # N in {64,256,1024,4096}, D in {384,768}, M in {256,1024}
    python benchmarks/bench_losses.py --quick               # a small grid, for a smoke run
    python benchmarks/bench_losses.py --threads 1 --output losses.json

For each (N, D, M): N queries and N positives of width D with ``requires_grad``; ``isotropy`` is timed with
``apply_to=queries`` (SIGReg over the N query embeddings, M directions, the default 17-point grid) and
``contrastive`` with the ``euclidean`` distance (N x N logits; it does not depend on M). Each timing is the
median of ``--repeats`` runs of forward + backward after one warm-up run.

Cost model. SIGReg costs O(N*D*M) for the projections (one (N, D) x (D, M) matmul, and the same again in the
backward pass) plus O(N*M*T) for the T-point cosines/sines and their gradients; drawing the M fresh
directions adds O(D*M) per step (it matters at small N). We fit ``t = a*N*D*M + b*N*M*T + e*D*M + c`` to the
isotropy timings (non-negative least squares on the relative error) and report the fit's relative
residuals: small residuals mean the times follow the model. InfoNCE costs O(N^2*D) for the pairwise
distances plus O(N^2) for the softmax over the N x N logits, fitted as ``t = a*N^2*D + b*N^2 + c``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T_POINTS = 17


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, first-call overheads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(ns, ds, ms, repeats: int) -> list[dict]:
    import torch

    from ragcun.components import build
    from ragcun.embedding import Embedding
    from ragcun.losses.base import LossInputs

    euclidean = build("distance", "euclidean")
    contrastive = build("loss", "contrastive", distance=euclidean)
    rows = []
    for d in ds:
        for n in ns:
            g = torch.Generator().manual_seed(0)
            q = torch.randn(n, d, generator=g).requires_grad_(True)
            p = (q.detach() + 0.5 * torch.randn(n, d, generator=g)).requires_grad_(True)
            inputs = LossInputs(Embedding(q), Embedding(p), step=1)

            def fwd_bwd(loss, q=q, p=p, inputs=inputs):
                def call():
                    q.grad = p.grad = None
                    loss(inputs).backward()
                return call

            t_con = _time(fwd_bwd(contrastive), repeats)
            for m in ms:
                iso = build("loss", "isotropy", {"loss": {"isotropy": {"num_slices": m, "apply_to": "queries"}}})
                t_iso = _time(fwd_bwd(iso), repeats)
                rows.append({"N": n, "D": d, "M": m, "isotropy_s": t_iso, "contrastive_s": t_con})
                print(f"N={n:5d} D={d:4d} M={m:5d}  isotropy {t_iso * 1e3:9.2f} ms   contrastive {t_con * 1e3:9.2f} ms",
                      file=sys.stderr, flush=True)
    return rows


def _nonnegative_lstsq(a, b):
    """min ||a x - b|| with x >= 0 (every cost term is a cost): drop negative terms and refit."""
    import torch

    active = list(range(a.shape[1]))
    while True:
        sol = torch.linalg.lstsq(a[:, active], b[:, None]).solution[:, 0]
        if (sol >= 0).all() or len(active) == 1:
            x = torch.zeros(a.shape[1], dtype=a.dtype)
            x[active] = sol.clamp_min(0)
            return x
        active.pop(int(sol.argmin()))


def fit(rows: list[dict]) -> dict:
    """Least-squares fits of the cost models; returns coefficients and the largest relative residuals."""
    import torch

    y = torch.tensor([r["isotropy_s"] for r in rows], dtype=torch.float64)
    x = torch.tensor([[r["N"] * r["D"] * r["M"], r["N"] * r["M"] * T_POINTS, r["D"] * r["M"], 1.0] for r in rows],
                     dtype=torch.float64)
    # relative least squares (divide each row by y): every configuration counts, not just the largest
    coef = _nonnegative_lstsq(x / y[:, None], torch.ones_like(y))
    pred = x @ coef
    con = {}
    for r in rows:
        con[(r["N"], r["D"])] = r["contrastive_s"]
    yc = torch.tensor(list(con.values()), dtype=torch.float64)
    xc = torch.tensor([[n * n * d, n * n, 1.0] for n, d in con], dtype=torch.float64)
    coef_c = _nonnegative_lstsq(xc / yc[:, None], torch.ones_like(yc))
    pred_c = xc @ coef_c
    for r, p_ in zip(rows, pred.tolist()):
        r["isotropy_model_s"] = p_
    return {
        "isotropy": {"ns_per_NDM": float(coef[0]) * 1e9, "ns_per_NMT": float(coef[1]) * 1e9,
                     "ns_per_DM": float(coef[2]) * 1e9, "overhead_ms": float(coef[3]) * 1e3,
                     "max_rel_residual": float(((pred - y) / y).abs().max()),
                     "median_rel_residual": float(((pred - y) / y).abs().median())},
        "contrastive": {"ns_per_N2D": float(coef_c[0]) * 1e9, "ns_per_N2": float(coef_c[1]) * 1e9,
                        "overhead_ms": float(coef_c[2]) * 1e3,
                        "max_rel_residual": float(((pred_c - yc) / yc).abs().max())},
    }


def table(rows: list[dict]) -> str:
    lines = ["| N | D | M | isotropy (ms) | model (ms) | contrastive (ms) | isotropy / contrastive |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['D']} | {r['M']} | {r['isotropy_s'] * 1e3:.2f} | "
                     f"{r['isotropy_model_s'] * 1e3:.2f} | {r['contrastive_s'] * 1e3:.2f} | "
                     f"{r['isotropy_s'] / r['contrastive_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small grid: N in {64,256}, D in {384,768}, M in {256,1024}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import torch

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.quick:
        ns, ds, ms = [64, 256], [384, 768], [256, 1024]
    else:
        ns, ds, ms = [64, 256, 1024, 4096], [384, 768], [256, 1024]
    rows = run(ns, ds, ms, args.repeats)
    fits = fit(rows)
    iso, con = fits["isotropy"], fits["contrastive"]
    print(table(rows), flush=True)
    print()
    print(f"isotropy cost model t = a*N*D*M + b*N*M*T + e*D*M + c (T={T_POINTS}): a = {iso['ns_per_NDM']:.4f} ns, "
          f"b = {iso['ns_per_NMT']:.4f} ns, e = {iso['ns_per_DM']:.3f} ns, c = {iso['overhead_ms']:.2f} ms; "
          f"relative residuals: median {iso['median_rel_residual']:.0%}, max {iso['max_rel_residual']:.0%}")
    for d in ds:
        matmul, trig = iso["ns_per_NDM"] * d, iso["ns_per_NMT"] * T_POINTS
        print(f"  per (sample, direction) at D={d}: projections {matmul:.0f} ns, cos/sin {trig:.0f} ns "
              f"({trig / max(matmul + trig, 1e-12):.0%} trigonometry)")
    print(f"contrastive cost model t = a*N^2*D + b*N^2 + c: a = {con['ns_per_N2D']:.4f} ns, "
          f"b = {con['ns_per_N2']:.2f} ns, c = {con['overhead_ms']:.2f} ms; "
          f"max relative residual {con['max_rel_residual']:.0%}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, median of {args.repeats} runs after a warm-up")
    if args.output:
        args.output.write_text(json.dumps({
            "command": "python benchmarks/bench_losses.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "repeats": args.repeats, "rows": rows, "fits": fits}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
