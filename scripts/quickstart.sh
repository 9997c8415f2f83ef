#!/usr/bin/env bash
# The main job on the embedded defaults, end to end on a CPU (measured 2026-12-06: 220 s on 2 quiet cores with AMX,
# in bfloat16, .venv already set up; peak RSS 2.2 GB in training, 1.6 GB eval, 1.0 GB isotropy; SciFact NDCG@10 0.6722;
# measured 2026-12-07 on 2 AVX2-only cores of an AMD EPYC (load 0.7 at the start), in float32: 840 s, 394 s
# training, 302 s eval, 138 s isotropy, peak RSS 2.8 GB; NDCG@10 0.6724):
#   1. fine-tune all-MiniLM-L6-v2 + a gaussian head with contrastive+isotropy on SciFact's train qrels;
#   2. evaluate the result on SciFact's test split (BEIR metrics via pytrec_eval);
#   3. compare the isotropy of the base model and the fine-tuned one.
# Everything lands in runs/quickstart-DATE/. Set RAGCUN_DATA to your BEIR folder (default: ../shared/data/beir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAGCUN_DATA=${RAGCUN_DATA:-$(cd .. && pwd)/shared/data/beir}
export HF_HUB_OFFLINE=1
OUT=runs/quickstart-$(date +%Y%m%d-%H%M%S)   # a new folder each time: nothing is overwritten
# Before step 1, train calibrates the gaussian head from 256 training texts (MiniLM outputs unit vectors:
# x ~24 so SIGReg sees unit-scale coordinates; the temperature follows, so the initial ranking and logits are
# the same); benchmarks/ablation/ has the measured effect of the isotropy term.
# each phase prints its label, then its wall time and peak memory (scripts/phase.py)
# --gradient-checkpointing keeps one encoder layer's activations at a time: the same losses to the last digit, peak
# memory 4.9 GB -> 2.8 GB for 1.21x the training time (benchmarks/RESULTS.md, "Memory per phase")
# bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX): training 1.48x sentence-transformers' bf16 Trainer
# and evaluation 3.5-4x float32 there, at equal quality (benchmarks/RESULTS.md); elsewhere training's auto (float32 on a
# CPU that would emulate bfloat16, about 5x slower; bfloat16 on a GPU that has it) and float32 evaluation (eval beir's
# --dtype names its precisions outright and has no auto)
# (training autocasts to bfloat16 and keeps float32 weights; evaluation casts the whole model: one name for each)
NATIVE_BF16=$(python -c "from ragcun.precision import cpu_has_native_bfloat16 as n; print(int(n()))")
if [ "$NATIVE_BF16" = 1 ]; then TRAIN_DTYPE=bfloat16-autocast EVAL_DTYPE=bfloat16-weights; else TRAIN_DTYPE=auto EVAL_DTYPE=float32; fi
python scripts/phase.py "1/3 train" ragcun train --head gaussian --loss contrastive+isotropy \
  --train-data beir:scifact:train --output-dir "$OUT/model" --steps ${STEPS:-30} --batch-size 32 --lr 5e-5 --save-every 15 \
  --gradient-checkpointing --dtype "$TRAIN_DTYPE"
python scripts/phase.py "2/3 eval beir" ragcun eval beir --model "$OUT/model" --datasets scifact --split test \
  --dtype "$EVAL_DTYPE" --output "$OUT/eval.json"
python scripts/phase.py "3/3 isotropy report" ragcun isotropy report --model all-minilm-l6-v2 --model "$OUT/model" \
  --dataset scifact --sample 1000 --output-dir "$OUT/isotropy"
echo "done in $SECONDS s: $OUT/eval.json, $OUT/isotropy/report.html"
