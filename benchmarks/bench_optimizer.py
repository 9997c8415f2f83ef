"""Why ragcun's training step is not slower than sentence-transformers' even though both run the same BERT:
the optimizer step and the padding, measured on the packaged MiniLM and the pairs bench_train.py uses.

    python benchmarks/bench_optimizer.py              # about a minute
    python benchmarks/bench_optimizer.py --quick      # 2 steps each, 32 documents (CI: keeps it working)

1. AdamW over all-MiniLM-L6-v2's parameters, one step, one thread: torch's default on a CPU (the per-tensor
   loop, which ``SentenceTransformer.fit`` uses), ``foreach=True``, and ``fused=True`` (what ragcun uses).
2. How full the batches are: the share of the first NFCorpus train documents (bench_train.py's data) that fill
   max_seq_length 128 tokens, i.e. how much padding a length-aware batching could save.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RAGCUN_DATA", REPO.parent / "shared" / "data" / "beir"))


def optimizer_steps(repeats: int) -> dict[str, float]:
    import torch
    from transformers import AutoModel

    from ragcun.encoders.embedded import embedded_model_path

    params = list(AutoModel.from_pretrained(embedded_model_path()).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for label, options in (("default (per-tensor loop)", {}), ("foreach", {"foreach": True}),
                           ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-5, **options)
        optimizer.step()  # state allocation out of the timing
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        out[label] = 1000 * statistics.median(times)
    return out


def fill_fraction(n: int, max_len: int) -> dict[str, float]:
    from transformers import AutoTokenizer

    from ragcun.data.training import open_source
    from ragcun.encoders.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    source = open_source("beir:nfcorpus:train", data_dir=str(DATA_DIR), seed=0)
    docs, queries = [], []
    for i, example in enumerate(source.examples(0)):
        if i == n:
            break
        docs.append(example.positive)
        queries.append(example.query)
    doc_len = [min(max_len, len(ids)) for ids in tokenizer(docs)["input_ids"]]
    query_len = [min(max_len, len(ids)) for ids in tokenizer(queries)["input_ids"]]
    return {"documents": n, "share_filling_max_len": sum(x == max_len for x in doc_len) / n,
            "mean_document_tokens": statistics.mean(doc_len), "mean_query_tokens": statistics.mean(query_len)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--documents", type=int, default=320)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="--repeats 2 --documents 32")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.documents = 2, 32
    import torch

    torch.set_num_threads(1)
    steps = optimizer_steps(args.repeats)
    for label, ms in steps.items():
        print(f"AdamW step over MiniLM, {label}: {ms:.1f} ms (median of {args.repeats}, one thread)")
    fill = fill_fraction(args.documents, args.max_seq_length)
    print(f"{fill['share_filling_max_len']:.1%} of the first {fill['documents']} NFCorpus train documents fill "
          f"{args.max_seq_length} tokens (mean {fill['mean_document_tokens']:.1f}; queries "
          f"{fill['mean_query_tokens']:.1f})")
    json.dump({"optimizer_step_ms": steps, "padding": fill}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
