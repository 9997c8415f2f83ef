"""Component specs and per-component settings.

Grammar (only losses compose)::

    spec := term ("+" term)*
    term := [weight "*"] name [":" arg]

``contrastive+0.05*isotropy`` is two weighted loss terms; ``hf:/models/mpnet`` is the ``hf`` encoder with
the argument ``/models/mpnet``. An argument runs to the end of its term, so in a composable spec it may not
contain ``+``; in a single-term spec (encoders, heads, distances) it may contain anything.

Settings address a constructor parameter as ``kind.name.param`` (``loss.isotropy.num_slices=256``). They
come from a TOML file (``[loss.isotropy] num_slices = 256``) or repeatable ``--set`` flags, and are checked
against the constructor's signature before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping

from ragcun.registry import KINDS, normalize_kind, normalize_name

_NAME = r"[A-Za-z][A-Za-z0-9_.\-]*"  # a leading letter keeps names apart from numbers (1e+3)
_EXPONENT_PREFIX = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)[eE]\s*$")  # '1e' of a weight '1e+3'
_TERM_RE = re.compile(rf"^\s*(?:(?P<weight>[^*:]+?)\s*\*\s*)?(?P<name>{_NAME})\s*(?::(?P<arg>.*))?$", re.S)


@dataclass(frozen=True)
class Term:
    name: str
    weight: float = 1.0
    arg: str | None = None

    def format(self) -> str:
        out = self.name if self.arg is None else f"{self.name}:{self.arg}"
        if self.weight != 1.0:
            out = f"{_format_weight(self.weight)}*{out}"
        return out


@dataclass(frozen=True)
class Spec:
    terms: tuple[Term, ...]

    def format(self) -> str:
        return "+".join(t.format() for t in self.terms)

    __str__ = format

    @property
    def single(self) -> Term:
        if len(self.terms) != 1:
            raise ValueError(f"spec {self.format()!r} has {len(self.terms)} terms; only one is allowed here")
        return self.terms[0]


def _format_weight(weight: float) -> str:
    # repr() is the shortest string that round-trips to the same float
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def _parse_weight(text: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"bad weight {text!r} in spec {spec!r}: a weight is a number, as in '0.05*isotropy'") from None
    if not math.isfinite(weight):
        raise ValueError(f"bad weight {text!r} in spec {spec!r}: weights must be finite")
    return weight


def parse_term(text: str, spec: str | None = None) -> Term:
    spec = text if spec is None else spec
    match = _TERM_RE.match(text)
    if not text.strip():
        raise ValueError(f"empty term in spec {spec!r} (two '+' in a row, or a '+' at an end?)")
    if match is None:
        raise ValueError(
            f"cannot parse {text.strip()!r} in spec {spec!r}: expected [WEIGHT*]NAME[:ARG], e.g. "
            "'contrastive', '0.05*isotropy' or 'hf:/path/to/model'")
    weight = _parse_weight(match["weight"], spec) if match["weight"] is not None else 1.0
    arg = match["arg"]
    if arg is not None and arg == "":
        raise ValueError(f"empty argument after ':' in spec {spec!r}")
    return Term(normalize_name(match["name"]), weight, arg)


def parse_spec(text: str, *, composable: bool = True) -> Spec:
    """Parse a spec string. ``composable=False`` (encoders, heads, distances) allows exactly one term."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty spec: give a component name, e.g. 'gaussian' or 'contrastive+0.05*isotropy'")
    if not composable:
        term = parse_term(text)
        if term.weight != 1.0:
            raise ValueError(f"spec {text!r} has a weight, but only losses are weighted and composed")
        return Spec((term,))
    parts = text.split("+")
    terms = []
    i = 0
    # A '+' inside a number such as 1e+3 belongs to the weight, not the grammar.
    while i < len(parts):
        part = parts[i]
        while _EXPONENT_PREFIX.match(part) and i + 1 < len(parts):
            i += 1
            part = f"{part}+{parts[i]}"
        terms.append(parse_term(part, text))
        i += 1
    names = [t.name for t in terms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"spec {text!r} names {dupes[0]!r} twice; merge the weights into one term")
    return Spec(tuple(terms))


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------

Settings = dict[str, dict[str, dict[str, Any]]]  # kind -> name -> param -> value


def empty_settings() -> Settings:
    return {k: {} for k in KINDS}


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``256``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set_option(option: str) -> tuple[str, str, str, Any]:
    """``loss.isotropy.num_slices=256`` -> ``("loss", "isotropy", "num_slices", 256)``."""
    key, sep, value = option.partition("=")
    if not sep:
        raise ValueError(f"--set {option!r}: expected KIND.NAME.PARAM=VALUE, e.g. loss.isotropy.num_slices=256")
    parts = key.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--set {option!r}: the key must have three parts, KIND.NAME.PARAM "
                         f"(kinds: {', '.join(KINDS)})")
    kind, name, param = parts
    try:
        kind = normalize_kind(kind)
    except ValueError as exc:
        raise ValueError(f"--set {option!r}: {exc}") from None
    return kind, normalize_name(name), param.strip(), parse_value(value.strip())


def merge_settings(base: Settings, kind: str, name: str, param: str, value: Any) -> Settings:
    base.setdefault(kind, {}).setdefault(name, {})[param] = value
    return base


def settings_from_options(options: Iterable[str], base: Settings | None = None, *, origins: dict | None = None,
                          command: str | None = None) -> Settings:
    """``--set`` options merged into ``base`` (later ones win). ``origins``, when given, receives
    ``(kind, name, param) -> "[COMMAND ]--set OPTION"`` for error messages (``command``: e.g. ``"ragcun eval beir"``),
    the form :func:`ragcun.components.check_settings` starts its errors with."""
    settings = base if base is not None else empty_settings()
    for option in options:
        kind, name, param, value = parse_set_option(option)
        merge_settings(settings, kind, name, param, value)
        if origins is not None:
            origins[(kind, name, param)] = f"{command} --set {option}" if command else f"--set {option}"
    return settings


def settings_from_mapping(data: Mapping[str, Any], source: str = "config", *, other_tables: Iterable[str] | None = None,
                          origins: dict | None = None) -> Settings:
    """Component settings from a parsed TOML table ``{kind: {name: {param: value}}}``.

    Without ``other_tables`` tables that are not component kinds are ignored. With it (e.g. ``("train",)``),
    those tables are the caller's and any other table that is not a component kind is an error with a
    did-you-mean (a misspelt ``[los.isotropy]`` must not be silently ignored).
    ``origins``, when given, receives ``(kind, name, param) -> "FILE [kind.name]"`` for error messages.
    """
    settings = empty_settings()
    strict = other_tables is not None
    other_tables = tuple(other_tables or ())
    for raw_kind, names in data.items():
        if raw_kind in other_tables:
            continue
        try:
            kind = normalize_kind(raw_kind)
        except ValueError:
            if not strict:
                continue  # not a component table (e.g. [train]); the caller reads those
            choices = [*other_tables, *KINDS]
            if not isinstance(names, Mapping):
                raise ValueError(f"{source}: {raw_kind} = ... is outside any table; settings go in "
                                 + (f"[{other_tables[0]}] or " if other_tables else "")
                                 + "[KIND.NAME] tables") from None
            close = difflib.get_close_matches(raw_kind, choices, n=1)
            shown = (f"{raw_kind}." + next(iter(names))
                     if names and all(isinstance(v, Mapping) for v in names.values()) else raw_kind)
            hint = f"; did you mean [{close[0]}{shown[len(raw_kind):]}]?" if close else ""
            raise ValueError(f"{source}: unknown table [{shown}]{hint} (tables: "
                             + ", ".join([f"[{t}]" for t in other_tables] + [f"[{k}.NAME]" for k in KINDS])
                             + ")") from None
        if not isinstance(names, Mapping):
            raise ValueError(f"{source}: [{raw_kind}] must hold tables like [{raw_kind}.NAME]")
        for name, params in names.items():
            if not isinstance(params, Mapping):
                raise ValueError(f"{source}: [{raw_kind}.{name}] must be a table of PARAM = VALUE")
            for param, value in params.items():
                merge_settings(settings, kind, normalize_name(name), param, value)
                if origins is not None:
                    origins[(kind, normalize_name(name), param)] = f"{source} [{raw_kind}.{name}]"
    return settings


def load_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a ValueError naming it (``what``: "plan file" ...)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path}: not valid TOML ({exc})") from None


def check_params(target: Any, params: Mapping[str, Any], label: str,
                 reserved: Iterable[str] = ()) -> None:
    """Fail early, naming the setting, when ``params`` are not keyword arguments of ``target``'s constructor."""
    func = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(func)
    accepted = {n for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    settable = sorted(accepted - set(reserved))
    for param in params:
        if param not in settable:
            close = difflib.get_close_matches(param, settable, n=1)
            hint = f"; did you mean {label}.{close[0]}?" if close else ""
            raise ValueError(f"unknown setting {label}.{param}{hint} "
                             f"(settable: {', '.join(settable) or 'none'})")
    for param, value in params.items():
        check_value_type(sig.parameters[param], value, f"{label}.{param}")


_SIMPLE_TYPES = {"bool", "int", "float", "str", "None"}


def _annotation_types(parameter: inspect.Parameter) -> set[str] | None:
    """The simple types a parameter is annotated with (``int | None`` -> {int, None}); ``None`` when the
    annotation is missing or anything else (a plugin's own types are not second-guessed)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return {"bool"} if isinstance(parameter.default, bool) else None
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation)
        if annotation is None:
            return None
    names = {part.strip().removeprefix("typing.")
             for part in annotation.replace("Optional[", "").rstrip("]").split("|")}
    names = {"None" if n in ("NoneType", "none") else n for n in names}
    return names if names <= _SIMPLE_TYPES else None


def check_value_type(parameter: inspect.Parameter, value: Any, label: str) -> None:
    """A setting's value must be of the parameter's annotated type: booleans are ``true``/``false`` only (a
    bare ``no`` or a typo such as ``flase`` is not truthy), integers take no fractions."""
    types = _annotation_types(parameter)
    if types is None:
        return
    if value is None and ("None" in types or parameter.default is None):
        return
    if isinstance(value, bool):
        ok = "bool" in types
    elif isinstance(value, int):
        ok = bool(types & {"int", "float"})
    elif isinstance(value, float):
        ok = "float" in types
    elif isinstance(value, str):
        ok = "str" in types
    else:
        ok = False
    if ok:
        return
    wanted = ("true or false" if types - {"None"} == {"bool"} else
              "an integer (no fraction)" if types - {"None"} == {"int"} else
              "a number" if types - {"None"} <= {"int", "float"} else
              " or ".join(sorted({"bool": "true/false", "int": "an integer", "float": "a number", "str": "a string",
                                  "None": "unset"}[t] for t in types)))
    raise ValueError(f"{label} must be {wanted}, got {value!r}")
