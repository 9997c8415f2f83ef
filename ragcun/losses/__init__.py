"""Training losses, one module each. All are computed from embeddings (never from the model)."""
