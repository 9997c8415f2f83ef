"""Datasets: BEIR folders (:mod:`ragcun.data.beir`), training pairs and triples."""
