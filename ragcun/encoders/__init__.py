"""Encoders: texts -> pooled vectors ``(B, H)``. One module per encoder."""
