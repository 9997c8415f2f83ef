"""The training texts that the checks around training embed: the first ``limit`` texts of epoch 0 of a training
source, the same on every rank (sources are deterministic), drawn in one place, with the sizes each check uses.

Documents only (the example's positives, duplicates kept) or, with ``queries=True``, each example's query then
its positive, alternating. A fitted head's sample size is ``ragcun.heads.fitted.FIT_SAMPLE`` (it is also the size
of the corpus sample evaluation fits on), drawn here as documents, duplicates then dropped.
"""

from __future__ import annotations

CALIBRATION_TEXTS = 256  # half queries, half documents: enough for a per-coordinate variance to 2-3%
DIAGNOSTIC_TEXTS = 256  # documents embedded for the periodic isotropy diagnostics
SCALE_PROBE_TEXTS = 32  # documents embedded once before training to check the embeddings' spread for SIGReg


def first_texts(source, limit: int, *, queries: bool = False) -> list[str]:
    """The first ``limit`` texts of epoch 0 of ``source``: its positives, or with ``queries`` each example's query
    and positive in turn (so an odd ``limit`` ends on a query)."""
    texts: list[str] = []
    if limit <= 0:
        return texts
    for example in source.examples(0):
        texts += [example.query, example.positive] if queries else [example.positive]
        if len(texts) >= limit:
            break
    return texts[:limit]
