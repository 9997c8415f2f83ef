r"""SIGReg: the sliced Epps-Pulley normality statistic of LeJEPA (Balestriero & LeCun 2025, arXiv 2511.08544).

For a batch ``x`` of N embeddings in D dimensions and M unit directions ``a``, project ``z_n = a . x_n`` and
compare the empirical characteristic function ``phi_hat(t) = mean_n exp(i t z_n)`` with the standard normal's
``phi(t) = exp(-t^2 / 2)``::

    EP(a)  = N * integral_R |phi_hat(t) - phi(t)|^2 w(t) dt,      w(t) = exp(-t^2 / 2)
    SIGReg = mean over the M directions of EP(a)

The integrand is even, so the integral is twice the integral over ``[0, inf)``; like LeJEPA's code we use the
trapezoid rule on ``num_points`` (default 17) equally spaced points of ``[0, t_max]`` (default 3) and
double it. ``|phi_hat - phi|^2 = (C(t) - phi(t))^2 + S(t)^2`` with ``C``/``S`` the sample means of
``cos(t z)``/``sin(t z)``. Those means are the only cross-sample quantities, so under torch.distributed the
per-rank *sums* and the sample count are all-reduced (autograd-aware) and the statistic and its gradient
equal those of one process on the concatenated batch, whatever the world size or per-rank batch sizes.

Cost: O(N*D*M) for the projections plus O(N*M*T) for the cosines and sines (T grid points); on a CPU
the trigonometric term dominates (benchmarks/bench_losses.py). Memory O(N*M): the (N, M, T) intermediates
are recomputed in chunks in the backward pass rather than stored. Communication: 2*M*T floats per call.

Facts used by the tests and the isotropy report (derivations in :func:`sigreg_closed_form` and
:func:`sigreg_noise_floor`): the integral has an exact closed form as a sum of Gaussian kernels over sample
pairs; an exact N(0, I) sample does not score 0 but has an expected statistic (the *noise floor*) that does
not depend on N; a collapsed batch (all z equal) scores proportionally to N.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ragcun.distributed import all_reduce_sum, all_reduce_sum_no_grad, is_distributed

_SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio): spreads (seed, step) over the seed space


def full_precision(device: torch.device):
    """A context that turns autocast off: mixed precision would run the projections and the quadrature in
    bfloat16/float16, whose 8-bit (bfloat16) mantissa is too coarse for a mean of N cosines and for the
    ``||q||^2 + ||d||^2 - 2 q.d`` expansion of unnormalized embeddings. Callers upcast their inputs too."""
    if hasattr(torch.amp, "is_autocast_available") and not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is half precision, else unchanged (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_grid(t_max: float, num_points: int) -> None:
    if not (isinstance(t_max, (int, float)) and math.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max (the end of the integration range [0, t_max]) must be a positive number, "
                         f"got {t_max!r}")
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points (trapezoid grid points on [0, t_max]) must be an integer >= 2, "
                         f"got {num_points!r}")


def random_directions(dim: int, num_slices: int, step: int, seed: int = 0, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``num_slices`` random unit directions in ``dim`` dimensions, as the columns of a ``(dim, num_slices)``.

    Drawn (uniformly on the sphere: normalised Gaussians) from a CPU ``torch.Generator`` seeded from
    ``(seed, step)``, then moved to ``device``: every rank, and CPU and GPU, get the same directions for the
    same step, and a new step gives new ones.
    """
    _check_positive_int("dim", dim)
    _check_positive_int("num_slices", num_slices)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed * _SEED_MIX + step) % (2**63))
    # Drawn in float32 (3x cheaper than float64, and the draw is a per-step cost), normalised on the CPU in
    # the requested precision (at least float32) so the columns are unit to that precision on every device.
    a = torch.randn(dim, num_slices, generator=generator, dtype=torch.float32)  # (D, M)
    if dtype == torch.float64:
        a = a.double()
    a = a / a.norm(dim=0, keepdim=True)  # unit columns
    return a.to(device=device, dtype=dtype)


def quadrature_grid(t_max: float = 3.0, num_points: int = 17, device=None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid ``t`` (T,) on ``[0, t_max]`` and weights (T,) such that ``sum_k weights[k] * f(t[k])``
    approximates ``integral_{-t_max}^{t_max} f(t) exp(-t^2/2) dt`` for an even ``f``.

    The weights are the trapezoid weights (``h/2`` at the ends, ``h`` inside, ``h = t_max / (T - 1)``),
    doubled for the mirrored half of the even integrand, times the weight function ``w(t) = exp(-t^2/2)``.
    """
    _check_grid(t_max, num_points)
    t = torch.linspace(0.0, float(t_max), num_points, dtype=torch.float64)  # (T,)
    h = float(t_max) / (num_points - 1)
    trapezoid = torch.full((num_points,), h, dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = h / 2
    weights = 2.0 * trapezoid * torch.exp(-0.5 * t * t)  # (T,)
    return t.to(device=device, dtype=dtype), weights.to(device=device, dtype=dtype)


_CHUNK_ELEMENTS = 1 << 22  # (rows, M, T) elements per chunk: 16 MiB of float32


class _CharacteristicSums(torch.autograd.Function):
    """``(sum_n cos(t z_n), sum_n sin(t z_n))`` per direction: ``z`` (N, M), ``t`` (T,) -> (M, T), (M, T).

    Plain autograd would keep the (N, M, T) products, cosines and sines for the backward pass: O(N*M*T)
    memory, 1.2 GB at N=4096, M=1024, T=17 in float32. This function keeps only ``z`` and recomputes the
    cosines and sines chunk by chunk in the backward pass (the same four trigonometric evaluations that
    autograd's cos/sin backward would make), so the memory is O(N*M + chunk*M*T).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, t: torch.Tensor):
        n, m = z.shape
        rows = max(1, _CHUNK_ELEMENTS // max(m * t.numel(), 1))
        cos_sum = z.new_zeros(m, t.numel())  # (M, T)
        sin_sum = z.new_zeros(m, t.numel())
        for start in range(0, n, rows):
            zt = z[start:start + rows, :, None] * t  # (rows, M, T)
            cos_sum += torch.cos(zt).sum(0)
            sin_sum += torch.sin(zt).sum(0)
        ctx.save_for_backward(z, t)
        ctx.rows = rows
        return cos_sum, sin_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cos: torch.Tensor, grad_sin: torch.Tensor):  # (M, T) each
        z, t = ctx.saved_tensors
        grad_z = torch.empty_like(z)  # (N, M)
        # d cos(t z)/dz = -t sin(t z),  d sin(t z)/dz = t cos(t z)
        gc, gs = grad_cos * t, grad_sin * t  # (M, T)
        for start in range(0, z.shape[0], ctx.rows):
            zt = z[start:start + ctx.rows, :, None] * t  # (rows, M, T)
            grad_z[start:start + ctx.rows] = (torch.cos(zt) * gs).sum(-1) - (torch.sin(zt) * gc).sum(-1)
        return grad_z, None


def epps_pulley(x: torch.Tensor, directions: torch.Tensor, t_max: float = 3.0, num_points: int = 17,
                global_n: int | None = None, distributed: bool = True) -> torch.Tensor:
    """The Epps-Pulley statistic of ``x`` (N, D) along each column of ``directions`` (D, M) -> (M,).

    ``N * sum_k weights_k * ((C(t_k) - phi(t_k))^2 + S(t_k)^2)`` with the grid of :func:`quadrature_grid`.
    N is the *global* sample count: with ``distributed=True`` and an initialized process group of more than
    one rank, the sums of cos/sin and the counts are all-reduced with the autograd-aware op, so every rank
    gets the statistic of the concatenated batch (ranks may hold different N). ``global_n`` may be given
    when the caller already knows the total (saves a collective); ``distributed=False`` treats ``x`` as the
    whole sample even inside a process group (e.g. a report computed on one rank only).

    Example::

        >>> x = torch.randn(256, 64)
        >>> epps_pulley(x, random_directions(64, 128, step=0)).shape
        torch.Size([128])
    """
    if x.ndim != 2:
        raise ValueError(f"epps_pulley expects embeddings of shape (N, D), got {tuple(x.shape)}")
    if directions.ndim != 2 or directions.shape[0] != x.shape[1]:
        raise ValueError(f"directions must have shape (D, M) with D = {x.shape[1]}, got {tuple(directions.shape)}")
    reduce = distributed and is_distributed()
    if global_n is None:
        n = int(all_reduce_sum_no_grad(x.shape[0], device=x.device).item()) if reduce else x.shape[0]
    else:
        n = int(global_n)
        if n < x.shape[0] or (not reduce and n != x.shape[0]):
            raise ValueError(f"global_n={global_n} is not the total sample count (this process has {x.shape[0]})")
    if n < 1:
        raise ValueError("epps_pulley needs at least one sample")
    with full_precision(x.device):  # half precision cannot hold a mean of N cosines accurately enough
        x = upcast(x)
        t, weights = quadrature_grid(t_max, num_points, device=x.device, dtype=x.dtype)  # (T,), (T,)
        phi = torch.exp(-0.5 * t * t)  # (T,) characteristic function of N(0, 1)
        z = x @ directions.to(dtype=x.dtype)  # (N, M)
        cos_sum, sin_sum = _CharacteristicSums.apply(z, t)  # (M, T) each
        if reduce:
            # Sums (not per-rank means) so unequal rank batch sizes still give the concatenated-batch statistic.
            cos_sum = all_reduce_sum(cos_sum)
            sin_sum = all_reduce_sum(sin_sum)
        cos_mean, sin_mean = cos_sum / n, sin_sum / n  # (M, T)
        err = (cos_mean - phi).square() + sin_mean.square()  # (M, T) = |phi_hat(t) - phi(t)|^2
        return n * (err @ weights)  # (M,)


def sigreg(x: torch.Tensor, num_slices: int = 1024, step: int = 0, seed: int = 0, t_max: float = 3.0,
           num_points: int = 17, distributed: bool = True) -> torch.Tensor:
    """SIGReg of ``x`` (N, D): the mean of :func:`epps_pulley` over ``num_slices`` directions drawn for ``step``.

    Example::

        >>> float(sigreg(torch.randn(1024, 32), num_slices=256))  # near sigreg_noise_floor(): ~1.06  # doctest: +SKIP
    """
    directions = random_directions(x.shape[1], num_slices, step, seed, device=x.device, dtype=x.dtype)
    return epps_pulley(x, directions, t_max=t_max, num_points=num_points, distributed=distributed).mean()


def sigreg_closed_form(x: torch.Tensor, directions: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    r"""The Epps-Pulley statistic integrated exactly over the whole real line, per direction -> (M,).

    Derivation. With ``phi_hat(t) = (1/N) sum_j exp(i t z_j)`` and ``phi(t) = w(t) = exp(-t^2/2)``::

        |phi_hat - phi|^2 = |phi_hat|^2 - 2 Re(phi_hat) phi + phi^2
        |phi_hat|^2       = (1/N^2) sum_{j,k} cos(t (z_j - z_k))
        Re(phi_hat)       = (1/N) sum_j cos(t z_j)

    and the Gaussian integral ``integral_R cos(t u) exp(-a t^2) dt = sqrt(pi / a) exp(-u^2 / (4 a))`` gives,
    term by term (a = 1/2, 1 and 3/2)::

        EP = N * integral_R |phi_hat(t) - phi(t)|^2 w(t) dt
           = (sqrt(2 pi) / N) sum_{j,k} exp(-(z_j - z_k)^2 / 2)
             - 2 sqrt(pi) sum_j exp(-z_j^2 / 4)
             + N sqrt(2 pi / 3)

    a sum of Gaussian kernels over sample pairs. It integrates over ``(-inf, inf)``, so it matches the
    trapezoid statistic of :func:`epps_pulley` only for a range and grid wide and fine enough (the tests
    bound both errors); on the default ``[0, 3]`` grid the difference is the truncated tail.
    Cost O(N^2 M): an oracle for tests and small reports, chunked over directions to bound memory.
    This is a single-process computation (no all-reduce).
    """
    if x.ndim != 2 or directions.ndim != 2 or directions.shape[0] != x.shape[1]:
        raise ValueError(f"expected x (N, D) and directions (D, M); got {tuple(x.shape)} and {tuple(directions.shape)}")
    n = x.shape[0]
    if n < 1:
        raise ValueError("sigreg_closed_form needs at least one sample")
    z = x @ directions.to(dtype=x.dtype)  # (N, M)
    out = []
    for start in range(0, z.shape[1], chunk_size):
        zc = z[:, start:start + chunk_size]  # (N, m)
        diff = zc.unsqueeze(1) - zc.unsqueeze(0)  # (N, N, m)
        pairs = torch.exp(-0.5 * diff.square()).sum((0, 1))  # (m,)
        singles = torch.exp(-0.25 * zc.square()).sum(0)  # (m,)
        out.append(math.sqrt(2 * math.pi) / n * pairs - 2 * math.sqrt(math.pi) * singles
                   + n * math.sqrt(2 * math.pi / 3))
    return torch.cat(out)


def sigreg_noise_floor(n: int, num_slices: int = 1024, t_max: float | None = 3.0, num_points: int = 17) -> float:
    r"""The expected SIGReg statistic of an exact N(0, I) sample of size ``n`` (exact, not estimated).

    Derivation. Along any fixed unit direction an N(0, I) sample projects to ``n`` i.i.d. N(0, 1) values, so
    ``phi_hat(t)`` is a mean of ``n`` i.i.d. unit complex numbers with mean ``phi(t)`` and
    ``E|exp(i t z)|^2 = 1``::

        E|phi_hat(t) - phi(t)|^2 = Var(phi_hat(t)) = (1 - phi(t)^2) / n

    The statistic is ``n`` times a linear functional (integral or quadrature) of that integrand, so its
    expectation is the same functional of ``1 - exp(-t^2)``, for every ``n``, every direction and hence also
    for the mean over ``num_slices`` directions (``n`` and ``num_slices`` only change the spread around it)::

        E[EP] = sum_k weights_k (1 - exp(-t_k^2))        (the quadrature of :func:`epps_pulley`)
              = sqrt(2 pi) (1 - 1/sqrt(3)) ~ 1.0594      (t_max=None: the exact integral over R)

    With the default grid (17 points on [0, 3]) it is ~1.05. ``n`` and ``num_slices`` are validated and
    kept in the signature so callers state the sample they compare against.
    """
    _check_positive_int("n", n)
    _check_positive_int("num_slices", num_slices)
    if t_max is None:
        return math.sqrt(2 * math.pi) * (1 - 1 / math.sqrt(3))
    t, weights = quadrature_grid(t_max, num_points, dtype=torch.float64)
    return float((weights * (1 - torch.exp(-t * t))).sum())
