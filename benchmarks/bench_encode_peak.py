"""Corpus encoding against the machine's matmul limit (issue #15, goal 1): how close ``ragcun eval beir`` gets.

    python benchmarks/bench_encode_peak.py --dataset nfcorpus          # float32, bfloat16-autocast, bfloat16
    python benchmarks/bench_encode_peak.py --dataset scifact --variants bfloat16 --profile
    python benchmarks/bench_encode_peak.py --quick                     # nq-utd, 200 documents (CI)

The limit is computed, not assumed:

1. **Work.** Every document is tokenized as the encoder will see it (``title + " " + text``, truncated at the
   model's ``max_seq_length``). A transformer layer costs ``2 * (4 H^2 + 2 H I)`` FLOPs per real token in its
   projections and feed-forward (Q, K, V, output; up, down) and ``4 L^2 H`` per text of L tokens in attention
   (Q K^T and the weighted sum of V). Padding is not counted: it is waste, not work.
2. **Speed.** A probe times the encoder's own matrix products in each precision on this machine, with torch's
   threads: ``(M, H) x (H, H)``, ``(M, H) x (H, I)``, ``(M, I) x (I, H)`` at M = 4096 token rows, and the attention
   product ``(B*heads, L, d) x (d, L)`` at L = 256; the best of several repeats, each writing into a buffer
   allocated once (a fresh 50 MiB result costs more in page faults than the product itself on these VMs).
3. **Limit** = projection FLOPs / projection speed + attention FLOPs / attention speed: the time the corpus
   would take if the encoder did nothing but its matrix products, at the probe's speed, without padding.
4. **Limit with the non-linearities**: the matmul limit plus the exponentials of the attention softmax (heads x
   L^2 per text and layer) and the feed-forward GELU (tokens x I per layer) at the speed the probe measures
   for ``torch.softmax`` and ``F.gelu`` on blocks of the encoder's shapes. On a CPU with AMX a matrix product
   is so fast that these element-wise passes cost more than the products around them (a softmax element costs
   one exponential against 4 d FLOPs of products, d = 32 for MiniLM), so this is the limit worth comparing with.

Each variant then encodes the corpus through ``ragcun.evaluate_beir`` (the command's own path: length-sorted
batches, the model's search, beir's metrics), and the table gives its corpus-encoding time, the fraction of the
limit it reaches (limit / time), and NDCG@10 beside float32's. ``--profile`` adds where the time goes in a sample
of batches (torch.profiler, operators grouped), the tokenizer's share and the padding the batches carry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("float32", "bfloat16-autocast", "bfloat16")  # ragcun eval beir --dtype names
PROBE_ROWS = 4096
PROBE_SEQ = 256


# -- the work -------------------------------------------------------------------------------------------------
def shape_of(model) -> dict[str, int]:
    config = model.encoder.model.config
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "intermediate": config.intermediate_size, "heads": config.num_attention_heads}


def token_counts(model, texts: list[str]) -> list[int]:
    """Tokens per text as the encoder sees them (special tokens included, truncated at max_seq_length)."""
    encoder = model.encoder
    ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_seq_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [len(x) for x in ids]


def work(shape: dict[str, int], counts: list[int]) -> dict[str, float]:
    """FLOPs of the corpus: projections + feed-forward (per token) and attention (per text, quadratic)."""
    h, i, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    tokens = sum(counts)
    return {"tokens": tokens,
            "projection_flop": layers * tokens * 2 * (4 * h * h + 2 * h * i),
            "attention_flop": layers * sum(4 * n * n * h for n in counts),
            "softmax_elements": layers * shape["heads"] * sum(n * n for n in counts),
            "gelu_elements": layers * tokens * i}


# -- the speed ------------------------------------------------------------------------------------------------
def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernel for the shape
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def probe(shape: dict[str, int], dtype, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the encoder's matrix products in ``dtype`` on this machine (torch's thread count)."""
    import torch

    h, i, heads = shape["hidden"], shape["intermediate"], shape["heads"]
    gen = torch.Generator().manual_seed(0)
    flop = seconds = 0.0
    with torch.inference_mode():
        for k, n in ((h, h), (h, i), (i, h)):  # Q/K/V/output, FFN up, FFN down
            x = torch.randn(PROBE_ROWS, k, generator=gen).to(dtype)
            w = torch.randn(n, k, generator=gen).to(dtype)
            b = torch.randn(n, generator=gen).to(dtype)
            out = torch.empty(PROBE_ROWS, n, dtype=dtype)
            weight = 4 if (k, n) == (h, h) else 1  # four H x H products per layer, one of each FFN product
            flop += weight * 2 * PROBE_ROWS * k * n
            seconds += weight * best_seconds(lambda x=x, w=w, b=b, out=out: torch.addmm(b, x, w.t(), out=out),
                                             repeats)
        batch = max(1, PROBE_ROWS // PROBE_SEQ) * heads
        q = torch.randn(batch, PROBE_SEQ, h // heads, generator=gen).to(dtype)
        kt = torch.randn(batch, h // heads, PROBE_SEQ, generator=gen).to(dtype)
        scores = torch.empty(batch, PROBE_SEQ, PROBE_SEQ, dtype=dtype)
        attention_s = best_seconds(lambda: torch.bmm(q, kt, out=scores), repeats)
        probs = torch.empty_like(scores)
        softmax_s = best_seconds(lambda: torch.ops.aten._softmax.out(scores, -1, False, out=probs), repeats)
        hidden = torch.randn(PROBE_ROWS, i, generator=gen).to(dtype)
        activated = torch.empty_like(hidden)
        gelu_s = best_seconds(lambda: torch.ops.aten.gelu.out(hidden, out=activated), repeats)
    attention_flop = 2 * batch * PROBE_SEQ * PROBE_SEQ * (h // heads)
    return {"projection_gflops": flop / seconds / 1e9, "attention_gflops": attention_flop / attention_s / 1e9,
            "softmax_gelems": scores.numel() / softmax_s / 1e9, "gelu_gelems": hidden.numel() / gelu_s / 1e9}


def limit_seconds(load: dict[str, float], speed: dict[str, float], *, nonlinear: bool = False) -> float:
    """The matmul limit; with ``nonlinear``, plus the softmax and GELU passes at the probe's speed."""
    seconds = (load["projection_flop"] / (speed["projection_gflops"] * 1e9)
               + load["attention_flop"] / (speed["attention_gflops"] * 1e9))
    if nonlinear:
        seconds += (load["softmax_elements"] / (speed["softmax_gelems"] * 1e9)
                    + load["gelu_elements"] / (speed["gelu_gelems"] * 1e9))
    return seconds


# -- where the time goes --------------------------------------------------------------------------------------
CATEGORIES = (  # first match wins; names as torch.profiler reports CPU operators
    ("matmul (projections)", ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "mkldnn")),
    ("attention", ("scaled_dot_product", "aten::bmm", "aten::baddbmm", "flash_attention", "softmax")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone")),
    ("embeddings", ("embedding",)),
)


def padding_fraction(counts: list[int], batch_size: int) -> float:
    """Share of the encoded token slots that are padding, with the batches ``ragcun.encoding.encode`` forms
    (longest first, ``batch_size`` per batch, each padded to its longest text)."""
    lengths = sorted(counts, reverse=True)
    slots = sum(lengths[s] * len(lengths[s:s + batch_size]) for s in range(0, len(lengths), batch_size))
    return 1 - sum(lengths) / slots


def profile(model, texts: list[str], batch_size: int, dtype: str, batches: int = 6) -> dict[str, float]:
    """Self CPU time per operator group over ``batches`` batches spread through the length-sorted corpus, plus
    the tokenizer's time for the same batches (seconds)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ragcun.encoding import autocast_context, length_order
    from ragcun.evaluation.beir_eval import _inference_copy
    from ragcun.evaluation.pipeline import autocast_dtype, precision

    order = length_order(model, texts)
    starts = range(0, len(texts), batch_size)
    picked = [starts[j] for j in sorted({round(x * (len(starts) - 1) / max(1, batches - 1))
                                       for x in range(batches)})]
    groups = [[texts[i] for i in order[s:s + batch_size]] for s in picked]
    fast = _inference_copy(model, dtype)
    fast.eval()
    t0 = time.perf_counter()
    features = [fast.tokenize(g) for g in groups]
    tokenize_s = time.perf_counter() - t0
    with torch.inference_mode(), autocast_context(fast.device, autocast_dtype(precision(dtype, "eval"))):
        fast(features[0])  # warm-up outside the profile
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for f in features:
                fast(f)
    times: dict[str, float] = {"tokenizer": tokenize_s}
    for event in prof.key_averages():
        name = event.key
        group = next((label for label, keys in CATEGORIES if any(k in name for k in keys)), "other")
        times[group] = times.get(group, 0.0) + event.self_cpu_time_total / 1e6
    return times


# -- the run --------------------------------------------------------------------------------------------------
def encode_corpus(model, folder: Path, dtype: str, batch_size: int) -> dict:
    """``ragcun.evaluate_beir`` on one folder; the corpus-encoding time and NDCG@10."""
    from ragcun.evaluation.beir_eval import evaluate_beir

    report = evaluate_beir(model, str(folder), None, "test", batch_size=batch_size, dtype=dtype, download=False,
                           device="cpu", show_progress=False)
    name = next(iter(report["datasets"]))
    return {"encode_corpus_s": report["timings"][name]["encode_corpus_s"],
            "ndcg10": report["datasets"][name]["NDCG@10"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-minilm-l6-v2", help="ragcun model spec with an hf encoder")
    parser.add_argument("--dataset", default="nfcorpus")
    parser.add_argument("--data-dir", default=os.environ.get("RAGCUN_DATA", str(REPO.parent / "shared/data/beir")))
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--profile", action="store_true", help="also: where each variant's time goes")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="nq-utd, 200 documents, batch 32 (checks the harness)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.limit, args.batch_size = "nq-utd", 200, 32
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")

    import torch
    from bench_eval_beir import (  # the script's folder is on sys.path
        cpu_description,
        subset,
    )

    from ragcun.data.beir import load_corpus
    from ragcun.model import corpus_texts
    from ragcun.resolve import resolve_model

    folder = Path(args.data_dir) / args.dataset
    if not folder.is_dir():
        raise SystemExit(f"no dataset folder {folder}: set RAGCUN_DATA or --data-dir")
    if args.limit:
        folder = subset(folder, args.limit)
    model = resolve_model(args.model)
    texts = corpus_texts(list(load_corpus(folder).values()))
    shape = shape_of(model)
    counts = token_counts(model, texts)
    load = work(shape, counts)
    print(f"{args.model} ({shape['layers']} layers, H {shape['hidden']}, I {shape['intermediate']}), {args.dataset}: "
          f"{len(texts)} documents, {load['tokens']:,} tokens at max_seq_length {model.encoder.max_seq_length}, "
          f"{(load['projection_flop'] + load['attention_flop']) / 1e12:.2f} TFLOP "
          f"(attention {load['attention_flop'] / (load['projection_flop'] + load['attention_flop']):.0%}); "
          f"padding in batches of {args.batch_size}: {padding_fraction(counts, args.batch_size):.1%}",
          flush=True)
    print(f"cpu: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load before {os.getloadavg()[0]:.2f}", flush=True)

    rows = []
    speeds: dict[str, dict[str, float]] = {}
    for variant in variants:
        dtype = torch.float32 if variant == "float32" else torch.bfloat16
        key = str(dtype)
        if key not in speeds:
            speeds[key] = probe(shape, dtype)
            print(f"probe {key}: projections {speeds[key]['projection_gflops']:.0f} GFLOP/s, attention "
                  f"{speeds[key]['attention_gflops']:.0f} GFLOP/s, softmax {speeds[key]['softmax_gelems']:.2f} "
                  f"G elements/s, GELU {speeds[key]['gelu_gelems']:.2f} G elements/s", flush=True)
        limit = limit_seconds(load, speeds[key])
        nonlinear = limit_seconds(load, speeds[key], nonlinear=True)
        print(f"{variant}: encoding (matmul limit {limit:.1f} s, with softmax and GELU {nonlinear:.1f} s)", flush=True)
        row = {"variant": variant, "limit_s": limit, "nonlinear_limit_s": nonlinear, **speeds[key],
               **encode_corpus(model, folder, variant, args.batch_size)}
        row["fraction_of_limit"] = limit / row["encode_corpus_s"]
        row["fraction_of_nonlinear_limit"] = nonlinear / row["encode_corpus_s"]
        if args.profile:
            row["profile_s"] = profile(model, texts, args.batch_size, variant)
        rows.append(row)
        print(f"{variant}: {row['encode_corpus_s']:.1f} s, {row['fraction_of_limit']:.0%} of the matmul limit, "
              f"{row['fraction_of_nonlinear_limit']:.0%} with softmax and GELU, NDCG@10 {row['ndcg10']:.5f}",
              flush=True)

    print(f"\ncommand: python {' '.join(sys.argv)}; load after {os.getloadavg()[0]:.2f}\n")
    print("| variant | probe GFLOP/s (proj / attn) | matmul limit s | + softmax, GELU s | encode corpus s | "
          "fraction of matmul limit | of limit with softmax, GELU | NDCG@10 | vs float32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    reference = next((r for r in rows if r["variant"] == "float32"), None)
    for r in rows:
        delta = f"{r['ndcg10'] - reference['ndcg10']:+.5f}" if reference else "-"
        print(f"| {r['variant']} | {r['projection_gflops']:.0f} / {r['attention_gflops']:.0f} | {r['limit_s']:.1f} | "
              f"{r['nonlinear_limit_s']:.1f} | {r['encode_corpus_s']:.1f} | {r['fraction_of_limit']:.0%} | "
              f"{r['fraction_of_nonlinear_limit']:.0%} | {r['ndcg10']:.5f} | {delta} |")
    for r in rows:
        if "profile_s" in r:
            total = sum(r["profile_s"].values())
            parts = sorted(r["profile_s"].items(), key=lambda kv: -kv[1])
            print(f"\n{r['variant']}, where the time goes in a sample of batches: "
                  + ", ".join(f"{k} {v / total:.0%}" for k, v in parts))
    if args.json:
        Path(args.json).write_text(json.dumps({"work": load, "shape": shape, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
