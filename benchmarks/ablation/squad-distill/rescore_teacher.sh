#!/usr/bin/env bash
# Write the squad-distill teacher file again, byte for byte, on a fresh machine: the committed runs record its
# SHA-256 (f1282e6b...), and the ablation runner refuses a file with any other, so the missing seeds cannot be run
# without it (it is not committed: it holds SQuAD's text, 64.4 MiB).
#
# Why not just run the scoring command: the teacher encodes each distinct passage once per process and reuses the
# vector (ragcun/workflows/teacher_scores.py), and in bfloat16 a vector depends slightly on the batch it was padded
# with. The original scoring stopped after 3,712 lines and resumed with an empty cache (PROVENANCE.md), so its bytes
# depend on that cut. This script makes the same cut: it scores from line 0 until at least CUT lines are written,
# stops the scorer (SIGTERM), keeps the first CUT lines, resumes to the end, and checks the SHA-256. Interrupted,
# it starts over where that gives the same bytes: piece 1 from line 0, piece 2 from the cut.
#
# Run it from a worktree at f497c0f, the code that wrote the original (the script runs the ragcun in the current
# folder, with PYTHON, a python that has ragcun's requirements):
#   git worktree add --detach /work/exp3 f497c0f && cd /work/exp3
#   PYTHON=/path/to/main/.venv/bin/python RAGCUN_DATA=/path/to/beir \
#       bash /path/to/main/benchmarks/ablation/squad-distill/rescore_teacher.sh
# The original was scored on 2 cores with AMX (about 56 min); bfloat16 is emulated elsewhere and its bytes are not
# expected to match there, so without native bfloat16 the script stops unless FORCE=1. A mismatch exits 1: the
# committed runs then cannot be continued, and every arm must be run again on the new file.
#
# The other variables (SAMPLE, CUT, TEACHER, DTYPE, BATCH_SIZE, OUTPUT, EXPECTED_SHA) exist to try the procedure on
# something small, e.g. SAMPLE=64 CUT=32 TEACHER=all-minilm-l6-v2 DTYPE=float32 OUTPUT=/tmp/t.jsonl EXPECTED_SHA=
# (empty: print the hash, check nothing).
set -euo pipefail

PYTHON=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # this folder's ragcun, not the one installed in PYTHON's venv
SAMPLE=${SAMPLE:-16000}
CUT=${CUT:-3712}
TEACHER=${TEACHER:-all-mpnet-base-v2}
DTYPE=${DTYPE:-bfloat16-autocast}
BATCH_SIZE=${BATCH_SIZE:-16}
OUTPUT=${OUTPUT:-runs/ablation/squad-distill/data/squad-train-mpnet.jsonl}
EXPECTED_SHA=${EXPECTED_SHA-f1282e6b07148d23b59cef5c800ba121a89dd9afb34b48925825873ff4385bc4}
PART="$OUTPUT.part-rank0.jsonl"   # ragcun.workflows.teacher_scores.part_path(OUTPUT, 0): one process, rank 0

SCORE=("$PYTHON" -m ragcun data score --teacher "$TEACHER" --train-data beir:squad:train --negatives 4
       --mine-negatives bm25 --sample "$SAMPLE" --dtype "$DTYPE" --batch-size "$BATCH_SIZE" --output "$OUTPUT")

lines() { if [ -f "$PART" ]; then wc -l < "$PART"; else echo 0; fi; }   # complete lines only: a cut one has no \n

keep_first_cut_lines() {
  head -n "$CUT" "$PART" > "$PART.cut"
  mv "$PART.cut" "$PART"
}

check_hash() {
  local got
  got=$(sha256sum "$OUTPUT" | cut -d' ' -f1)
  echo "SHA-256 of $OUTPUT: $got"
  if [ -n "$EXPECTED_SHA" ] && [ "$got" != "$EXPECTED_SHA" ]; then
    echo "error: expected $EXPECTED_SHA, the file the committed runs were trained on; they cannot be continued" \
         "with this one (run every arm again on it, and say so in PROVENANCE.md)" >&2
    exit 1
  fi
}

if [ -f "$OUTPUT" ]; then
  echo "$OUTPUT exists; checking it"
  check_hash
  exit 0
fi

if [ "${FORCE:-0}" != 1 ] && [[ "$DTYPE" == bfloat16* ]]; then
  native=$("$PYTHON" -c "from ragcun.precision import cpu_has_native_bfloat16 as n; print(int(n()))")
  if [ "$native" = 0 ]; then
    echo "error: this CPU has no native bfloat16 (no AMX or AVX512-BF16): scoring would be several times slower" \
         "than the original's 56 min and its bytes are not expected to match; FORCE=1 runs it anyway" >&2
    exit 2
  fi
fi

code=$("$PYTHON" -c 'import ragcun; print(ragcun.__file__)')
echo "scoring with $code at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
mkdir -p "$(dirname "$OUTPUT")"

if [ "$(lines)" -lt "$CUT" ]; then
  # piece 1 must run from line 0 in one process: a resume in between would empty the passage cache elsewhere
  rm -f "$PART"
  echo "piece 1: lines 0 to $CUT (at least), from $(date -u +%H:%M:%S) UTC"
  "${SCORE[@]}" &   # python itself in the background (not a subshell), so that SIGTERM reaches it
  scorer=$!
  trap 'kill -TERM "$scorer" 2>/dev/null || true' INT TERM
  while [ "$(lines)" -lt "$CUT" ]; do
    if ! kill -0 "$scorer" 2>/dev/null; then
      wait "$scorer" || true
      if [ -f "$OUTPUT" ]; then break; fi   # everything fitted before the cut (a small SAMPLE)
      echo "error: the scorer stopped before line $CUT; see its messages above" >&2
      exit 1
    fi
    sleep 2
  done
  kill -TERM "$scorer" 2>/dev/null || true
  wait "$scorer" || true
  trap - INT TERM
  if [ -f "$OUTPUT" ]; then
    echo "error: the scorer finished before it could be stopped at line $CUT; CUT must be well below SAMPLE" >&2
    exit 1
  fi
fi

# piece 2: from the cut, with an empty cache, as the original resumed; a piece 2 cut short is redone from the cut
keep_first_cut_lines
echo "piece 2: lines $CUT to $SAMPLE, from $(date -u +%H:%M:%S) UTC"
"${SCORE[@]}"
echo "done at $(date -u +%H:%M:%S) UTC"
check_hash
