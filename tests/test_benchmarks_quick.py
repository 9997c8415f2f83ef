"""Every benchmark under benchmarks/ has a ``--quick`` mode (the same code path on tiny inputs, offline, well under
a minute) and it runs: so a benchmark cannot rot between the times someone runs it in full. The scripts are
found by glob, so a new ``bench_*.py`` without a quick mode fails here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("bench_*.py"))
# modules a benchmark needs from the `bench` extra (scripts/setup.sh installs it): sentence-transformers' fit
# (bench_train's baseline) runs transformers' Trainer, which needs accelerate
NEEDS = {"bench_train": ("accelerate",)}


def test_benchmarks_are_found():
    assert len(BENCHMARKS) >= 8, [p.name for p in BENCHMARKS]


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_every_benchmark_has_a_quick_mode(script):
    """The script's own argument parser offers --quick (asked with --help, which parses before any work)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script.relative_to(REPO)), "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (script.name, proc.stderr[-3000:])
    assert any(line.split(",")[0].strip().startswith("--quick") for line in proc.stdout.splitlines()), \
        f"{script.name} --help lists no --quick option:\n{proc.stdout}"


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_quick_mode_runs(script, data_dir):
    missing = [m for m in NEEDS.get(script.stem, ()) if importlib.util.find_spec(m) is None]
    if missing:
        assert not os.environ.get("CI"), f"{script.name} needs {', '.join(missing)}, which CI must install"
        pytest.skip(f"{script.name} needs {', '.join(missing)}: pip install -e '.[bench]'")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), "RAGCUN_DATA": str(data_dir),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script.relative_to(REPO)), "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    assert proc.stdout.strip(), f"{script.name} --quick printed nothing on stdout"
