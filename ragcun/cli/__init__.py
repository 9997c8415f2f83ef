"""The ``ragcun`` command line: one module per command group, each a thin shell over library functions."""

from ragcun.cli.root import cli, main

__all__ = ["cli", "main"]
