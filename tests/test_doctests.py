"""Every ``>>>`` example in the library runs, so the docstrings cannot rot."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ragcun"
MODULES = sorted(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
                 for p in ROOT.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8"))

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_library_has_examples_to_run():
    assert len(MODULES) >= 8, MODULES  # a broken glob would make the parametrized test vacuous


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    import torch

    torch.manual_seed(0)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no example ran (all skipped?)"
    assert result.failed == 0, (f"{name}: {result.failed} of {result.attempted} examples failed "
                                "(run python -m doctest -v)")
