"""How a model's encoder and head become sentence-transformers modules: the export protocol.

An exported model is ``encoder modules + head modules`` (:mod:`ragcun.exporters.st_modules`). Built-in
components are known here; any other component (a plugin's) opts in with one method, found by name so a
plugin needs no import from ragcun to declare it:

**Heads** (the pooled vector ``(B, H)`` -> the head's ``mean`` ``(B, D)``), first match wins:

1. ``head.sentence_transformers_modules() -> list[Dense | Normalize]``: any pipeline of the two, e.g. an MLP as
   ``Dense(..., activation=GELU) -> Dense(...)`` (the ``mlp`` head of the ragcun-mlp plugin does this);
2. the built-ins: ``identity`` (nothing), ``linear`` (one Dense, then Normalize with ``normalize=true``),
   ``gaussian`` (one Dense from ``head.mean``, bias included; a ``head.logvar`` is not exported);
3. ``head.affine() -> (weight (D, H), bias (D,) or None)``, or None when the head is not affine: the head's mean
   is ``weight @ x + bias``, exported as one Dense with identity activation (the fitted ``center`` and
   ``whiten`` heads use this).

**Encoders** (texts -> the pooled vector): the built-in ``hf`` encoder and everything derived from it (the
embedded ``all-minilm-l6-v2``) export as ``Transformer -> Pooling [-> Normalize] [-> its own Dense/Normalize]``.
Another encoder implements ``encoder.sentence_transformers_modules() -> list[STModule]``, a
:class:`~ragcun.exporters.st_modules.Transformer` first.

Every head's modules are checked on a probe batch against ``head(x).mean`` before anything is written, so a
wrong declaration fails the export instead of producing a folder that ranks differently.
"""

from __future__ import annotations

from typing import Any

import torch

from ragcun.exporters.st_modules import VECTOR_MODULES, Dense, Normalize, Pooling, STModule, Transformer

METHOD = "sentence_transformers_modules"
PROBE_BATCH = 8


def component_name(component: Any) -> str:
    from ragcun.components import component_name as registry_name

    return registry_name(component)


def encoder_modules(encoder: Any) -> list[STModule]:
    from ragcun.encoders.hf import HFEncoder

    if hasattr(encoder, METHOD):
        modules = list(getattr(encoder, METHOD)())
        if not modules or not isinstance(modules[0], Transformer):
            raise ValueError(f"encoder {component_name(encoder)!r}: {METHOD}() must return a Transformer first, "
                             f"got {[type(m).__name__ for m in modules]}")
        return modules
    if not isinstance(encoder, HFEncoder):
        raise ValueError(f"encoder {component_name(encoder)!r} cannot be exported to sentence-transformers: it is "
                         f"not an hf encoder and has no {METHOD}() method (see ragcun.exporters.st_components)")
    return _hf_encoder_modules(encoder)


def _hf_encoder_modules(encoder: Any) -> list[STModule]:
    from ragcun.encoders.st_dense import L2Normalize, STDense

    modules: list[STModule] = [Transformer(encoder.model, encoder.tokenizer, encoder.max_seq_length,
                                           encoder.do_lower_case),
                               Pooling(int(encoder.model.config.hidden_size), encoder.pooling)]
    if encoder.normalize:
        modules.append(Normalize())
    for module in getattr(encoder, "post", ()):  # a sentence-transformers folder's own Dense/Normalize
        if isinstance(module, STDense):
            modules.append(Dense(module.linear.weight, module.linear.bias, module.activation_path))
        elif isinstance(module, L2Normalize):
            modules.append(Normalize())
        else:
            raise ValueError(f"encoder module {type(module).__name__} has no sentence-transformers equivalent")
    return modules


def head_modules(head: Any) -> list[STModule]:
    """The modules that reproduce ``head(x).mean``, checked on a probe batch."""
    modules = _declared_head_modules(head)
    bad = [type(m).__name__ for m in modules if not isinstance(m, VECTOR_MODULES)]
    if bad:
        raise ValueError(f"head {component_name(head)!r}: a head exports as Dense and Normalize modules only, "
                         f"got {', '.join(bad)}")
    check_reproduces(head, modules)
    return modules


def _declared_head_modules(head: Any) -> list[STModule]:
    from ragcun.heads.gaussian import GaussianHead
    from ragcun.heads.identity import IdentityHead
    from ragcun.heads.linear import LinearHead
    from ragcun.truncation import TruncatedHead

    if isinstance(head, TruncatedHead):  # --truncate-dim: the inner head's modules, cut to the first dims
        return truncated_modules(_declared_head_modules(head.inner), head.out_dim, int(head.inner.out_dim))
    if hasattr(head, METHOD):
        return list(getattr(head, METHOD)())
    if isinstance(head, IdentityHead):
        return []
    if isinstance(head, LinearHead):
        return [Dense.from_linear(head.proj)] + ([Normalize()] if head.normalize else [])
    if isinstance(head, GaussianHead):
        # Only the mean map: the log-variance matters to distances that read it, and those are refused
        # (or exported --mean-only) before we get here.
        return [Dense.from_linear(head.mean)]
    affine = head.affine() if callable(getattr(head, "affine", None)) else None
    if affine is not None:
        weight, bias = affine
        return [Dense(weight, bias)]
    raise ValueError(f"head {component_name(head)!r} cannot be exported to sentence-transformers: give it a "
                     f"{METHOD}() method (Dense/Normalize modules) or an affine() method returning "
                     "(weight, bias); see ragcun.exporters.st_components")


def truncated_modules(modules: list[STModule], dim: int, width: int) -> list[STModule]:
    """``modules`` (giving ``width`` dims) followed by keeping the first ``dim`` coordinates: a last Dense without
    activation keeps its first ``dim`` rows (the same numbers, fewer weights); otherwise a Dense selecting the
    first ``dim`` coordinates (an identity block) is appended, after any Normalize, as the truncation comes
    after the head."""
    from ragcun.exporters.st_modules import IDENTITY

    last = modules[-1] if modules else None
    if isinstance(last, Dense) and last.activation == IDENTITY:
        bias = None if last.bias is None else last.bias[:dim]
        return [*modules[:-1], Dense(last.weight[:dim], bias, IDENTITY)]
    return [*modules, Dense(torch.eye(dim, width), None, IDENTITY)]


def apply_modules(modules: list[STModule], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module.apply(x)
    return x


def check_reproduces(head: Any, modules: list[STModule]) -> None:
    """``apply_modules(modules, x) == head(x).mean`` on a seeded probe batch at the head's input width.

    The probe has unit-norm rows, the scale of the pooled vectors of the models ragcun trains."""
    in_dim = getattr(head, "in_dim", None)
    if in_dim is None and modules and isinstance(modules[0], Dense):
        in_dim = modules[0].in_features
    if in_dim is None:
        raise ValueError(f"head {component_name(head)!r} has no in_dim, so its export cannot be checked")
    in_dim = int(in_dim)
    params = list(head.parameters()) + list(head.buffers())
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    device = params[0].device if params else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(PROBE_BATCH, in_dim, generator=g), dim=1).to(device, dtype)
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            expected = head(x).mean.float()
            got = apply_modules(modules, x).float()
    finally:
        head.train(was_training)
    if got.shape != expected.shape:
        raise ValueError(f"head {component_name(head)!r}: its sentence-transformers modules give shape "
                         f"{tuple(got.shape)}, the head {tuple(expected.shape)}")
    scale = float(expected.abs().max().clamp_min(1.0))
    error = float((got - expected).abs().max())
    if not error <= 1e-4 * scale:
        raise ValueError(f"head {component_name(head)!r}: its sentence-transformers modules do not reproduce the "
                         f"head (max abs difference {error:.3g} on a probe batch); the export would rank "
                         "differently, so nothing was written")
