"""Helpers for testing ragcun and ragcun plugins: tiny offline models, 2-rank gloo runs, contract checks.

The fixtures in :mod:`ragcun.testing.fixtures` load automatically in any pytest run once ragcun is
installed (a ``pytest11`` entry point), so plugin authors get ``tiny_model``, ``data_dir`` etc. for free.
"""
