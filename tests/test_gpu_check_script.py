"""benchmarks/gpu_check.sh is meant for the few minutes a GPU is lent: its CPU dry run (same steps, small sizes,
gloo instead of NCCL) must pass here, so the script itself is known to work before it meets a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_ON_CPU": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "everything passed" in output
    for section in ("== preflight", "training under torchrun", "== GradCache", "== losses on CUDA", "== evaluation"):
        assert section in output, section
    assert "NOT FINITE" not in output
    from ragcun.precision import cpu_has_native_bfloat16
    # bf16 where this CPU has it natively, float32 where it would be emulated (about 7x slower)
    assert f"dtype: {'bfloat16' if cpu_has_native_bfloat16() else 'float32'}" in output
    assert (tmp_path / "out" / "eval.json").is_file()
    assert (tmp_path / "out" / "run-train" / "model.safetensors").is_file()
