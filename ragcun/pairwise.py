"""Embed texts and compare them pairwise (the library side of ``ragcun encode``)."""

from __future__ import annotations

from typing import Any

from ragcun.spec import Settings


def pairwise_report(texts: list[str], model_spec: str, *, distance: str | None = None,
                    settings: Settings | None = None) -> dict[str, Any]:
    """Distances (or similarities, for cosine/dot) between every pair of ``texts`` under the model's distance,
    computed exactly (``Distance.exact_similarity``, float64)."""
    from ragcun.components import check_settings, entry_of
    from ragcun.resolve import components_built_for, resolve_model

    if not texts:
        raise ValueError("give at least one text to encode")
    if settings:  # a setting the model would not use is an error, checked before anything loads
        check_settings(settings, components_built_for([model_spec], distance=distance)[0])
    model = resolve_model(model_spec, distance=distance, settings=settings)
    emb = model.encode_embeddings(texts)
    dist = model.distance
    # float64 from direct differences: an identical text is at distance exactly 0 (the float32 expansion
    # ||a||^2 + ||b||^2 - 2 a.b left ~5e-4 after the square root)
    from ragcun.distances.base import exact_similarity

    exact = exact_similarity(dist, emb, emb)
    matrix = (-exact if dist.is_metric else exact) + 0.0  # + 0.0 turns -0.0 into 0.0
    entry = entry_of(dist)
    return {"model": model_spec, "dim": int(emb.mean.shape[1]), "distance": entry.name if entry else repr(dist),
            "is_metric": bool(dist.is_metric), "texts": texts, "matrix": matrix.tolist()}
