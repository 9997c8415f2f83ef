"""pytest fixtures for ragcun and plugin authors: ``tiny_model_dir``, ``tiny_model``, ``data_dir``,
``minilm_model`` and ``single_thread``.

They are opt-in (installing ragcun does not inject them into every pytest run). Enable them in one of
these ways:

* on the command line: ``pytest -p ragcun.testing.fixtures``;
* in a top-level ``conftest.py`` (one pytest loads at startup: in the rootdir, in a folder named on the
  command line or in ``testpaths``): ``pytest_plugins = ["ragcun.testing.fixtures"]``; ragcun's own
  ``tests/conftest.py`` does this;
* in any other ``conftest.py`` (pytest refuses ``pytest_plugins`` in a conftest it only finds while
  collecting, e.g. ``plugins/<name>/tests/conftest.py`` when pytest runs from the repository root):
  ``from ragcun.testing.fixtures import *  # noqa: F401,F403``, which brings the fixtures named in
  ``__all__``; ragcun's example plugins do this.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# what ``from ragcun.testing.fixtures import *`` brings into a conftest.py: the fixtures, nothing else
__all__ = ["data_dir", "tiny_model_dir", "tiny_model", "minilm_model", "single_thread"]


def beir_data_dir() -> Path | None:
    """``$RAGCUN_DATA``, else ``../shared/data/beir`` beside the repository, if it exists."""
    env = os.environ.get("RAGCUN_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "beir")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real BEIR datasets. Missing data fails in CI (CI=true) and skips elsewhere."""
    found = beir_data_dir()
    if found is None:
        message = "BEIR data not found: set RAGCUN_DATA or place ../shared/data/beir beside the repo"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) in sentence-transformers layout, with MiniLM's tokenizer."""
    from ragcun.testing.tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh EmbeddingModel: tiny encoder + gaussian head (16 dims) + euclidean distance."""
    from ragcun.model import EmbeddingModel

    return EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                {"head": {"gaussian": {"out_dim": 16}}})


@pytest.fixture(scope="session")
def minilm_model():
    """The real embedded all-MiniLM-L6-v2, as its authors use it (identity head, cosine)."""
    from ragcun.resolve import resolve_model

    return resolve_model("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op torch thread for the module: on tiny tensors extra OpenMP threads only wait (and on a
    busy machine they wait a lot). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
