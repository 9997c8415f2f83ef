#!/usr/bin/env bash
# Set up a virtual environment in .venv with ragcun, its test tools and the example plugin.
# torch is installed first and pinned to the CPU wheel, so nothing pulls a multi-GB CUDA build.
# pip's chatter goes to .venv/setup.log; on a failure its tail is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
log=.venv/setup.log
: > "$log"
step() {
  echo "setup: $*" >&2
  if ! "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup failed at: $* (full log: $log)" >&2
    exit 1
  fi
}
step python -m pip install --upgrade pip
step python -m pip install "torch==2.13.0"
step python -m pip install -e ".[test,faiss]" -e plugins/ragcun-mlp
python -c "import torch, ragcun; print(f'ragcun {ragcun.__version__} with torch {torch.__version__} in .venv')"
