"""Which sentence-transformers similarity (``similarity_fn_name``) ranks like the model's distance.

sentence-transformers offers ``cosine``, ``dot``, ``euclidean`` (negative L2 distance) and ``manhattan``, each a
function of one vector per text:

* ``euclidean`` -> ``euclidean``: the same function.
* ``sqeuclidean`` -> ``euclidean``: ``||q - d||^2`` is an increasing function of ``||q - d||``, so every ranking
  and every retrieval metric is identical (only the score values differ: ST reports the root, not the square).
  ``dot`` would not rank alike on unnormalized vectors, and ST has no squared distance.
* ``cosine`` -> ``cosine``, ``dot`` -> ``dot``: the same functions.
* ``wasserstein``, ``expected-sqeuclidean``: refused. They read the head's log-variance, which no
  sentence-transformers similarity can see; ``--mean-only`` exports the means with ``euclidean`` and says
  what that drops (:func:`mean_only_loss`).

A plugin distance declares its match with a class attribute ``sentence_transformers_similarity = "euclidean"``
(it must rank exactly like that function); without one the export is refused.
"""

from __future__ import annotations

from typing import Any

ST_SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
ATTRIBUTE = "sentence_transformers_similarity"


def distance_name(distance: Any) -> str:
    from ragcun.components import component_name

    return component_name(distance)


def reads_logvar(distance: Any) -> bool:
    return "logvar" in set(getattr(distance, "needs", {"mean"}))


def mean_only_loss(distance: Any) -> str:
    """What a mean-only export of a log-variance distance gives up, in one sentence for the user and the card."""
    from ragcun.distances.expected_sqeuclidean import ExpectedSquaredEuclideanDistance
    from ragcun.distances.wasserstein import WassersteinDistance

    if isinstance(distance, WassersteinDistance):
        detail = ("W2^2 = ||mu_q - mu_d||^2 + ||sigma_q - sigma_d||^2 becomes ||mu_q - mu_d||^2: documents whose "
                  "spread differs from the query's are no longer pushed down")
    elif isinstance(distance, ExpectedSquaredEuclideanDistance):
        detail = ("E||x - y||^2 = ||mu_q - mu_d||^2 + sum sigma_q^2 + sum sigma_d^2 becomes ||mu_q - mu_d||^2: "
                  "the per-document uncertainty penalty sum sigma_d^2 is dropped")
    else:
        detail = "every term that reads the variances is dropped"
    return (f"mean-only export: the head's per-dimension log-variance is not exported and documents are ranked "
            f"by Euclidean distance between the mean vectors; the model's {distance_name(distance)} distance "
            f"{detail}. Rankings (and metrics) can differ from the ragcun model's")


def similarity_for(distance: Any, *, mean_only: bool = False) -> tuple[str, str | None]:
    """``(similarity_fn_name, what is lost or None)``; a ValueError naming the flag when there is no match."""
    from ragcun.distances.cosine import CosineDistance
    from ragcun.distances.dot import DotProductDistance
    from ragcun.distances.euclidean import EuclideanDistance
    from ragcun.distances.sqeuclidean import SquaredEuclideanDistance

    name = distance_name(distance)
    if reads_logvar(distance):
        if not mean_only:
            raise ValueError(f"distance {name!r} reads the head's log-variance, which sentence-transformers cannot "
                             "represent (its similarities see one vector per text: cosine, dot, euclidean, "
                             "manhattan). Pass --mean-only (mean_only=True) to export the mean vectors with "
                             "Euclidean similarity, which drops the variance terms, or keep using the model in "
                             "ragcun")
        return "euclidean", mean_only_loss(distance)
    declared = getattr(distance, ATTRIBUTE, None)
    if declared is not None:
        if declared not in ST_SIMILARITIES:
            raise ValueError(f"distance {name!r} declares {ATTRIBUTE}={declared!r}; sentence-transformers has "
                             f"{', '.join(ST_SIMILARITIES)}")
        return declared, None
    for cls, similarity in ((EuclideanDistance, "euclidean"), (SquaredEuclideanDistance, "euclidean"),
                            (CosineDistance, "cosine"), (DotProductDistance, "dot")):
        if isinstance(distance, cls):
            return similarity, None
    raise ValueError(f"distance {name!r} has no sentence-transformers similarity (cosine, dot, euclidean, "
                     f"manhattan); a plugin distance that ranks like one declares it with a class attribute "
                     f"{ATTRIBUTE} = 'euclidean'")
