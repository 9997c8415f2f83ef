"""Helpers for testing ragcun and ragcun plugins: tiny offline models, 2-rank gloo runs, contract checks.

Plugin authors: ``pytest -p ragcun.testing.fixtures`` (or ``pytest_plugins = ["ragcun.testing.fixtures"]``
in a conftest) gives the fixtures below.
"""
