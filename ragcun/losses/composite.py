"""A weighted sum of registered losses, built from a spec such as ``contrastive+0.05*isotropy+0.01*norm``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ragcun.losses.base import LossInputs, LossOutput
from ragcun.spec import Settings, Term, parse_spec


# on_failure(term name, term loss, the exception it raised) -> the exception to raise instead, or None
FailureNamer = Callable[[str, nn.Module, Exception], Exception | None]


class CompositeLoss(nn.Module):
    """``total = sum_i weight_i * term_i(inputs)``; also returns every *weighted* term by name for logging.

    Built by :func:`build_loss`. ``needs`` is the union of the terms' needs (check it against the head with
    :func:`ragcun.components.check_compatible` before training). The terms are submodules, so learnable
    settings (e.g. a learnable temperature) are trained and saved with the loss.

    Example::

        >>> from ragcun.embedding import Embedding
        >>> loss = build_loss("contrastive+0.05*isotropy")
        >>> q = torch.randn(8, 16, requires_grad=True)
        >>> out = loss(LossInputs(Embedding(q), Embedding(torch.randn(8, 16)), step=0))
        >>> out.total.backward()
        >>> sorted(out.terms), bool(torch.isclose(out.total, sum(out.terms.values())))
        (['contrastive', 'isotropy'], True)

    Read the terms with :meth:`terms` (``(name, weight, loss)`` in spec order), not through the attributes.
    """

    def __init__(self, terms: Iterable[tuple[str, float, nn.Module]], args: dict[str, str] | None = None) -> None:
        super().__init__()
        terms = list(terms)
        self.args = dict(args or {})  # a term's ':ARG' (a wrapper's inner loss: matryoshka:contrastive)
        if not terms:
            raise ValueError("a composite loss needs at least one term")
        self.names = [name for name, _, _ in terms]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"loss terms must have distinct names, got {self.names}")
        self.weights = {name: float(weight) for name, weight, _ in terms}
        self.losses = nn.ModuleDict({name: module for name, _, module in terms})

    def terms(self) -> Iterator[tuple[str, float, nn.Module]]:
        """``(name, weight, loss)`` of every term, in the order of the spec."""
        for name in self.names:
            yield name, self.weights[name], self.losses[name]

    @property
    def needs(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for _, _, module in self.terms():
            out |= frozenset(getattr(module, "needs", {"mean"}))
        return out

    @property
    def spec(self) -> str:
        return "+".join(Term(name, self.weights[name], self.args.get(name)).format() for name in self.names)

    def weighted_terms(self, inputs: LossInputs, on_failure: FailureNamer | None = None) -> dict[str, torch.Tensor]:
        """Every term's *weighted* value by name. ``on_failure(name, loss, exc)``, when given, sees an exception a
        term raises and returns the exception to raise in its place (chained to it), or ``None`` to let it pass
        unchanged (training uses it to name the term and its package: ragcun.training.setup)."""
        out = {}
        for name, weight, module in self.terms():
            try:
                value = module(inputs)
            except Exception as exc:
                replacement = on_failure(name, module, exc) if on_failure is not None else None
                if replacement is None:
                    raise
                raise replacement from exc
            out[name] = weight * value
        return out

    def forward(self, inputs: LossInputs, *, on_failure: FailureNamer | None = None) -> LossOutput:
        terms = self.weighted_terms(inputs, on_failure)
        total = torch.stack(list(terms.values())).sum()
        return LossOutput(total, terms)

    def batch_requirement(self, negatives_per_query: int) -> tuple[int, str]:
        """The most demanding term's, named."""
        best = (1, "")
        for name, _, module in self.terms():
            term = getattr(module, "batch_requirement", None)
            n, why = term(negatives_per_query) if term is not None else (1, "")
            if n > best[0]:
                best = (n, f"its term {name} {why}")
        return best

    def get_config(self) -> dict:
        return {"spec": self.spec,
                "terms": {name: dict(module.get_config()) if hasattr(module, "get_config") else {}
                          for name, _, module in self.terms()}}


def build_loss(spec: str, settings: Settings | None = None, distance=None, registry=None,
               dim: int | None = None) -> CompositeLoss:
    """Build ``contrastive+0.05*isotropy`` (or any spec) into a :class:`CompositeLoss`.

    Each term is built through the registry with its settings (``settings["loss"][name]``, checked against
    its constructor) and, when its constructor takes them, the model's ``distance`` and embedding width
    ``dim`` injected. A wrapper (registered with ``wraps=True``, e.g. ``matryoshka:contrastive``) gets the
    loss its argument names, built the same way, as ``inner``. Term names in the result are the canonical
    registry names (``infonce`` becomes ``contrastive``).
    """
    from ragcun.components import _registry, build, inner_term, wraps_loss

    registry = _registry(registry)
    parsed = parse_spec(spec, composable=True)

    def build_term(term: Term) -> tuple[str, nn.Module, str | None]:
        entry = registry.get("loss", term.name)
        extra = {}
        arg = None
        if wraps_loss(entry):
            inner = inner_term(term, entry)
            inner_name, extra["inner"], inner_arg = build_term(inner)
            arg = Term(inner_name, 1.0, inner_arg).format()
            term = Term(term.name, term.weight)
        module = build("loss", term, settings, registry=registry, distance=distance, dim=dim, **extra)
        if not isinstance(module, nn.Module):
            raise ValueError(f"loss {entry.name!r} (from {entry.provider}) built a {type(module).__name__}, "
                             "not a torch.nn.Module")
        return entry.name, module, arg

    terms, args = [], {}
    for term in parsed.terms:
        name, module, arg = build_term(term)
        terms.append((name, term.weight, module))
        if arg is not None:
            args[name] = arg
    names = [name for name, _, _ in terms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"loss spec {spec!r} names {dupes[0]!r} twice (once by an alias); merge the weights")
    return CompositeLoss(terms, args)
