"""The three commands from Python: train a gaussian head with contrastive + isotropy, evaluate on BEIR, and
compare the isotropy of the base and the trained embeddings.

    python examples/train_then_evaluate.py --data-dir ../shared/data/beir --output-dir runs/example
    python examples/train_then_evaluate.py --steps 40 --train-data beir:nfcorpus:train --dataset nfcorpus

Each step is a library call that the CLI wraps (``ragcun train`` -> ``ragcun.train``,
``ragcun eval beir`` -> ``ragcun.evaluation.beir_eval.evaluate_beir``, ``ragcun isotropy report`` ->
``ragcun.diagnostics.report``), so a notebook gets the same results as the shell. The defaults (10 steps on
SciFact train, then the 300-query SciFact test split) take a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import ragcun
from ragcun.data.beir import find_dataset, load_corpus
from ragcun.diagnostics.report import embedding_diagnostics
from ragcun.evaluation.beir_eval import evaluate_beir
from ragcun.model import corpus_texts
from ragcun.resolve import resolve_model
from ragcun.training.config import TrainConfig
from ragcun import train  # the loop with the periodic evaluation the config asks for

SHOWN = ("sigreg_raw", "effective_rank_ratio", "average_cosine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("RAGCUN_DATA", "../shared/data/beir"))
    parser.add_argument("--encoder", default="all-minilm-l6-v2")
    parser.add_argument("--train-data", default="beir:scifact:train")
    parser.add_argument("--dataset", default="scifact", help="the BEIR dataset evaluated (test split)")
    parser.add_argument("--output-dir", default="runs/example")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=500, help="documents embedded for the isotropy numbers")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="KIND.NAME.PARAM=VALUE, as on the command line (e.g. head.gaussian.out_dim=256)")
    args = parser.parse_args()

    from ragcun.spec import settings_from_options

    settings = {kind: value for kind, value in settings_from_options(args.settings).items() if value}
    # 1. train: every setting lands in OUTPUT_DIR/train_config.json; OUTPUT_DIR ends up a loadable model
    config = TrainConfig(output_dir=args.output_dir, train_data=args.train_data, data_dir=args.data_dir,
                         encoder=args.encoder, head="gaussian", distance="euclidean", loss="contrastive+isotropy",
                         settings=settings, steps=args.steps, batch_size=args.batch_size, lr=5e-5,
                         show_progress=True)
    result = train(config, resume=(Path(args.output_dir) / "checkpoints").is_dir())
    print(f"trained {result.step} steps; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
          if result.losses else f"already trained ({result.step} steps)")

    # 2. evaluate the trained model and the base encoder with beir's own metrics
    report = {}
    base = resolve_model(args.encoder)  # a base encoder the way its authors evaluate it (cosine)
    trained = ragcun.load(args.output_dir)
    for name, model in (("base", base), ("trained", trained)):
        out = evaluate_beir(model, args.dataset, args.data_dir, "test", batch_size=64)
        report[name] = {"NDCG@10": out["datasets"][args.dataset]["NDCG@10"]}

    # 3. isotropy of the two models' document embeddings on the same sample
    corpus = load_corpus(find_dataset(args.dataset, args.data_dir, download=False))
    texts = corpus_texts([corpus[i] for i in sorted(corpus)[:args.sample]])
    for name, model in (("base", base), ("trained", trained)):
        diagnostics = embedding_diagnostics(model.encode_embeddings(texts, batch_size=64).mean)
        report[name].update({key: diagnostics[key] for key in SHOWN})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
