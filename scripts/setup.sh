#!/usr/bin/env bash
# Set up a virtual environment in .venv with ragcun, its test tools and the example plugin.
# torch is installed first and pinned to the CPU wheel, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,faiss]" -e plugins/ragcun-mlp
python -c "import torch, ragcun; print(f'ragcun {ragcun.__version__} with torch {torch.__version__} in .venv')"
