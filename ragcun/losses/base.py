"""The loss contract shared by every loss, the composite, and the training loop.

A loss is an ``nn.Module`` called on :class:`LossInputs` that returns a scalar tensor. Losses that look
across the batch handle ``torch.distributed`` themselves (gathering candidates, all-reducing statistics), so
the training loop never needs to know which losses talk across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ragcun.embedding import Embedding


@dataclass
class LossInputs:
    """One (per-rank) batch of embeddings.

    ``negatives`` holds ``K`` hard negatives per query, grouped by query: rows ``i*K .. (i+1)*K - 1`` belong
    to query ``i``. Document ids, when given, let losses recognise the same document appearing twice.

    ``relevant_ids[i]``, when given, lists the ids of documents judged relevant to ``queries[i]`` (its own
    positive may be among them, in any order, of any length): a loss that scores queries against in-batch
    candidates must not use such a candidate as a negative of query ``i`` (label-aware in-batch negatives).
    The training data loader fills it from the training split's qrels (BEIR: every document with score >=
    ``qrels_threshold``; JSONL: the line's ``pos`` passages, lines with the same query text being one query),
    keeping only the ids that are candidates of the current global batch, so lists stay short. It comes after
    ``step`` so that positional calls of the older signature keep their meaning.

    ``teacher_scores``, when given, is a ``(B, 1 + K)`` tensor of a teacher's scores for each query's own
    candidates: column 0 its positive, columns ``1..K`` its hard negatives in the order of ``negatives``
    (rows ``i*K .. (i+1)*K - 1``). Larger means more relevant (a similarity; ragcun's own distances give
    ``-distance``). The training data loader fills it from JSONL lines with ``pos_scores`` / ``neg_scores``
    (what ``ragcun data score`` writes); distillation losses (``margin-mse``, ``distill-kl``) need it and fail
    with an error naming the data when it is missing. Other losses ignore it.
    """

    queries: Embedding  # (B, D)
    positives: Embedding  # (B, D); positives[i] is relevant to queries[i]
    negatives: Embedding | None = None  # (B*K, D)
    positive_ids: list[str] | None = None  # (B,)
    negative_ids: list[str] | None = None  # (B*K,)
    step: int = 0  # global optimizer step; seeds per-step randomness identically on every rank
    relevant_ids: list[list[str]] | None = None  # (B, ragged): documents judged relevant to each query
    teacher_scores: torch.Tensor | None = None  # (B, 1 + K): a teacher's [positive, negatives] scores per query

    @property
    def batch_size(self) -> int:
        return len(self.queries)

    @property
    def negatives_per_query(self) -> int:
        return 0 if self.negatives is None else len(self.negatives) // max(len(self.queries), 1)


@dataclass
class LossOutput:
    """What a composite loss returns: the total to backpropagate and each weighted term, for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Loss(nn.Module):
    """Base class: declare ``needs`` (embedding fields) and implement ``forward(inputs) -> scalar``."""

    needs: frozenset[str] = frozenset({"mean"})

    def forward(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        """``(n, why)``: the fewest queries one (global) micro-batch must hold for this loss to have anything to
        learn from, and why. 1 (the default): each query alone is enough. The training loop refuses a smaller
        ``--batch-size`` x processes before it loads any data (a batch of one would log loss 0 and learn nothing)."""
        return 1, ""

    def get_config(self) -> dict:
        return {}
