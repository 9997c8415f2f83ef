"""SIGReg isotropy regularizer (LeJEPA: Balestriero & LeCun 2025, arXiv 2511.08544)."""

from __future__ import annotations

import torch

from torch import nn

from ragcun.losses._common import check_apply_to, selected
from ragcun.losses.base import Loss, LossInputs
from ragcun.stats.sigreg import _check_grid, _check_positive_int, epps_pulley, random_directions


class IsotropyLoss(Loss):
    """SIGReg: push embeddings toward an isotropic standard Gaussian N(0, I).

    Inputs: ``queries`` (B, D) and the documents (``positives`` (B, D) then ``negatives`` (B*K, D)); only the
    ``mean`` vectors are used. For ``num_slices`` random unit directions, redrawn each step from a
    generator seeded by ``(seed, inputs.step)`` (so every rank draws the same ones), the Epps-Pulley
    statistic ``N * integral |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt`` (trapezoid rule, ``num_points``
    points on ``[0, t_max]``, doubled) is averaged over directions; N is the global batch size. See
    :mod:`ragcun.stats.sigreg` for the definition, the closed form and the noise floor (~1.05 with the
    defaults: an exact N(0, I) batch scores that, not 0).

    ``apply_to``: ``"queries"``, ``"documents"`` or ``"both"`` (default): with both, the statistic is
    computed separately on queries and on documents (the same directions) and averaged, so each must
    look Gaussian on its own.

    Distributed: the per-rank cos/sin sums and counts are all-reduced with the autograd-aware op, so every
    rank returns the statistic of the concatenated batch and its gradient (times ``world_size``, which
    DDP's average removes; see :mod:`ragcun.distributed`).

    Projector (``projector_dim > 0``): LeJEPA regularizes a small projector's output rather than the
    representation itself. Then SIGReg is computed on ``MLP(x)`` (``Linear(D, projector_hidden)``, GELU,
    ``Linear(projector_hidden, projector_dim)``), whose weights are parameters of this loss (trained with the
    head's learning rate, saved in checkpoints, not part of the model), and retrieval keeps using ``x``.
    The training loop injects ``dim`` (the embedding width D).

    Example::

        >>> from ragcun.embedding import Embedding
        >>> loss = IsotropyLoss(num_slices=256)
        >>> x = torch.randn(64, 32)
        >>> value = loss(LossInputs(Embedding(x), Embedding(torch.randn(64, 32)), step=3))
    """

    def __init__(self, num_slices: int = 1024, t_max: float = 3.0, num_points: int = 17,
                 apply_to: str = "both", seed: int = 0, projector_dim: int = 0, projector_hidden: int = 512,
                 dim: int | None = None) -> None:
        super().__init__()
        try:
            _check_positive_int("num_slices", num_slices)
            _check_grid(t_max, num_points)
        except ValueError as exc:
            raise ValueError(f"loss.isotropy: {exc}") from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"loss.isotropy.seed must be an integer, got {seed!r}")
        self.num_slices, self.t_max, self.num_points, self.seed = num_slices, float(t_max), num_points, seed
        self.apply_to = check_apply_to(apply_to, "isotropy")
        for name, value in (("projector_dim", projector_dim), ("projector_hidden", projector_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"loss.isotropy.{name} must be a non-negative integer, got {value!r}")
        self.projector_dim, self.projector_hidden = projector_dim, projector_hidden
        self.projector = None
        if projector_dim:
            if dim is None:
                raise ValueError("loss.isotropy.projector_dim needs the embedding width (built by ragcun train)")
            if projector_hidden < 1:
                raise ValueError("loss.isotropy.projector_hidden must be positive when projector_dim is set")
            self.projector = nn.Sequential(nn.Linear(int(dim), projector_hidden), nn.GELU(),
                                           nn.Linear(projector_hidden, projector_dim))

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        groups = selected(inputs, self.apply_to)  # [(N, D), ...]
        if self.projector is not None:
            groups = [self.projector(x.to(self.projector[0].weight.dtype)) for x in groups]  # [(N, P), ...]
        x0 = groups[0]
        directions = random_directions(x0.shape[1], self.num_slices, int(inputs.step), self.seed,
                                       device=x0.device, dtype=x0.dtype)  # (D, M)
        values = [epps_pulley(x, directions, self.t_max, self.num_points).mean() for x in groups]
        return torch.stack(values).mean()

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        return 2, "tests the distribution of the batch's embeddings (SIGReg)"

    def get_config(self) -> dict:
        return {"num_slices": self.num_slices, "t_max": self.t_max, "num_points": self.num_points,
                "apply_to": self.apply_to, "seed": self.seed, "projector_dim": self.projector_dim,
                "projector_hidden": self.projector_hidden}
