"""Distances between embeddings, shared by training (logits) and retrieval. One module per distance."""
