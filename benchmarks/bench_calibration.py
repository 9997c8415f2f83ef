"""What the gaussian head's calibration does at step 0 (issue 11): the SIGReg statistic and isotropy of a
SciFact corpus sample under the base encoder (unit vectors), an uncalibrated orthogonal head
(init_scale=1) and the calibrated head (init_scale="auto", calibrated on the first 256 training texts, as
`ragcun train` does), with the factor found. Rankings are unchanged by construction (tests/test_calibration.py).

    python benchmarks/bench_calibration.py --sample 2000
    python benchmarks/bench_calibration.py --quick     # 100 documents, 32 probe texts, float32 (CI: keeps it working)
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--train-data", default="beir:scifact:train")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--probe-texts", type=int, default=None, help="calibration texts (default: ragcun train's)")
    parser.add_argument("--quick", action="store_true", help="--sample 100 --probe-texts 32 --dtype float32, offline")
    args = parser.parse_args()
    if args.quick:
        args.sample, args.probe_texts, args.dtype = 100, 32, "float32"
        if args.data_dir is None and not os.environ.get("RAGCUN_DATA"):
            args.data_dir = str(REPO.parent / "shared" / "data" / "beir")

    import torch

    from ragcun.data.beir import document_text, find_dataset, load_corpus
    from ragcun.data.training import open_source
    from ragcun.diagnostics.report import population_metrics
    from ragcun.distributed import DistributedContext
    from ragcun.encoding import encode
    from ragcun.model import EmbeddingModel
    from ragcun.training.calibration import calibrate
    from ragcun.training.samples import CALIBRATION_TEXTS, first_texts

    corpus = load_corpus(find_dataset(args.dataset, args.data_dir, download=False))
    ids = sorted(corpus)
    random.Random(0).shuffle(ids)
    texts = [document_text(corpus[d]) for d in sorted(ids[:args.sample])]
    base = EmbeddingModel.build("all-minilm-l6-v2", "identity", "cosine")
    autocast = torch.bfloat16 if args.dtype == "bfloat16" else None
    features = encode(base, texts, 64, autocast_dtype=autocast).mean  # (n, 384) unit vectors

    torch.manual_seed(0)
    model = EmbeddingModel.build("all-minilm-l6-v2", "gaussian", "euclidean")
    model.encoder = base.encoder
    from ragcun.losses.composite import build_loss

    loss = build_loss("contrastive+isotropy", distance=model.distance)
    with torch.no_grad():
        uncalibrated = model.head(features).mean.clone()
    probes = first_texts(open_source(args.train_data, data_dir=args.data_dir), args.probe_texts or CALIBRATION_TEXTS,
                         queries=True)
    calibration = calibrate(model, loss, probes, DistributedContext())
    with torch.no_grad():
        calibrated = model.head(features).mean

    keys = ("sigreg_raw", "sigreg_gaussian_floor", "isoscore", "effective_rank_ratio", "norm_mean")
    rows = {}
    for name, x in (("base encoder (unit vectors)", features), ("gaussian head, init_scale=1", uncalibrated),
                    ("gaussian head, calibrated", calibrated)):
        metrics = {m.key: m.value for m in population_metrics(x.double(), seed=0, reference_draws=0)}
        rows[name] = {k: float(metrics[k]) for k in keys}
        rows[name]["mean_coordinate_std"] = float(x.double().std(0).mean())
    print(json.dumps({"n": len(texts), "dataset": args.dataset, "dtype": args.dtype,
                      "calibration": calibration.as_dict(), "rows": rows}, indent=1))
    print(f"\n| embeddings ({len(texts)} {args.dataset} documents) | mean coordinate std | SIGReg (floor) | IsoScore | "
          "erank/D | mean norm |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mean_coordinate_std']:.3f} | {r['sigreg_raw']:.1f} ({r['sigreg_gaussian_floor']:.2f}) | "
              f"{r['isoscore']:.3f} | {r['effective_rank_ratio']:.3f} | {r['norm_mean']:.2f} |")
    print(f"\ncalibration factor {calibration.factor:.3f}, temperature x {calibration.temperature_factor:.3f} "
          f"(from {calibration.probe_texts} texts of {args.train_data})")


if __name__ == "__main__":
    main()
