#!/usr/bin/env bash
# ragcun GPU check: under 5 minutes on any CUDA machine.
#
#   1. environment: GPU, CUDA, bf16, NCCL;
#   2. ragcun preflight (NCCL process group + all-reduce, data, disk, 3 real steps, tiny eval);
#   3. one short bf16 training run under torchrun (NCCL) on one GPU: throughput and peak memory;
#   4. GradCache at batch 1024 (chunks of 128): peak memory against a plain batch of 128;
#   5. the CUDA paths of the losses (every registered loss, fp32 and bf16 autocast, finite values and grads);
#   6. the CUDA path of evaluation (ragcun eval beir on the trained model, bf16).
#   7. all-mpnet-base-v2 (plugins/ragcun-mpnet, the original design's base model): the three-run ablation
#      (`ragcun sweep`: baseline, +isotropy, frozen encoder; gaussian head, bf16, MPNET_STEPS steps each, a few
#      minutes more). Skipped, saying why, when the plugin or its weight packages are not installed; in the CPU
#      dry run it only checks that the encoder is registered (plugins/ragcun-mpnet/tests train it on a CPU).
#
# Usage:  bash benchmarks/gpu_check.sh [OUT_DIR]     (RAGCUN_DATA=/path/to/beir for real BEIR data)
# Without BEIR data it trains on a small MS MARCO-style JSONL and evaluates on a BEIR folder built from it.
#
# GPU_CHECK_ON_CPU=1 runs the same steps on a CPU with small sizes (gloo instead of NCCL, the small data set):
# it checks the script itself, so that the minutes a GPU is lent for are not spent on a typo
# (tests/test_gpu_check_script.py runs it that way). The dry run trains and evaluates in bfloat16 only where the CPU
# has it natively (AVX512-BF16/AMX), float32 elsewhere: emulated bf16 is about 7x slower and made this check take
# 11 minutes of CI on an AVX2 CPU. GPU_CHECK_DTYPE=bfloat16 forces it (the loss step always tries both).
set -euo pipefail
START=$(date +%s)
OUT=${1:-${OUT:-$(mktemp -d /tmp/ragcun-gpu-check.XXXX)}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export TOKENIZERS_PARALLELISM=false
step() { echo; echo "== $* ($(( $(date +%s) - START ))s)"; }
ON_CPU=${GPU_CHECK_ON_CPU:-0}
if [ "$ON_CPU" = 1 ]; then
  BATCH=8; STEPS=3; GC_PLAIN=8; GC_BATCH=32; GC_CHUNK=8; EVAL_BATCH=64; PREFLIGHT_BATCH=8; export CUDA_VISIBLE_DEVICES=""
  unset RAGCUN_DATA  # the small data set: a full BEIR corpus takes many minutes to encode on a CPU
  DTYPE=${GPU_CHECK_DTYPE:-$($PY -c "from ragcun.precision import cpu_has_native_bfloat16 as n; print('bfloat16' if n() else 'float32')")}
else
  BATCH=128; STEPS=40; GC_PLAIN=128; GC_BATCH=1024; GC_CHUNK=128; EVAL_BATCH=256; PREFLIGHT_BATCH=64
  MPNET_STEPS=${MPNET_STEPS:-30}; DTYPE=${GPU_CHECK_DTYPE:-bfloat16}
fi
export GPU_CHECK_ON_CPU=$ON_CPU

step "environment"
[ "$ON_CPU" = 1 ] || nvidia-smi -L || { echo "no NVIDIA GPU visible"; exit 1; }
$PY - <<'EOF'
import os, torch, torch.distributed as dist, transformers, ragcun
if os.environ["GPU_CHECK_ON_CPU"] == "1":
    print(f"ragcun {ragcun.__version__}  torch {torch.__version__}  transformers {transformers.__version__}  (CPU dry run)")
    raise SystemExit(0)
assert torch.cuda.is_available(), "torch does not see CUDA"
p = torch.cuda.get_device_properties(0)
print(f"ragcun {ragcun.__version__}  torch {torch.__version__}  CUDA {torch.version.cuda}  transformers {transformers.__version__}")
print(f"{torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
      f"NCCL {dist.is_nccl_available()} {torch.cuda.nccl.version() if dist.is_nccl_available() else ''}")
EOF

step "data"
DATA_DIR=${RAGCUN_DATA:-}
if [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR/scifact" ]; then
  TRAIN="beir:scifact:train"; EVAL_DS="scifact"; EVAL="beir:scifact:test"
else
  DATA_DIR="$OUT/data"
  $PY - "$DATA_DIR" <<'EOF'
# A small data set in both formats (MS MARCO-style JSONL for training, a BEIR folder for evaluation),
# from the real MS MARCO sample when it is beside the repository, else from templated text.
import json, pathlib, random, sys
root = pathlib.Path(sys.argv[1]); (root / "gpucheck" / "qrels").mkdir(parents=True, exist_ok=True)
sample = pathlib.Path("../shared/data/msmarco-train-sample/train.jsonl")
rows = [json.loads(l) for l in sample.read_text().splitlines()] if sample.is_file() else []
rng = random.Random(0)
topics = ["protein folding", "river erosion", "solar wind", "tax policy", "bird migration", "vaccine trials",
          "glacier melt", "neural networks", "coral reefs", "supply chains", "volcanic soil", "sleep cycles"]
pairs, corpus, queries, qrels = [], [], [], []
for i in range(2048):
    t = topics[i % len(topics)]
    if rows:
        r = rows[i % len(rows)]; q = f"{r['query']} ({t} {i})"; d = f"{t} {i}: {r['pos'][0]}"
    else:
        q = f"what is known about {t} case {i}"; d = f"case {i} of {t}: " + " ".join(rng.sample(topics, 6)) * 4
    pairs.append({"query": q, "pos": [d]})
    if i < 500:
        corpus.append({"_id": f"d{i}", "title": "", "text": d}); queries.append({"_id": f"q{i}", "text": q})
        qrels.append(f"q{i}\td{i}\t1")
(root / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
(root / "gpucheck" / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
(root / "gpucheck" / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
(root / "gpucheck" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
print(f"wrote {len(pairs)} training pairs and a 500-document BEIR folder to {root}")
EOF
  TRAIN="jsonl:$DATA_DIR/train.jsonl"; EVAL_DS="gpucheck"; EVAL="beir:gpucheck:test"
fi
echo "train: $TRAIN   eval: $EVAL   data dir: $DATA_DIR   dtype: $DTYPE"

step "preflight"
$PY -m ragcun preflight --train-data "$TRAIN" --eval-data "$EVAL" --data-dir "$DATA_DIR" \
  --output-dir "$OUT" --batch-size "$PREFLIGHT_BATCH" --steps 3 --dtype "$DTYPE"

step "$DTYPE training under torchrun (NCCL; gloo in the CPU dry run), 1 process"
$PY -m torch.distributed.run --standalone --nproc-per-node 1 -m ragcun train \
  --encoder all-minilm-l6-v2 --head gaussian --loss contrastive+isotropy --train-data "$TRAIN" \
  --data-dir "$DATA_DIR" --output-dir "$OUT/run-train" --batch-size "$BATCH" --steps "$STEPS" --lr 5e-5 --dtype "$DTYPE" \
  --save-every "$STEPS" --log-every 1 --no-progress
$PY - "$OUT/run-train" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
steps = [r for r in recs if "step_s" in r]
final = [r["final"] for r in recs if "final" in r][0]
steady = [r["step_s"] for r in steps[1:]]
print(f"training: losses {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}; "
      f"{final['pairs_per_s']:.0f} pairs/s overall; peak CUDA memory {final['peak_memory_mb'] or 0:.0f} MiB")
assert all(r["loss"] == r["loss"] for r in steps), "NaN loss"
EOF

step "GradCache: batch $GC_BATCH in chunks of $GC_CHUNK vs a plain batch of $GC_PLAIN (peak memory)"
for spec in "$GC_PLAIN:" "$GC_BATCH:$GC_CHUNK"; do
  bs=${spec%%:*}; chunk=${spec##*:}
  extra=(); [ -n "$chunk" ] && extra=(--grad-cache-chunk "$chunk")
  $PY -m ragcun train --encoder all-minilm-l6-v2 --head gaussian --loss contrastive+isotropy \
    --train-data "$TRAIN" --data-dir "$DATA_DIR" --output-dir "$OUT/run-gc-$bs" --batch-size "$bs" --steps 2 \
    --dtype "$DTYPE" --save-every 1000000 --log-every 1 --no-progress "${extra[@]}"
  $PY -c "import json,sys; r=[json.loads(l) for l in open('$OUT/run-gc-$bs/metrics.jsonl') if 'final' in l][0]['final']; print(f'batch $bs ${chunk:+(chunk $chunk)}: peak CUDA memory {r[\"peak_memory_mb\"] or 0:.0f} MiB, {r[\"pairs_per_s\"]:.0f} pairs/s')"
done

step "losses on CUDA (fp32 and bf16 autocast)"
$PY - <<'EOF'
import os, warnings, torch
from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs
from ragcun.losses.composite import build_loss
from ragcun.plugins import get_registry
# every registered loss; a wrapper is checked around contrastive; the distillation losses get 2 hard negatives per
# query and a teacher's scores (which they need), the others the same batch
warnings.filterwarnings("ignore", message=".*teacher")  # random teacher scores: the scale warning is expected
names = [e.name + (":contrastive" if e.name == "matryoshka" else "") for e in get_registry().entries("loss")]
dev = torch.device("cpu" if os.environ["GPU_CHECK_ON_CPU"] == "1" else "cuda")
for name in names:
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        q = torch.randn(64, 128, device=dev, requires_grad=True); p = torch.randn(64, 128, device=dev, requires_grad=True)
        n = torch.randn(128, 128, device=dev, requires_grad=True)
        lq = torch.zeros(64, 128, device=dev, requires_grad=True); lp = torch.zeros(64, 128, device=dev, requires_grad=True)
        ln = torch.zeros(128, 128, device=dev, requires_grad=True)
        teacher = torch.randn(64, 3, device=dev)
        loss = build_loss(name, dim=128).to(dev)  # the width, for matryoshka's default prefixes
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is torch.bfloat16):
            out = loss(LossInputs(Embedding(q, lq), Embedding(p, lp), Embedding(n, ln), step=1, teacher_scores=teacher))
        out.total.float().backward()
        ok = torch.isfinite(out.total).item() and all(torch.isfinite(t.grad).all().item() for t in (q, p, n) if t.grad is not None)
        print(f"{name:22s} {str(dtype).replace('torch.', ''):9s} loss {out.total.item():10.4f}  {'ok' if ok else 'NOT FINITE'}")
        assert ok
EOF

step "evaluation on CUDA ($DTYPE)"
$PY -m ragcun eval beir --model "$OUT/run-train" --datasets "$EVAL_DS" --data-dir "$DATA_DIR" \
  --dtype "$DTYPE" --batch-size "$EVAL_BATCH" --output "$OUT/eval.json"

step "all-mpnet-base-v2 (plugins/ragcun-mpnet): the three-run ablation, $DTYPE"
MPNET=skipped
if ! $PY -m ragcun list encoders all-mpnet-base-v2 --format json 2>/dev/null \
    | $PY -c "import json, sys; sys.exit(not any(e['provider'] == 'ragcun-mpnet' for e in json.load(sys.stdin)))"; then
  echo "SKIPPED: the encoder all-mpnet-base-v2 is not registered (pip install -e plugins/ragcun-mpnet and its weight"
  echo "packages: plugins/ragcun-mpnet/README.md)"
elif [ "$ON_CPU" = 1 ]; then
  echo "all-mpnet-base-v2 is registered (provider ragcun-mpnet); its training is skipped in the CPU dry run"
  MPNET="registered; not trained in the CPU dry run"
elif ! MPNET_DIR=$($PY -m ragcun_mpnet); then
  echo "SKIPPED: the all-mpnet-base-v2 folder could not be assembled (the error above names the package to install)"
else
  echo "model folder: $MPNET_DIR"
  $PY -m ragcun sweep --encoder all-mpnet-base-v2 --head gaussian --train-data "$TRAIN" --eval-data "$EVAL" \
    --data-dir "$DATA_DIR" --output-dir "$OUT/mpnet-sweep" --steps "$MPNET_STEPS" --batch-size "$BATCH" --lr 2e-5 \
    --dtype "$DTYPE" --save-every "$MPNET_STEPS" --eval-batch-size "$EVAL_BATCH" --parallel no
  MPNET="three-run ablation in $OUT/mpnet-sweep"
fi

step "done: everything passed in $(( $(date +%s) - START ))s (mpnet: $MPNET); outputs in $OUT"
