"""Heads: encoder vectors ``(B, H)`` -> :class:`ragcun.embedding.Embedding`. One module per head."""
