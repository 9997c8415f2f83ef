"""Retrieval evaluation: exact (chunked) and FAISS search, BEIR metrics, result files."""
