"""Proxy for "a shorter training length keeps dev quality" (benchmarks/ablation/squad-zeroshot.toml): the base
encoder (all-MiniLM-L6-v2, cosine) on the plan's SQuAD dev set, documents read to 256 vs 128 tokens.

    python benchmarks/squad_length_proxy.py [--data-dir ../shared/data/beir]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RAGCUN_DATA", "../shared/data/beir"))
    parser.add_argument("--corpus-sample", type=int, default=5000, help="the plan's [dev] corpus_sample")
    args = parser.parse_args()
    from ragcun.ablation.data import dev_dataset
    from ragcun.ablation.scoring import encode_dataset, score
    from ragcun.model import EmbeddingModel

    dataset = dev_dataset(os.path.join(args.data_dir, "squad"), args.corpus_sample, split="dev")
    model = EmbeddingModel.build("all-minilm-l6-v2", "identity", "cosine")
    model.eval()
    for length in (256, 128):
        model.encoder.max_seq_length = length
        start = time.perf_counter()
        encoded = encode_dataset(model, dataset, batch_size=64, dtype="bfloat16")
        metrics = score(model.distance, encoded, dataset, k=100, k_values=[10, 100], isotropy_sample=500)["metrics"]
        print(f"documents read to {length} tokens: NDCG@10 {metrics['NDCG@10']:.4f}  R@100 {metrics['Recall@100']:.4f}"
              f"  ({len(dataset.queries)} queries, {len(dataset.corpus)} paragraphs, "
              f"{time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
