"""The process's host memory: its resident set now and its high-water mark, in MiB.

Training logs both at each phase (model, data, calibration) and every step, so a run's metrics.jsonl says which
phase raised the peak (benchmarks/RESULTS.md, "Memory per phase"). The high-water mark is the kernel's
(``getrusage``), which sees every allocation however short-lived, where a sampler would miss the brief peaks of a
backward pass; it cannot be reset, so a phase's cost is the rise of the mark during it.
"""

from __future__ import annotations

import os
import sys

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["peak_resident_mib", "resident_mib"]


def peak_resident_mib() -> float | None:
    """The largest resident set this process has had so far (None where the platform does not say)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def resident_mib() -> float | None:
    """The resident set now (Linux, from /proc/self/statm; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
