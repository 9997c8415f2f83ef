"""Turn what a user types after ``--model`` into an EmbeddingModel: the one place every command does it.

* an ``EmbeddingModel`` (from Python): used as it is;
* a ragcun checkpoint folder (it holds ``ragcun.json``): loaded with its own head and distance;
* ``hf:PATH``, a transformers folder or a registered encoder name (``all-minilm-l6-v2``): the base model
  evaluated the way its authors do, i.e. the identity head and the sentence-transformers similarity (cosine;
  dot when the model does not normalize and says so in ``config_sentence_transformers.json``);
* ``ENCODER+HEAD`` (``all-minilm-l6-v2+gaussian``): the encoder with a freshly initialised head, seeded by
  ``seed`` (distance euclidean), e.g. to see what an untrained head does to isotropy.

``distance`` replaces the model's distance (checked against what its head provides).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ragcun.model import CONFIG_FILE, EmbeddingModel, load
from ragcun.spec import Settings, parse_spec

# the sentence-transformers similarity_fn_name values that have a ragcun distance of the same name
AUTHORS_SIMILARITIES = ("cosine", "dot", "euclidean")


def is_checkpoint(text: str) -> bool:
    return (Path(text).expanduser() / CONFIG_FILE).is_file()


MODEL_FORMS = "a ragcun checkpoint or run folder, hf:PATH, an encoder name or ENCODER+HEAD"
_SPEC_WITH_ARG = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*:")  # NAME:ARG (hf:/models/x), not a path


def looks_like_path(text: str) -> bool:
    """Is a ``--model`` string meant as a path? Yes when it names an existing file or folder, contains a path
    separator or starts with ``.`` or ``~``; a ``NAME:ARG`` spec (``hf:/models/x``) is not, whatever its
    argument holds."""
    if os.path.lexists(os.path.expanduser(text)):
        return True
    if _SPEC_WITH_ARG.match(text):
        return False
    return "/" in text or os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith((".", "~"))


def classify(text: str, *, label: str = "--model") -> tuple[str, str, str | None]:
    """What a ``--model`` string names, before anything is loaded: ``("checkpoint", folder, None)``,
    ``("fresh-head", encoder spec, head spec)`` or ``("base", encoder spec, None)``.

    A string that looks like a path (:func:`looks_like_path`) is a path: one that does not exist, or is not a
    model (a run that has not finished, a file, another folder), is a ValueError that says what it is and what
    to pass instead (``label`` names the argument in it: ``--model``, ``RUN_OR_MODEL``). A checkpoint's step
    folder (``RUN/checkpoints/step-N``) stands for the model saved in it. The one classifier of model strings:
    :func:`resolve_model` and :func:`resolve_model_and_folder` (``ragcun export``) both use it."""
    text = str(text).strip()
    if not text:
        raise ValueError(f"{label} is empty; give {MODEL_FORMS}")
    path = Path(text).expanduser()
    if "+" in text and not os.path.lexists(path):
        encoder, head = (part.strip() for part in text.rsplit("+", 1))
        if not encoder or not head:
            raise ValueError(f"{label} {text}: expected ENCODER+HEAD, e.g. all-minilm-l6-v2+gaussian")
        if looks_like_path(encoder):
            what, folder = _path_kind(encoder, f"{label} {text}: the encoder")
            if what == "checkpoint":
                raise ValueError(f"{label} {text}: {encoder} is a ragcun checkpoint, which has its own head; "
                                 f"ENCODER+HEAD takes an encoder (an encoder name, hf:PATH or a transformers folder)")
            return "fresh-head", f"hf:{folder}", head
        return "fresh-head", encoder, head
    if looks_like_path(text):
        what, folder = _path_kind(text, f"{label} {text}")
        return (what, folder, None) if what == "checkpoint" else ("base", f"hf:{folder}", None)
    return "base", text, None


def _path_kind(text: str, where: str) -> tuple[str, str]:
    """``("checkpoint", folder)`` or ``("transformers", folder)`` for a path, else a ValueError saying what it is
    and what to pass instead."""
    from ragcun.training.checkpoint import CHECKPOINTS, MODEL_FOLDER, list_checkpoints

    path = Path(text).expanduser()
    if not os.path.lexists(path):
        raise ValueError(f"{where}: no such folder{_close_names(path)}; give {MODEL_FORMS}")
    if not path.exists():
        raise ValueError(f"{where}: a symbolic link to {os.readlink(path)}, which does not exist")
    if path.is_file():
        if path.name in (CONFIG_FILE, "model.safetensors", "config.json"):
            return _path_kind(str(path.parent), f"{where} (a file of the model in {path.parent})")
        raise ValueError(f"{where}: a file, not a model folder; give {MODEL_FORMS}")
    if (path / CONFIG_FILE).is_file():
        return "checkpoint", text
    if (path / MODEL_FOLDER / CONFIG_FILE).is_file():  # RUN/checkpoints/step-N: the model saved in it
        return "checkpoint", str(Path(text) / MODEL_FOLDER)
    if (path / CHECKPOINTS).is_dir():
        found = list_checkpoints(path)
        if found:
            raise ValueError(f"{where}: this run has no final model yet ({CONFIG_FILE} is written when training "
                             f"finishes); its latest checkpoint is {Path(text) / CHECKPOINTS / found[-1].folder.name}:"
                             " pass that")
        raise ValueError(f"{where}: this run has no final model yet ({CONFIG_FILE} is written when training "
                         f"finishes) and no complete checkpoint either; `ragcun train --output-dir {text} --resume` "
                         "continues it")
    if (path / "config.json").is_file():
        return "transformers", str(path)
    raise ValueError(f"{where}: the folder is neither a ragcun checkpoint (no {CONFIG_FILE}) nor a transformers "
                     f"model (no config.json) nor a training run (no {CHECKPOINTS}/); give {MODEL_FORMS}")


def _close_names(path: Path, typed: str | None = None) -> str:
    """``" (did you mean runs/nf-ddp?)"`` when the folder ``path`` would be in holds a similar name, or ``typed``
    with ``_`` for ``/`` names something that exists (``runs_nf-ddp`` for ``runs/nf-ddp``)."""
    import difflib

    if typed is not None and "_" in typed and os.path.lexists(typed.replace("_", "/")):
        return f" (did you mean {typed.replace('_', '/')}?)"
    parent = path.expanduser().parent
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" (did you mean {path.parent / close[0] if str(path.parent) != '.' else close[0]}?)" if close else ""


def components_built_for(models: Iterable[str], *,
                         distance: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """``(kind -> the components resolve_model builds with settings for these --model specs, the specs that are
    checkpoints)``, without loading anything, for checking ``--set`` settings first. A checkpoint is loaded with
    the settings it was saved with: only a ``distance`` that replaces its own takes settings. A base model's
    similarity is read from its folder when it is built, so each one it may be (cosine, dot, euclidean) counts."""
    from ragcun.components import components_in_use

    in_use: dict[str, list[str]] = {}
    checkpoints: list[str] = []

    def add(specs: dict[str, str]) -> None:
        for kind, names in components_in_use(specs).items():
            in_use.setdefault(kind, [])
            in_use[kind] += [n for n in names if n not in in_use[kind]]

    for model in models:
        what, encoder, head = classify(model)
        if distance is not None:
            add({"distance": distance})
        if what == "checkpoint":
            checkpoints.append(encoder)
            continue
        add({"encoder": encoder, "head": head or "identity"})
        if distance is None:
            for name in (["euclidean"] if what == "fresh-head" else AUTHORS_SIMILARITIES):
                add({"distance": name})
    return in_use, checkpoints


def resolve_model(model_or_spec: Any, *, distance: str | None = None, settings: Settings | None = None,
                  seed: int = 0, **kwargs: Any) -> EmbeddingModel:
    if isinstance(model_or_spec, EmbeddingModel):
        return _with_distance(model_or_spec, distance, settings, "model head")
    what, encoder, head = classify(model_or_spec)
    if what == "checkpoint":
        return _with_distance(load(Path(encoder).expanduser()), distance, settings, "checkpoint head")
    if what == "fresh-head":
        _check_registered("encoder", encoder)
        return _fresh_head(encoder, head, distance, settings, seed)
    _check_registered("encoder", encoder)
    term = parse_spec(encoder, composable=False).single
    model = EmbeddingModel.build(term.format(), "identity", distance or "cosine", settings, **kwargs)
    if distance is None:
        model.distance = _authors_similarity(model, settings)
    return model


def resolve_model_and_folder(model_or_spec: Any, *, label: str = "--model") -> tuple[EmbeddingModel, Path | None]:
    """:func:`resolve_model` (no distance, settings or seed), with the folder the model was loaded from: a ragcun
    checkpoint or run folder (a checkpoint's ``RUN/checkpoints/step-N`` stands for its ``model`` folder), ``None``
    for an ``EmbeddingModel`` or a base model (``hf:PATH``, a transformers folder, an encoder name: the identity
    head and its authors' similarity). ``ragcun export`` uses it (``label="RUN_OR_MODEL"``): the model card reads
    the run beside the folder."""
    if isinstance(model_or_spec, EmbeddingModel):
        return model_or_spec, None
    what, spec, _ = classify(os.fspath(model_or_spec), label=label)
    if what == "checkpoint":
        folder = Path(spec).expanduser()
        return load(folder), folder
    return resolve_model(os.fspath(model_or_spec)), None


def _check_registered(kind: str, spec: str) -> None:
    """An unknown component name is reported as typed (the registry would show its normalized form), and said
    not to be a file or folder either (a mistyped path without a separator reads as a name)."""
    from ragcun.plugins import get_registry
    from ragcun.registry import UnknownComponentError

    name = spec.split(":", 1)[0].strip() if _SPEC_WITH_ARG.match(spec) else spec.strip()
    try:
        get_registry().get(kind, name)
    except UnknownComponentError as exc:
        message = str(exc)
        if name == spec.strip():
            message += f", and there is no file or folder named {spec!r} here{_close_names(Path(spec), spec)}"
        raise UnknownComponentError(message) from None


def _with_distance(model: EmbeddingModel, distance: str | None, settings: Settings | None, what: str):
    if distance is not None:
        from ragcun.components import build, check_compatible

        model.distance = build("distance", distance, settings)
        check_compatible(model.head, model.distance, head_name=what, distance_name=distance)
    return model


def _fresh_head(encoder: str, head: str, distance: str | None, settings: Settings | None, seed: int) -> EmbeddingModel:
    import torch

    from ragcun.plugins import get_registry

    get_registry().get("head", head)  # an unknown head fails here, listing the known ones
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbeddingModel.build(encoder, head, distance or "euclidean", settings)


def _authors_similarity(model: EmbeddingModel, settings: Settings | None):
    from ragcun.components import build

    folder = Path(getattr(model.encoder, "path", ""))
    name = "cosine"
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        declared = json.loads(st_cfg.read_text()).get("similarity_fn_name")
        name = declared if declared in AUTHORS_SIMILARITIES else "cosine"
    return build("distance", name, settings)
