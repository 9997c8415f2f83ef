"""A ragcun run against its sentence-transformers export, on the same BEIR dataset: does the exported folder,
searched the way a sentence-transformers user would (beir's SentenceBERT + DenseRetrievalExactSearch, scored
with the folder's own ``similarity_fn_name``), give the metrics ``ragcun eval beir`` gives the run?

    ragcun train --train-data beir:scifact:train --steps 4 --batch-size 8 --output-dir /tmp/export-run --dtype bfloat16
    ragcun eval beir --model /tmp/export-run --datasets nq-utd --output /tmp/export-run/eval.json
    ragcun export /tmp/export-run /tmp/export-run-st
    python benchmarks/bench_export.py --run /tmp/export-run --export /tmp/export-run-st --dataset nq-utd
    python benchmarks/bench_export.py --quick   # makes a 2-step run of a tiny random BERT and its export in a
                                                # temp dir, then compares them on nq-utd (CI: keeps it working)

beir's exact search knows only ``cos_sim`` and ``dot``; for a ``euclidean`` folder the loaded model's own
``similarity`` (negative L2 distance, what ``similarity_fn_name`` selects) is registered as its score function,
so beir's search loop, top-k and metrics run unchanged. Prints one JSON object (both metric sets, the largest
difference) and a line with the two NDCG@10 values side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RAGCUN_DATA", REPO.parent / "shared" / "data" / "beir"))
K_VALUES = [1, 3, 5, 10, 100]
BEIR_SCORES = {"cosine": "cos_sim", "dot": "dot"}


def ragcun_metrics(run: str, dataset: str, data_dir: Path, batch_size: int) -> dict[str, float]:
    from ragcun.evaluation.beir_eval import evaluate_beir

    report = evaluate_beir(run, dataset, data_dir, k=max(K_VALUES), batch_size=batch_size, download=False,
                           device="cpu", show_progress=False)
    return report["datasets"][dataset]


def sentence_transformers_metrics(export: str, dataset: str, data_dir: Path, batch_size: int) -> dict[str, float]:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(data_dir / dataset)).load("test")
    model = SentenceBERT(export, device="cpu", local_files_only=True)
    similarity = model.q_model.similarity_fn_name
    search = DenseRetrievalExactSearch(model, batch_size=batch_size, show_progress_bar=False)
    score = BEIR_SCORES.get(similarity)
    if score is None:  # euclidean (or manhattan): the folder's own similarity inside beir's search
        score = similarity
        search.score_functions[score] = model.q_model.similarity
        search.score_function_desc[score] = f"sentence-transformers {similarity}"
    retriever = EvaluateRetrieval(search, k_values=K_VALUES, score_function=score)
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, precision = retriever.evaluate(qrels, results, K_VALUES)
    return {**ndcg, **_map, **recall, **precision, "similarity_fn_name": similarity}


def make_quick_run(work: Path, data_dir: Path) -> tuple[str, str]:
    """A 2-step ``ragcun train`` of a tiny random BERT (gaussian head, euclidean) on SciFact train pairs, and its
    sentence-transformers export: (run folder, export folder)."""
    import ragcun
    from ragcun.testing.tiny import make_tiny_bert
    from ragcun.training.config import TrainConfig

    tiny = make_tiny_bert(work / "tiny")
    config = TrainConfig(output_dir=str(work / "run"), train_data="beir:scifact:train", data_dir=str(data_dir),
                         encoder=f"hf:{tiny}", settings={"head": {"gaussian": {"out_dim": 16}}}, batch_size=4,
                         steps=2, warmup=0.0, save_every=2, log_every=1, dtype="float32", show_progress=False, seed=0)
    ragcun.train(config)
    ragcun.export(str(work / "run"), str(work / "run-st"))
    return str(work / "run"), str(work / "run-st")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="the ragcun checkpoint or run folder")
    parser.add_argument("--export", help="its `ragcun export` folder")
    parser.add_argument("--dataset", default="nq-utd")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="make a tiny 2-step run and its export in a temp dir")
    args = parser.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
            args.run, args.export = make_quick_run(Path(work), args.data_dir)
            return compare(args)
    if not (args.run and args.export):
        parser.error("--run and --export are required (or --quick)")
    return compare(args)


def compare(args) -> int:
    t0 = time.perf_counter()
    ours = ragcun_metrics(args.run, args.dataset, args.data_dir, args.batch_size)
    t1 = time.perf_counter()
    theirs = sentence_transformers_metrics(args.export, args.dataset, args.data_dir, args.batch_size)
    t2 = time.perf_counter()
    shared = [k for k in theirs if k in ours]
    out = {"dataset": args.dataset, "run": args.run, "export": args.export,
           "similarity_fn_name": theirs["similarity_fn_name"], "ragcun": {k: ours[k] for k in shared},
           "sentence_transformers_beir": {k: theirs[k] for k in shared},
           "max_abs_difference": max(abs(ours[k] - theirs[k]) for k in shared),
           "seconds": {"ragcun": round(t1 - t0, 1), "sentence_transformers_beir": round(t2 - t1, 1)}}
    print(json.dumps(out, indent=2))
    print(f"{args.dataset} NDCG@10: ragcun eval beir {ours['NDCG@10']:.5f} | sentence-transformers + beir on the "
          f"export {theirs['NDCG@10']:.5f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
