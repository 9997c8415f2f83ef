"""ragcun.memory: the resident set and its high-water mark that training logs per phase and per step."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ragcun.memory import peak_resident_mib, resident_mib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")
def test_a_touched_allocation_shows_in_the_resident_set_and_raises_the_mark():
    before, mark_before = resident_mib(), peak_resident_mib()
    assert 0 < before <= mark_before + 1
    block = np.ones(384 * 2**20 // 8)  # 384 MiB, every page written, so resident
    during = resident_mib()
    assert during - before > 300
    assert peak_resident_mib() >= during - 1  # the mark covers the present
    assert peak_resident_mib() >= mark_before  # and never falls
    del block
    assert peak_resident_mib() >= during - 1  # the mark remembers after the memory is given back
