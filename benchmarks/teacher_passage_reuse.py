"""How often a passage recurs in what ``ragcun data score`` scores: the texts a bi-encoder teacher would encode
line by line against the distinct ones it encodes now (each once, ragcun/workflows/teacher_scores.py). Reads the
data and mines BM25 negatives (cached after the first time); encodes nothing.

    python benchmarks/teacher_passage_reuse.py [--train-data beir:squad:train --negatives 4 --sample 16000]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RAGCUN_DATA", "../shared/data/beir"))
    parser.add_argument("--train-data", default="beir:squad:train")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--mine-negatives", default="bm25")
    parser.add_argument("--sample", type=int, default=16000, help="as `ragcun data score --sample` (0: all lines)")
    parser.add_argument("--sample-seed", type=int, default=0)
    args = parser.parse_args()
    from ragcun.workflows.teacher_scores import ScoringInput

    data = ScoringInput(args.train_data, data_dir=args.data_dir, negatives=args.negatives,
                        mine_negatives=args.mine_negatives, sample=args.sample or None, sample_seed=args.sample_seed)
    queries, passages = [], []
    for _, item in data.items(lambda i: True):
        queries.append(item.query)
        passages += item.pos + item.neg
    print(f"{args.train_data}, {data.count} of {data.total} lines (sample seed {args.sample_seed}), "
          f"{args.negatives} negatives ({args.mine_negatives})")
    print(f"queries:  {len(queries):,} texts, {len(set(queries)):,} distinct")
    print(f"passages: {len(passages):,} texts, {len(set(passages)):,} distinct "
          f"(each encoded once: {len(passages) / max(1, len(set(passages))):.2f}x fewer passage encodings)")


if __name__ == "__main__":
    main()
