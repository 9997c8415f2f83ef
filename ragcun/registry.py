"""The component registry: one table per kind, filled by plugins through the ``register_*`` hooks.

Names are short kebab-case; lookups normalize case and ``_`` so ``Sq_Euclidean`` finds ``sqeuclidean``'s
alias ``sq-euclidean``. A miss says what to type instead; a duplicate names both providers.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

KINDS = ("encoder", "head", "loss", "distance", "evaluator")
PLURALS = {"encoder": "encoders", "head": "heads", "loss": "losses", "distance": "distances",
           "evaluator": "evaluators"}

_NAME_RE = re.compile(r"^[a-z][a-z0-9.\-]*$")


class RegistryError(ValueError):
    """Base class for registry errors (they are ``ValueError`` so CLI code can report them plainly)."""


class UnknownComponentError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DuplicateComponentError(RegistryError):
    pass


# Registration metadata beyond the named arguments of Registry.register, by kind: only these keys are read
# (ragcun.components), so any other key is a misspelling (``provide=`` for ``provides=``) that would otherwise be
# kept and ignored without a word.
METADATA = {"loss": {"wraps": "True: the loss takes another loss term as its ':ARG' (matryoshka:contrastive)"}}
_REGISTER_ARGUMENTS = ("aliases", "summary", "provides", "needs")


def _check_metadata(kind: str, name: str, provider: str, extra: dict[str, Any]) -> None:
    known = METADATA.get(kind, {})
    for key in extra:
        if key in known:
            continue
        close = difflib.get_close_matches(key, [*known, *_REGISTER_ARGUMENTS], n=1)
        allowed = ", ".join(f"{k} ({why})" for k, why in known.items()) or "none"
        raise RegistryError(
            f"{provider} registered {kind} {name!r} with unknown metadata {key}="
            + (f" (did you mean {close[0]}=?)" if close else "")
            + f"; register() takes aliases, summary, provides and needs, and for a {kind} these extras: {allowed}")


def normalize_name(name: str) -> str:
    """Canonical form of a component name: lower case, ``_`` and spaces become ``-``. Idempotent."""
    return re.sub(r"[\s_]+", "-", name.strip()).lower()


def normalize_kind(kind: str) -> str:
    k = normalize_name(kind)
    for singular, plural in PLURALS.items():
        if k in (singular, plural):
            return singular
    raise RegistryError(f"unknown component kind {kind!r}; choose one of: {', '.join(KINDS)}")


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    target: Any  # a class/callable, or "module:attr" imported on first use
    provider: str  # the distribution (or plugin name) that registered it
    aliases: tuple[str, ...] = ()
    summary: str = ""
    provides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_path(self) -> str:
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    def load(self) -> Any:
        """Import (if needed) and return the component's class or factory."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} {self.name!r} (from {self.provider}) points at {self.target!r}, "
                f"which cannot be imported: {exc}"
            ) from exc
        self.target = obj
        return obj

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "aliases": list(self.aliases),
                "provider": self.provider, "target": self.target_path, "summary": self.summary,
                "provides": list(self.provides), "needs": list(self.needs)}


class Registry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}

    # -- registration ---------------------------------------------------------------------------
    def register(self, kind: str, name: str, target: Any, *, provider: str = "unknown",
                 aliases: Iterable[str] = (), summary: str = "", provides: Iterable[str] = (),
                 needs: Iterable[str] = (), **extra: Any) -> Entry:
        kind = normalize_kind(kind)
        canonical = normalize_name(name)
        if not _NAME_RE.match(canonical):
            raise RegistryError(
                f"{provider} tried to register {kind} {name!r}: names are kebab-case: a letter, then letters, digits, "
                "'-' and '.'")
        if not (isinstance(target, str) and ":" in target) and not callable(target):
            raise RegistryError(
                f"{provider} registered {kind} {name!r} with target {target!r}; "
                "give a class or a 'module:Class' string")
        _check_metadata(kind, name, provider, extra)
        entry = Entry(kind, canonical, target, provider, tuple(normalize_name(a) for a in aliases),
                      summary, tuple(provides), tuple(needs), dict(extra))
        for key in (canonical, *entry.aliases):
            existing = self._lookup(kind, key)
            if existing is not None:
                raise DuplicateComponentError(
                    f"{kind} name {key!r} is registered twice: by {existing.provider} "
                    f"({existing.target_path}) and by {provider} ({entry.target_path})")
        self._entries[kind][canonical] = entry
        for alias in entry.aliases:
            self._aliases[kind][alias] = canonical
        return entry

    def unregister_provider(self, provider: str) -> None:
        for kind in KINDS:
            for name in [n for n, e in self._entries[kind].items() if e.provider == provider]:
                del self._entries[kind][name]
            self._aliases[kind] = {a: n for a, n in self._aliases[kind].items() if n in self._entries[kind]}

    # -- lookup ---------------------------------------------------------------------------------
    def _lookup(self, kind: str, key: str) -> Entry | None:
        if key in self._entries[kind]:
            return self._entries[kind][key]
        target = self._aliases[kind].get(key)
        return self._entries[kind][target] if target else None

    def get(self, kind: str, name: str) -> Entry:
        kind = normalize_kind(kind)
        entry = self._lookup(kind, normalize_name(name))
        if entry is None:
            raise UnknownComponentError(self._unknown_message(kind, name))
        return entry

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, name = item
        return self._lookup(normalize_kind(kind), normalize_name(name)) is not None

    def _unknown_message(self, kind: str, name: str) -> str:
        known = list(self._entries[kind]) + list(self._aliases[kind])
        close = difflib.get_close_matches(normalize_name(name), known, n=3, cutoff=0.6)
        msg = f"unknown {kind} {name!r}"
        if close:
            names = [self._lookup(kind, c).name for c in close]
            names = list(dict.fromkeys(names))
            msg += "; did you mean " + " or ".join(repr(n) for n in names) + "?"
        elif not known:
            msg += f"; no {PLURALS[kind]} are registered (is a plugin failing to load? see `ragcun plugins`)"
        return msg + f" (see `ragcun list {PLURALS[kind]}`)"

    def entries(self, kind: str | None = None, pattern: str | None = None) -> list[Entry]:
        """Entries of one kind (or all), optionally filtered by a glob or substring over name and aliases."""
        kinds = [normalize_kind(kind)] if kind else list(KINDS)
        out = []
        for k in kinds:
            for entry in sorted(self._entries[k].values(), key=lambda e: e.name):
                if pattern is None or _matches(entry, pattern):
                    out.append(entry)
        return out


def _matches(entry: Entry, pattern: str) -> bool:
    pattern = normalize_name(pattern)
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return any(fnmatch.fnmatchcase(n, glob) for n in (entry.name, *entry.aliases))
