"""ragcun-mlp: an example ragcun plugin (an MLP head and a `ragcun params` command)."""

__version__ = "0.1.0"
