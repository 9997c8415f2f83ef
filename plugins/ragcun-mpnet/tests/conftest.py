# ragcun's shared test fixtures (tiny_model_dir, tiny_model, data_dir, single_thread, ...) are opt-in. pytest refuses
# `pytest_plugins` in a conftest it finds while collecting (as here when it runs from ragcun's root), so import them.
import pytest

pytest.register_assert_rewrite("ragcun.testing.fixtures")  # as pytest_plugins would (and no warning if both)
from ragcun.testing.fixtures import *  # noqa: E402,F401,F403
