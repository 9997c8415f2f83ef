"""Build components from specs and settings, through the registry (the only way ragcun instantiates them)."""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

from ragcun.registry import Entry, Registry
from ragcun.spec import Settings, Term, check_params, parse_spec

# Arguments ragcun itself passes to constructors; users may not set them.
RESERVED = {"encoder": ("init_weights",), "head": ("in_dim",), "loss": ("distance", "dim", "inner"), "distance": (),
            "evaluator": ()}
# The constructor parameter that receives a term's ':ARG' (hf:PATH).
ARG_PARAM = {"encoder": "path"}
# A loss registered with ``wraps=True`` (``matryoshka``) takes another loss term as its ':ARG'
# (``matryoshka:contrastive``): ragcun.losses.composite.build_loss builds that term and passes it as ``inner``.
WRAPS = "wraps"


def wraps_loss(entry: Entry) -> bool:
    """True for a loss whose ':ARG' is another loss term (a wrapper such as ``matryoshka``)."""
    return entry.kind == "loss" and bool(entry.extra.get(WRAPS))


def inner_term(term: Term, entry: Entry) -> Term:
    """The loss term a wrapper's ':ARG' names (``matryoshka:contrastive`` -> ``contrastive``), without a weight."""
    from ragcun.spec import parse_term

    if term.arg is None:
        raise ValueError(f"loss {entry.name!r} wraps another loss: give it as {entry.name}:LOSS, e.g. "
                         f"{entry.name}:contrastive")
    inner = parse_term(term.arg, term.format())
    if inner.weight != 1.0:
        raise ValueError(f"loss spec {term.format()!r}: the wrapped loss takes no weight; weigh the wrapper "
                         f"({inner.weight!r}*{entry.name}:{inner.name})")
    return inner


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from ragcun.plugins import get_registry

    return get_registry()


def term_config(kind: str, term: Term, entry: Entry, settings: Settings | None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the settings for ``kind.name`` (under its canonical name or the alias used) with a term's ARG."""
    config: dict[str, Any] = {}
    by_name = (settings or {}).get(kind, {})
    for key in (entry.name, *entry.aliases, term.name):
        config.update(by_name.get(key, {}))
    if term.arg is not None and not (kind == "loss" and entry.extra.get(WRAPS)):
        param = ARG_PARAM.get(kind)
        if param is None:
            from ragcun.registry import PLURALS

            wrapper = " (a wrapper such as matryoshka takes a loss: matryoshka:contrastive)" if kind == "loss" else ""
            raise ValueError(f"{kind} spec '{term.format()}' has an argument, but {PLURALS[kind]} take none{wrapper}; "
                             f"use --set {kind}.{entry.name}.PARAM=VALUE")
        config[param] = term.arg
    config.update(extra or {})
    return config


def build(kind: str, spec: str | Term, settings: Settings | None = None, *, registry: Registry | None = None,
          **injected: Any) -> Any:
    """Build one component (e.g. ``build("head", "gaussian", settings, in_dim=384)``)."""
    registry = _registry(registry)
    term = spec if isinstance(spec, Term) else parse_spec(spec, composable=False).single
    entry = registry.get(kind, term.name)
    target = entry.load()
    config = term_config(kind, term, entry, settings)
    check_params(target, config, f"{kind}.{entry.name}", reserved=RESERVED.get(kind, ()))
    accepted = inspect.signature(target).parameters
    kwargs = {k: v for k, v in injected.items()
              if k in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values())}
    try:
        component = target(**config, **kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {kind} {entry.name!r} with {config}: {exc}") from None
    record_entry(component, entry)
    return component


# -- provenance: which registry entry built a component (only this module knows where it is kept) ---------------
_ENTRY_ATTRIBUTE = "_ragcun_entry"  # travels with the object (copies, pickles); read it through entry_of


def record_entry(component: Any, entry: Entry) -> None:
    """Remember that ``entry`` built ``component`` (:func:`build` does it for every component it builds)."""
    setattr(component, _ENTRY_ATTRIBUTE, entry)


def entry_of(component: Any) -> Entry | None:
    """The registry entry that built ``component``, or ``None`` (built directly, not through :func:`build`)."""
    return getattr(component, _ENTRY_ATTRIBUTE, None)


def component_name(component: Any) -> str:
    """The registry name a component was built under, or its class name when it was built directly."""
    entry = entry_of(component)
    return entry.name if entry is not None else type(component).__name__


def provenance(component: Any) -> dict[str, Any]:
    """Registry name and supplying distribution of a built component, for ``ragcun.json``."""
    entry = entry_of(component)
    if entry is None:
        return {"name": None, "provider": "unknown", "provider_version": None}
    try:
        version = metadata.version(entry.provider)
    except metadata.PackageNotFoundError:
        version = None
    return {"name": entry.name, "provider": entry.provider, "provider_version": version}


def check_compatible(head: Any, distance: Any, *, head_name: str, distance_name: str) -> None:
    """A distance (or loss) that needs ``logvar`` fails before any work starts, naming the fix."""
    provides = set(getattr(head, "provides", {"mean"}))
    missing = set(getattr(distance, "needs", {"mean"})) - provides
    if missing:
        fix = ("--head gaussian --set head.gaussian.logvar=true" if "logvar" in missing
               else "a head that provides them")
        raise ValueError(f"{distance_name!r} needs {', '.join(sorted(missing))}, but head {head_name!r} "
                         f"provides only {', '.join(sorted(provides))}; use {fix}")


def check_settings(settings: Settings | None, in_use: dict[str, list[str]] | None = None, *,
                   registry: Registry | None = None, origins: dict | None = None) -> None:
    """Check every ``kind.name.param`` setting names a registered component and a constructor argument,
    and, given ``in_use`` (kind -> canonical names this run builds), that it addresses a component in use:
    a setting that would be silently ignored is an error. ``origins`` maps ``(kind, name, param)`` to where the
    setting came from (``--set ...``, ``FILE [kind.name]``); errors start with it."""
    registry = _registry(registry)
    for kind, by_name in (settings or {}).items():
        for name, params in by_name.items():
            for param, value in params.items():
                where = (origins or {}).get((kind, name, param)) or f"setting {kind}.{name}.{param}={value!r}"
                try:
                    entry = registry.get(kind, name)
                    check_params(entry.load(), {param: value}, f"{kind}.{entry.name}",
                                 reserved=RESERVED.get(kind, ()))
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if in_use is not None and entry.name not in in_use.get(kind, []):
                    used = ", ".join(repr(n) for n in in_use.get(kind, [])) or "none"
                    raise ValueError(f"{where}: this run does not use {kind} {entry.name!r} (it uses {used}), "
                                     "so the setting would be ignored; remove it or change the run's "
                                     f"--{kind}")


def components_in_use(specs: dict[str, str], *, registry: Registry | None = None) -> dict[str, list[str]]:
    """kind -> the canonical names a run builds, from its specs (``{"loss": "contrastive+isotropy", ...}``);
    an unknown name fails here with a did-you-mean."""
    registry = _registry(registry)

    def names(kind: str, term: Term) -> list[str]:  # a wrapper's inner loss is built too (with its settings)
        entry = registry.get(kind, term.name)
        return [entry.name] + (names(kind, inner_term(term, entry)) if wraps_loss(entry) else [])

    out: dict[str, list[str]] = {}
    for kind, spec in specs.items():
        if spec:
            used = out.setdefault(kind, [])
            for term in parse_spec(spec, composable=kind == "loss").terms:
                used += [n for n in names(kind, term) if n not in used]
    return out
