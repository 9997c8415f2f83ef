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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ragcun.model import CONFIG_FILE, EmbeddingModel, load
from ragcun.spec import Settings, parse_spec

# the sentence-transformers similarity_fn_name values that have a ragcun distance of the same name
AUTHORS_SIMILARITIES = ("cosine", "dot", "euclidean")


def is_checkpoint(text: str) -> bool:
    return (Path(text).expanduser() / CONFIG_FILE).is_file()


def classify(text: str) -> tuple[str, str, str | None]:
    """What a ``--model`` string names, before anything is loaded: ``("checkpoint", folder, None)``,
    ``("fresh-head", encoder spec, head spec)`` or ``("base", encoder spec, None)``; a folder that is neither a
    checkpoint nor a transformers model is a ValueError."""
    text = str(text).strip()
    if not text:
        raise ValueError("--model is empty; give a checkpoint folder, hf:PATH, an encoder name or ENCODER+HEAD")
    path = Path(text).expanduser()
    if is_checkpoint(text):
        return "checkpoint", text, None
    if "+" in text and not path.exists():
        encoder, head = (part.strip() for part in text.rsplit("+", 1))
        if not encoder or not head:
            raise ValueError(f"--model {text}: expected ENCODER+HEAD, e.g. all-minilm-l6-v2+gaussian")
        folder = Path(encoder).expanduser()
        return "fresh-head", (f"hf:{folder}" if ":" not in encoder and folder.is_dir() else encoder), head
    if path.is_dir() and ":" not in text:
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {text}: the folder is neither a ragcun checkpoint (no {CONFIG_FILE}) nor a "
                             "transformers model (no config.json)")
        text = f"hf:{path}"
    return "base", text, None


def components_built_for(models: Iterable[str], *, distance: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
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
        return _fresh_head(encoder, head, distance, settings, seed)
    term = parse_spec(encoder, composable=False).single
    model = EmbeddingModel.build(term.format(), "identity", distance or "cosine", settings, **kwargs)
    if distance is None:
        model.distance = _authors_similarity(model, settings)
    return model


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
