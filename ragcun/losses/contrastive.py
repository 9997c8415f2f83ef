"""InfoNCE: each query against its positive, every other positive in the (global) batch and the hard negatives.

References: van den Oord et al. 2018 (arXiv 1807.03748, "InfoNCE"); Henderson et al. 2017 and
sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch negatives); Karpukhin et al. 2020 (DPR,
hard negatives).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn
from torch.nn import functional as F

from ragcun.distributed import all_gather_sizes, gather_with_grad, is_distributed, world
from ragcun.embedding import Embedding
from ragcun.losses._common import check_positive, full_precision, rank_share, upcast
from ragcun.losses.base import Loss, LossInputs

_NO_ID = -1  # hashed ids are >= 0; a missing id never matches anything


def _hash_values(ids) -> list[int]:
    """Stable 63-bit hashes of document ids (Python's ``hash`` differs between processes); None -> ``_NO_ID``."""
    return [_NO_ID if i is None else
            int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1 for i in ids]


def _hash_ids(ids: list[str] | None, n: int, device) -> torch.Tensor:  # (n,) int64
    """Hashed document ids as a tensor (all ``_NO_ID`` when ids are not given)."""
    if ids is None:
        return torch.full((n,), _NO_ID, dtype=torch.long, device=device)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} document ids for {n} documents")
    return torch.tensor(_hash_values(ids), dtype=torch.long, device=device)


def _hash_relevant(relevant: list[list[str]] | None, n: int, device) -> torch.Tensor | None:  # (n, R) int64
    """``relevant[i]`` hashed like the document ids, rows padded with the sentinel ``_NO_ID`` to the longest."""
    if relevant is None:
        return None
    if len(relevant) != n:
        raise ValueError(f"got relevant ids for {len(relevant)} queries, expected {n}")
    width = max((len(r) for r in relevant), default=0)
    rows = [_hash_values(r) + [_NO_ID] * (width - len(r)) for r in relevant]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(n, width)


def _contains(sets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:  # (N, M) bool
    """``values[n, m]`` is one of the ids in ``sets[n]`` (``sets`` (N, R), ``values`` (N, M), sentinel-padded);
    ``_NO_ID`` matches nothing. Exact, in O(N M log R) time and O(N M) memory (sorted rows, binary search)."""
    known = values != _NO_ID
    if sets.shape[1] == 1:  # the common case (no relevance lists): a plain comparison
        return (values == sets) & known
    ordered = sets.sort(dim=1).values
    where = torch.searchsorted(ordered, values.contiguous()).clamp_(max=ordered.shape[1] - 1)
    return (ordered.gather(1, where) == values) & known


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] >= width:
        return t
    return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), _NO_ID)], dim=1)


def _upcast_embedding(e: Embedding) -> Embedding:
    return Embedding(upcast(e.mean), None if e.logvar is None else upcast(e.logvar))


def _gather_embedding(e: Embedding, sizes: list[int]) -> Embedding:
    return Embedding(gather_with_grad(e.mean, sizes),
                     None if e.logvar is None else gather_with_grad(e.logvar, sizes))


class ContrastiveLoss(Loss):
    """InfoNCE over in-batch and hard negatives, with logits from any registered distance.

    Inputs (:class:`~ragcun.losses.base.LossInputs`): ``queries`` (B, D), ``positives`` (B, D), optional
    ``negatives`` (B*K, D) grouped by query, optional ``positive_ids`` (B,) / ``negative_ids`` (B*K,).

    For query ``i`` the candidates are all positives and all hard negatives of the batch (of *every* rank
    under torch.distributed); logits are ``similarity(q_i, c_j) / temperature`` with ``similarity`` the
    distance's (``-distance`` for metrics, so ``euclidean`` gives ``-||q - c|| / tau``), and the loss is
    the cross-entropy toward ``q_i``'s positive, averaged over queries. With ``symmetric=True`` the mean of
    that and the document-to-query direction (each positive against all queries) is returned.

    Duplicates and label-aware negatives (``mask_duplicates``, default true): when ids are given, a candidate
    with the same document id as query ``i``'s positive (the same document mined twice, or shared by two
    queries) is masked out of ``q_i``'s negatives (its logit -inf; never the label column), and so is every
    candidate whose id is in ``relevant_ids[i]`` (the documents judged relevant to query ``i``: another pair of
    the same query in the batch, or a hard negative that another query's qrels call relevant). The row's
    relevance set is ``{positive_ids[i]} | relevant_ids[i]``, hashed to int64 and sentinel-padded to (B, R);
    membership of the candidate ids is decided exactly by a sorted binary search. Without ``relevant_ids``
    the set is the positive's id alone: the behaviour before relevance lists existed, bit for bit. With
    ``symmetric=True`` the document-to-query direction masks query ``k`` out of positive ``j``'s negatives
    when document ``j`` is in query ``k``'s set.

    Distributed: candidates (and their ids) of all ranks are gathered *with gradient* in rank order, each
    rank block being ``[positives_r; negatives_r]``; the label of local query ``i`` is ``i`` plus the
    number of candidates of the ranks before, computed from that layout. A query's relevance set is tested
    against the gathered candidate ids, so relevant documents on another rank are masked too; with
    ``symmetric=True`` the (B, R) sets themselves are gathered (padded to the widest rank's R; ids carry no
    gradient), as the query-side ids are. Each rank returns
    ``world_size * (sum of its per-query losses) / global query count``, so the rank average (DDP's
    gradient average) is the single-process loss on the concatenated batch, even for unequal rank batches.

    Settings: ``temperature`` (default 0.05); ``learnable_temperature`` (learn ``log(1/tau)``, clamped to
    ``1/tau <= max_scale``, as in CLIP); ``symmetric``; ``mask_duplicates`` (default true). A learnable
    temperature is a parameter of this module, not of the model: the training loop must hand
    ``loss.parameters()`` to its optimizer and, under DDP, average their gradients over ranks itself.

    Example::

        >>> from ragcun.distances.euclidean import EuclideanDistance
        >>> loss = ContrastiveLoss(EuclideanDistance(), temperature=0.1)
        >>> q, p = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss(LossInputs(Embedding(q), Embedding(p))).shape
        torch.Size([])
    """

    def __init__(self, distance=None, temperature: float = 0.05, learnable_temperature: bool = False,
                 symmetric: bool = False, mask_duplicates: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        if distance is None:  # the training loop injects the model's; alone, the default ragcun distance
            from ragcun.distances.euclidean import EuclideanDistance

            distance = EuclideanDistance()
        if not hasattr(distance, "similarity"):
            raise ValueError(f"loss.contrastive: distance must be a Distance, got {distance!r}")
        self.distance = distance
        self.needs = frozenset({"mean"}) | frozenset(getattr(distance, "needs", {"mean"}))
        self.temperature = check_positive("temperature", temperature, "contrastive")
        self.max_scale = check_positive("max_scale", max_scale, "contrastive")
        if 1.0 / self.temperature > self.max_scale:
            raise ValueError(f"loss.contrastive.temperature={temperature} is below 1/max_scale={1 / self.max_scale}")
        self.learnable_temperature = bool(learnable_temperature)
        self.symmetric = bool(symmetric)
        self.mask_duplicates = bool(mask_duplicates)
        # log(1/tau): learning the log keeps tau positive; a buffer when fixed so it follows .to(device), and
        # persistent, so a checkpoint keeps a temperature that training start-up rescaled (rescale_temperature)
        log_scale = torch.tensor(math.log(1.0 / self.temperature))
        if self.learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @torch.no_grad()
    def rescale_temperature(self, factor: float) -> None:
        """Multiply the temperature by ``factor`` (> 0): what keeps the logits unchanged when the embeddings
        are scaled by ``c`` and the distance is homogeneous of degree ``k`` (``factor = c**k``)."""
        factor = check_positive("temperature factor", factor, "contrastive")
        self.temperature *= factor
        self.log_scale.sub_(math.log(factor))

    @property
    def scale(self) -> torch.Tensor:  # 1 / tau
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        # Logits in float32 at least, autocast off: distances of unnormalized vectors come from the expansion
        # ||q||^2 + ||d||^2 - 2 q.d, which bfloat16 (8-bit mantissa) would swamp with round-off.
        with full_precision(inputs.queries.mean.device):
            return self._forward(inputs)

    def _forward(self, inputs: LossInputs) -> torch.Tensor:
        q, pos = _upcast_embedding(inputs.queries), _upcast_embedding(inputs.positives)
        neg = None if inputs.negatives is None else _upcast_embedding(inputs.negatives)
        b = len(q)
        if len(pos) != b:
            raise ValueError(f"contrastive: {b} queries but {len(pos)} positives")
        if neg is not None and len(neg) % max(b, 1):
            raise ValueError(f"contrastive: {len(neg)} hard negatives is not a multiple of {b} queries")
        local_cands = pos if neg is None else Embedding.cat([pos, neg])  # (B + B*K, D), positives first
        device = q.mean.device
        cand_ids = _hash_ids(inputs.positive_ids, b, device)  # (B,)
        if neg is not None:
            cand_ids = torch.cat([cand_ids, _hash_ids(inputs.negative_ids, len(neg), device)])  # (B + B*K,)
        pos_ids = cand_ids[:b]  # (B,)
        relevant = _hash_relevant(inputs.relevant_ids, b, device)  # (B, R) or None
        # each query's relevance set: its positive's id, then the documents judged relevant to it
        row_sets = pos_ids[:, None] if relevant is None else torch.cat([pos_ids[:, None], relevant], dim=1)

        rank, _ = world()
        if is_distributed():
            cand_sizes = all_gather_sizes(len(local_cands), device=device)
            query_sizes = all_gather_sizes(b, device=device)
            cands = _gather_embedding(local_cands, cand_sizes)  # (C, D), rank blocks [pos_r; neg_r]
            all_cand_ids = gather_with_grad(cand_ids, cand_sizes)  # ids carry no gradient; same layout
            cand_offset = sum(cand_sizes[:rank])
            query_offset = sum(query_sizes[:rank])
        else:
            cands, all_cand_ids, cand_offset, query_offset = local_cands, cand_ids, 0, 0
        labels = cand_offset + torch.arange(b, device=device)  # (B,) column of each query's own positive

        scale = self.scale.to(dtype=q.mean.dtype)
        logits = self.distance.similarity(q, cands) * scale  # (B, C)
        if self.mask_duplicates:
            logits = self._mask(logits, _contains(row_sets, all_cand_ids.expand(b, -1)), labels)
        losses = F.cross_entropy(logits, labels, reduction="none")  # (B,)

        if self.symmetric:
            # document -> query: each local positive against all queries of all ranks
            if is_distributed():
                queries = _gather_embedding(q, query_sizes)  # (Q, D)
                if self.mask_duplicates:  # every rank takes part in both collectives (same decision everywhere)
                    width = max(all_gather_sizes(row_sets.shape[1], device=device))
                    all_row_sets = gather_with_grad(_pad_columns(row_sets, width), query_sizes)  # (Q, R)
            else:
                queries, all_row_sets = q, row_sets
            q_labels = query_offset + torch.arange(b, device=device)  # (B,)
            d2q = self.distance.similarity(pos, queries) * scale  # (B, Q)
            if self.mask_duplicates:
                # a query to which this document is relevant (its positive is this same document, or its
                # qrels judge it relevant) is not a negative of it
                inside = _contains(all_row_sets, pos_ids[None, :].expand(len(all_row_sets), -1))  # (Q, B)
                d2q = self._mask(d2q, inside.T, q_labels)
            losses = 0.5 * (losses + F.cross_entropy(d2q, q_labels, reduction="none"))
        return rank_share(losses.sum(), b)

    @staticmethod
    def _mask(logits: torch.Tensor, relevant: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-inf where ``relevant`` (B, C) holds, except at row ``i``'s label column (never masked)."""
        relevant = relevant.clone()
        relevant[torch.arange(len(labels), device=labels.device), labels] = False
        return logits.masked_fill(relevant, float("-inf"))

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        if negatives_per_query > 0:
            return 1, ""  # the hard negatives are candidates even for a query alone
        return 2, ("compares each query's positive with the other queries' positives in its batch, its only "
                   "negatives without hard negatives")

    def get_config(self) -> dict:
        return {"temperature": self.temperature, "learnable_temperature": self.learnable_temperature,
                "symmetric": self.symmetric, "mask_duplicates": self.mask_duplicates, "max_scale": self.max_scale}
