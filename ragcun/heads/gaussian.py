from __future__ import annotations

import math

import torch
from torch import nn

from ragcun.embedding import Embedding

AUTO = "auto"


class GaussianHead(nn.Module):
    """The ragcun head: an unnormalized linear map to ``out_dim`` (default 512) dimensions.

    The output is deliberately *not* L2-normalized: unit-norm embeddings have a per-direction spread of
    about ``1/sqrt(D)`` and look nearly collapsed to SIGReg, so the isotropy regularizer could only fight the
    normalization. With ``logvar=true`` a second linear map predicts a per-dimension log-variance, making each
    text a diagonal Gaussian ``N(mean, diag(exp(logvar)))`` for the ``wasserstein`` and
    ``expected-sqeuclidean`` distances and the ``gaussian-kl`` regularizer.

    Initialisation: the mean map is orthogonal (``W^T W = I``), so the output keeps the input's geometry and
    training starts from the encoder's own ranking. ``init_scale`` is its gain: a number, or ``"auto"`` (the
    default), which means gain 1 until :meth:`calibrate` is called with a probe batch of encoder outputs:
    ``ragcun train`` does that once before the first step, so that the outputs are centred with unit RMS
    spread per coordinate (what SIGReg compares with N(0, I)), and rescales the contrastive temperature by the
    same factor so the initial logits do not change (ragcun.training.calibration).

    Example::

        >>> head = GaussianHead(in_dim=8, out_dim=16)
        >>> x = torch.nn.functional.normalize(torch.randn(64, 8), dim=1) * 0.1
        >>> factor = head.calibrate(x)
        >>> y = head(x).mean.detach()
        >>> round(float(y.mean()), 4) == 0.0, round(float(y.var(dim=0, unbiased=False).mean()), 3)
        (True, 1.0)
    """

    def __init__(self, in_dim: int, out_dim: int = 512, logvar: bool = False, init_scale: float | str = AUTO,
                 logvar_init: float = 0.0, center: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        if self.out_dim < 1:
            raise ValueError(f"head.gaussian.out_dim must be positive, got {out_dim}")
        if init_scale != AUTO and (isinstance(init_scale, (bool, str)) or not float(init_scale) > 0):
            raise ValueError(f"head.gaussian.init_scale must be a positive number or \"auto\", got {init_scale!r}")
        self.init_scale: float | str = init_scale if init_scale == AUTO else float(init_scale)
        self.logvar_init = float(logvar_init)
        self.center = bool(center)
        self.mean = nn.Linear(self.in_dim, self.out_dim)
        nn.init.orthogonal_(self.mean.weight, gain=1.0 if self.init_scale == AUTO else self.init_scale)
        nn.init.zeros_(self.mean.bias)
        self.logvar = None
        if logvar:
            self.logvar = nn.Linear(self.in_dim, self.out_dim)
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, self.logvar_init)

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({"mean", "logvar"}) if self.logvar is not None else frozenset({"mean"})

    @property
    def calibrates(self) -> bool:
        """True when the head waits for :meth:`calibrate` (``init_scale="auto"``)."""
        return self.init_scale == AUTO

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor, *, center: bool | None = None, ctx=None) -> float:
        """Rescale (and, with ``center``, shift) the mean map from a probe batch of encoder outputs (N, H) so
        that its outputs have zero mean and unit mean variance per coordinate; return the scale factor.

        A uniform scale and a shift change no Euclidean ranking, so the calibrated head ranks exactly like
        the uncalibrated one (for cosine or dot, pass ``center=False``: a shift would change their rankings).

        ``ctx`` (a :class:`ragcun.distributed.DistributedContext`): under DDP every rank calls this with the same
        probe, and the mean map and the factor are then averaged over the ranks (one all-reduce each), so every
        rank holds identical weights and returns the same factor even where its floating-point reductions
        differ; with one process (or no ``ctx``) nothing is communicated.
        """
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"head.gaussian.calibrate needs at least 2 probe vectors (N, {self.in_dim}), "
                             f"got shape {tuple(features.shape)}")
        y = self.mean(features.to(self.mean.weight.dtype))  # (N, D)
        rms = float(y.var(dim=0, unbiased=False).mean().sqrt())
        if not math.isfinite(rms) or rms <= 0:
            raise ValueError("head.gaussian.calibrate: the probe embeddings do not vary (all identical?)")
        factor = 1.0 / rms
        self.mean.weight.mul_(factor)
        self.mean.bias.mul_(factor)
        if self.center if center is None else center:
            self.mean.bias.sub_(y.mean(dim=0) * factor)
        self.init_scale = factor  # recorded in ragcun.json: this head is calibrated
        if ctx is not None and ctx.enabled:
            factor = self._agree_across_ranks(factor, ctx)
        return factor

    def restore_calibration(self, factor: float) -> None:
        """A resumed run: the checkpoint's weights were calibrated by ``factor`` before it was saved. Record it (as
        :meth:`calibrate` did), so the head is not calibrated twice and the saved ``ragcun.json`` says
        ``init_scale: factor``, not ``"auto"``; no weight changes."""
        self.init_scale = float(factor)

    def _agree_across_ranks(self, factor: float, ctx) -> float:
        """Average the mean map and ``factor`` over the ranks; the averaged factor becomes ``init_scale``."""
        import ragcun.distributed as D

        for param in (self.mean.weight, self.mean.bias):
            param.copy_(D.all_reduce_mean(param.detach(), ctx))
        factor = float(D.all_reduce_mean(torch.tensor([factor], device=ctx.device), ctx)[0])
        self.init_scale = factor
        return factor

    def forward(self, x: torch.Tensor) -> Embedding:  # (B, H) -> mean (B, D), logvar (B, D)
        return Embedding(self.mean(x), self.logvar(x) if self.logvar is not None else None)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The mean map as ``(weight (D, H), bias (D,))`` (for exporting; the log-variance is not part of it)."""
        return self.mean.weight, self.mean.bias

    def get_config(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "logvar": self.logvar is not None,
                "init_scale": self.init_scale, "logvar_init": self.logvar_init, "center": self.center}
