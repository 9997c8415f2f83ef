"""Distillation from a teacher's scores: Margin-MSE and KL over each query's own candidates.

Both losses compare the student's scores of a query's own candidates (its positive and its ``K`` hard
negatives) with a teacher's scores of the same candidates, handed in as ``LossInputs.teacher_scores``
``(B, 1 + K)``. The student's score is the model's similarity (``similarity = -distance`` for metrics, so
``euclidean`` gives ``-||q - d||`` and ``sqeuclidean`` ``-||q - d||^2``; cosine and dot as they are). Larger
is more relevant for both; a teacher whose numbers are distances needs a negative ``teacher_scale``.

References: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation" (arXiv 2010.02666, Margin-MSE); Hinton et al. 2015 (arXiv 1503.02531, distillation
with temperatures); sentence-transformers' ``MarginMSELoss`` and ``DistillKLDivLoss``.

Scale and sign are part of the contract, never guessed: the teacher's scores are multiplied by
``teacher_scale`` (margin-mse) or divided by ``teacher_temperature`` (distill-kl) and the student's by
``1 / temperature``. On its first batch each loss compares the two spreads and warns (``TeacherScaleWarning``,
rank 0) when they differ by more than 10x, or when the teacher ranks the positive below its negatives on
average (distances given as similarities), naming the setting that maps them; ``check_scale=false`` silences
it.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.nn import functional as F

from ragcun.distances.base import similarity_formula
from ragcun.distributed import world
from ragcun.embedding import Embedding
from ragcun.losses._common import check_positive, full_precision, rank_share, upcast
from ragcun.losses.base import Loss, LossInputs

QUERY_BLOCK = 64  # queries scored against their own candidates at once: memory O(BLOCK^2 (1 + K)), not O(B^2 K)
SCALE_MISMATCH = 10.0  # spreads further apart than this factor are a mismatch worth a warning


class TeacherScaleWarning(UserWarning):
    """The teacher's scores and the student's are on different scales (or signs) and were not mapped."""


def _upcast(e: Embedding) -> Embedding:
    return Embedding(upcast(e.mean), None if e.logvar is None else upcast(e.logvar))


def own_candidate_similarity(distance, queries: Embedding, positives: Embedding,
                             negatives: Embedding | None) -> torch.Tensor:  # (B, 1 + K)
    """``similarity(q_i, c)`` for each query's own candidates: column 0 its positive, columns ``1..K`` its hard
    negatives (rows ``i*K .. (i+1)*K - 1`` of ``negatives``). Any distance (it only needs ``similarity``);
    computed in blocks of queries, so memory grows with the batch, not its square."""
    b = len(queries)
    k = 0 if negatives is None else len(negatives) // max(b, 1)
    rows = []
    for start in range(0, b, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, b)
        m = stop - start
        cands = positives[start:stop]
        if k:
            cands = Embedding.cat([cands, negatives[start * k:stop * k]])  # (m + m*K, D)
        sims = distance.similarity(queries[start:stop], cands)  # (m, m + m*K)
        local = torch.arange(m, device=sims.device)
        columns = [local[:, None]]  # each query's positive
        if k:
            columns.append(m + local[:, None] * k + torch.arange(k, device=sims.device)[None, :])  # its negatives
        rows.append(sims.gather(1, torch.cat(columns, dim=1)))  # (m, 1 + K)
    return torch.cat(rows) if rows else queries.mean.new_zeros((0, 1 + k))


def _missing(loss: str) -> str:
    return (f"loss {loss} needs a teacher's scores for every query's positive and hard negatives, and this batch "
            "has none: train on JSONL lines with 'pos_scores' and 'neg_scores' (written by `ragcun data score "
            "--teacher MODEL ...`, or MS MARCO-style files such as ../shared/data/msmarco-train-sample) with "
            "--negatives K (K >= 1)")


class _DistillLoss(Loss):
    name = ""

    def __init__(self, distance=None, temperature: float = 1.0, check_scale: bool = True) -> None:
        super().__init__()
        if distance is None:  # the training loop injects the model's; alone, the default ragcun distance
            from ragcun.distances.euclidean import EuclideanDistance

            distance = EuclideanDistance()
        if not hasattr(distance, "similarity"):
            raise ValueError(f"loss.{self.name}: distance must be a Distance, got {distance!r}")
        self.distance = distance
        self.needs = frozenset({"mean"}) | frozenset(getattr(distance, "needs", {"mean"}))
        # a persistent buffer, as contrastive's: a resumed run (which does not calibrate again) keeps the temperature
        # that start-up calibration rescaled, from the checkpoint
        self.register_buffer("student_temperature", torch.tensor(check_positive("temperature", temperature, self.name)))
        if not isinstance(check_scale, bool):
            raise ValueError(f"loss.{self.name}.check_scale must be true or false, got {check_scale!r}")
        self.check_scale = check_scale
        self._scale_checked = False

    @property
    def temperature(self) -> float:
        return float(self.student_temperature)

    @torch.no_grad()
    def rescale_temperature(self, factor: float) -> None:
        """Multiply the student temperature by ``factor``: training start-up calls it when it scales the head by
        ``c`` (``factor = c**k``), so the student's scores at step 0 are those of the uncalibrated model and a
        teacher scale chosen for the base model's similarities stays right (ragcun.training.calibration)."""
        self.student_temperature.mul_(check_positive("temperature factor", factor, self.name))

    def _student_temperature(self, like: torch.Tensor) -> torch.Tensor:
        return self.student_temperature.to(device=like.device, dtype=like.dtype)

    def _scores(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) scores, both ``(B, 1 + K)`` float32 or wider; the student's with gradient."""
        b = inputs.batch_size
        if inputs.teacher_scores is None:
            raise ValueError(_missing(self.name))
        if inputs.negatives is None or len(inputs.negatives) == 0:
            raise ValueError(f"loss {self.name} compares each query's positive with its hard negatives, and this "
                             "batch has none: train with --negatives K (K >= 1)")
        if len(inputs.positives) != b or len(inputs.negatives) % max(b, 1):
            raise ValueError(f"{self.name}: {b} queries, {len(inputs.positives)} positives and "
                             f"{len(inputs.negatives)} hard negatives (must be B, B and a multiple of B)")
        k = inputs.negatives_per_query
        q, p, n = _upcast(inputs.queries), _upcast(inputs.positives), _upcast(inputs.negatives)
        teacher = torch.as_tensor(inputs.teacher_scores).to(device=q.mean.device)
        teacher = upcast(teacher.to(q.mean.dtype) if teacher.is_floating_point() else teacher.float())
        if tuple(teacher.shape) != (b, 1 + k):
            raise ValueError(f"{self.name}: teacher_scores has shape {tuple(teacher.shape)}, expected ({b}, {1 + k}) "
                             "(each query's positive, then its hard negatives)")
        if not torch.isfinite(teacher).all():
            raise ValueError(f"{self.name}: the teacher's scores hold NaN or infinite values")
        student = own_candidate_similarity(self.distance, q, p, n)
        return student, teacher.to(student.dtype)

    def _warn_once(self, student: torch.Tensor, teacher: torch.Tensor, teacher_margins: torch.Tensor,
                   setting: str, current: float, margins: bool) -> None:
        """Warn (rank 0, first batch) when the teacher's spread and the student's differ by > 10x, or when the
        teacher puts positives below their negatives on average. ``student``/``teacher``: what the loss compares
        (margins ``(B, K)``, whose spread is their mean absolute size, or logits ``(B, 1 + K)``, whose spread is
        the mean absolute deviation from each row's mean: a shift does not count); ``teacher_margins`` (B, K):
        positive minus negatives, after the sign mapping; ``setting``: what maps the scales (a teacher scale for
        margins, which the ratio divides; a teacher temperature for logits, which it multiplies)."""
        if self._scale_checked or not self.check_scale:
            return
        self._scale_checked = True
        if world()[0] != 0:
            return
        student, teacher = student.detach().double(), teacher.detach().double()
        mean_margin = float(teacher_margins.detach().double().mean()) if teacher_margins.numel() else 0.0
        if mean_margin < 0:
            warnings.warn(f"loss.{self.name}: the teacher scores the positives below their hard negatives on average "
                          f"(mean margin {mean_margin:.4g}); ragcun reads teacher scores as similarities (larger = "
                          "more relevant). If they are distances, set a negative scale (--set "
                          f"loss.{self.name}.teacher_scale=-1); --set loss.{self.name}.check_scale=false silences this",
                          TeacherScaleWarning, stacklevel=3)
        spread_t, spread_s = (_size(teacher), _size(student)) if margins else (_deviation(teacher), _deviation(student))
        if not (spread_t > 0 and spread_s > 0 and math.isfinite(spread_t) and math.isfinite(spread_s)):
            return
        ratio = spread_t / spread_s
        if 1.0 / SCALE_MISMATCH <= ratio <= SCALE_MISMATCH:
            return
        suggested = current / ratio if margins else current * ratio
        warnings.warn(f"loss.{self.name}: the teacher's scores spread {ratio:.3g}x as much as the student's "
                      f"({spread_t:.4g} vs {spread_s:.4g} on the first batch): they are on different scales and "
                      f"the loss does not map them by itself. Set {setting} (now {current:g}) to about {suggested:.3g} "
                      f"(--set {setting}={suggested:.3g}) to put the teacher on the student's scale (the student's "
                      f"similarity is {similarity_formula(self.distance)}), "
                      f"or --set loss.{self.name}.check_scale=false to keep them as they are",
                      TeacherScaleWarning, stacklevel=3)

    def get_config(self) -> dict:
        return {"temperature": self.temperature, "check_scale": self.check_scale}


def _size(x: torch.Tensor) -> float:
    """The typical size of margins: their mean absolute value."""
    return float(x.abs().mean()) if x.numel() else 0.0


def _deviation(x: torch.Tensor) -> float:
    """The typical spread of logits within a row (a per-row shift does not count)."""
    return float((x - x.mean(dim=1, keepdim=True)).abs().mean()) if x.numel() else 0.0


class MarginMSELoss(_DistillLoss):
    """Margin-MSE (Hofstätter et al. 2020): the student's score margins regressed on the teacher's.

    Inputs: ``queries`` (B, D), ``positives`` (B, D), ``negatives`` (B*K, D) grouped by query (K >= 1) and
    ``teacher_scores`` (B, 1 + K). For query ``i`` and each of its negatives ``k``::

        student margin  m_ik = (s(q_i, p_i) - s(q_i, n_ik)) / temperature
        teacher margin  t_ik = teacher_scale * (T_i0 - T_ik)
        loss            = mean over the global batch's (i, k) of (m_ik - t_ik)^2

    ``s`` is the distance's similarity (``-||q - d||`` for euclidean). Only margins enter, so adding a constant
    to all of one query's teacher scores changes nothing (no ``teacher_shift`` is needed); a scale does, and is
    ``teacher_scale`` (negative for a teacher that gives distances). ``temperature`` (default 1) divides the
    student's similarities; training start-up multiplies it when it calibrates the head, so the student's
    margins at step 0 are the uncalibrated model's and ``teacher_scale`` maps the teacher onto *those*.

    Distributed: a per-query loss on each rank's own queries and candidates (no candidates cross ranks); each
    rank returns ``world_size * (sum of its per-query losses) / global query count``, so the rank average (DDP's
    gradient average) is the single-process mean of the global batch, for unequal rank batches too.

    Example::

        >>> import torch
        >>> from ragcun.embedding import Embedding
        >>> q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)
        >>> teacher = torch.tensor([[3.0, 1.0, 0.5]] * 4)
        >>> loss = MarginMSELoss(check_scale=False)
        >>> loss(LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher)).shape
        torch.Size([])
    """

    name = "margin-mse"

    def __init__(self, distance=None, teacher_scale: float = 1.0, temperature: float = 1.0,
                 check_scale: bool = True) -> None:
        super().__init__(distance, temperature, check_scale)
        try:
            teacher_scale = float(teacher_scale)
        except (TypeError, ValueError):
            raise ValueError(f"loss.margin-mse.teacher_scale must be a number, got {teacher_scale!r}") from None
        if not math.isfinite(teacher_scale) or teacher_scale == 0:
            raise ValueError(f"loss.margin-mse.teacher_scale must be a finite non-zero number (negative for a "
                             f"teacher that gives distances), got {teacher_scale!r}")
        self.teacher_scale = teacher_scale

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        with full_precision(inputs.queries.mean.device):
            student, teacher = self._scores(inputs)  # (B, 1 + K) each
            student_margin = (student[:, :1] - student[:, 1:]) / self._student_temperature(student)  # (B, K)
            teacher_margin = self.teacher_scale * (teacher[:, :1] - teacher[:, 1:])  # (B, K)
            self._warn_once(student_margin, teacher_margin, teacher_margin, f"loss.{self.name}.teacher_scale",
                            self.teacher_scale, margins=True)
            per_query = (student_margin - teacher_margin).square().mean(dim=1)  # (B,)
            return rank_share(per_query.sum(), len(per_query))

    def get_config(self) -> dict:
        return {"teacher_scale": self.teacher_scale, **super().get_config()}


class DistillKLLoss(_DistillLoss):
    """KL(teacher || student) between the softmax distributions over each query's own candidates.

    Inputs as :class:`MarginMSELoss`. For query ``i`` with candidates ``c_i0 = p_i`` and ``c_ik = n_ik``::

        teacher  P_i = softmax_j(teacher_scale * T_ij / teacher_temperature)
        student  Q_i = softmax_j(s(q_i, c_ij) / temperature)
        loss     = mean over the global batch's queries of KL(P_i || Q_i) = sum_j P_ij (log P_ij - log Q_ij)

    Adding a constant to one query's teacher scores changes nothing (a softmax); their scale is a temperature.
    ``temperature`` (student, default 0.05, as contrastive's) is multiplied by training start-up's calibration
    factor like contrastive's, so the student's distribution at step 0 is the uncalibrated model's;
    ``teacher_temperature`` (default 1) maps the teacher's scale, ``teacher_scale`` (default 1; -1 for distances)
    its sign. The plain KL, not multiplied by a temperature's square. Distributed: as :class:`MarginMSELoss`.

    Example::

        >>> import torch
        >>> from ragcun.embedding import Embedding
        >>> q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)
        >>> loss = DistillKLLoss(check_scale=False)
        >>> teacher = torch.tensor([[3.0, 1.0, 0.5]] * 4)
        >>> float(loss(LossInputs(Embedding(q), Embedding(p), Embedding(n), teacher_scores=teacher))) >= 0
        True
    """

    name = "distill-kl"

    def __init__(self, distance=None, temperature: float = 0.05, teacher_temperature: float = 1.0,
                 teacher_scale: float = 1.0, check_scale: bool = True) -> None:
        super().__init__(distance, temperature, check_scale)
        self.teacher_temperature = check_positive("teacher_temperature", teacher_temperature, self.name)
        try:
            teacher_scale = float(teacher_scale)
        except (TypeError, ValueError):
            raise ValueError(f"loss.distill-kl.teacher_scale must be a number, got {teacher_scale!r}") from None
        if not math.isfinite(teacher_scale) or teacher_scale == 0:
            raise ValueError("loss.distill-kl.teacher_scale must be a finite non-zero number (-1 for a teacher that "
                             f"gives distances), got {teacher_scale!r}")
        self.teacher_scale = teacher_scale

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        with full_precision(inputs.queries.mean.device):
            student, teacher = self._scores(inputs)  # (B, 1 + K) each
            student_logits = student / self._student_temperature(student)
            teacher_logits = self.teacher_scale * teacher / self.teacher_temperature
            self._warn_once(student_logits, teacher_logits, teacher_logits[:, :1] - teacher_logits[:, 1:],
                            f"loss.{self.name}.teacher_temperature", self.teacher_temperature, margins=False)
            target = F.log_softmax(teacher_logits, dim=1)  # (B, 1 + K), log P
            log_q = F.log_softmax(student_logits, dim=1)  # (B, 1 + K), log Q
            per_query = (target.exp() * (target - log_q)).sum(dim=1)  # (B,)
            return rank_share(per_query.sum(), len(per_query))

    def get_config(self) -> dict:
        return {"teacher_temperature": self.teacher_temperature, "teacher_scale": self.teacher_scale,
                **super().get_config()}
