"""ragcun-mpnet: the encoder ``all-mpnet-base-v2``, assembled on first use from its five PyPI parts.

Import-light (no torch): ``ragcun --help`` imports the plugin module, never the encoder.
"""

__version__ = "0.1.0"
