#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), lint (ruff, configured in pyproject.toml) and run the whole test suite, slow tests
# included. Exits non-zero on any failure, a lint finding, and when pytest collected no test at all (its exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # tests never download
export RAGCUN_DATA=${RAGCUN_DATA:-$(cd .. && pwd)/shared/data/beir}
if ! python -m ruff check --quiet .; then
  echo "ruff found the problems above (python -m ruff check . --fix repairs the safe ones)" >&2
  exit 1
fi
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
