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
from pathlib import Path
from typing import Any

from ragcun.model import CONFIG_FILE, EmbeddingModel, load
from ragcun.spec import Settings, parse_spec

_ST_SIMILARITY = {"cosine": "cosine", "dot": "dot", "euclidean": "euclidean"}


def is_checkpoint(text: str) -> bool:
    return (Path(text).expanduser() / CONFIG_FILE).is_file()


def resolve_model(model_or_spec: Any, *, distance: str | None = None, settings: Settings | None = None,
                  seed: int = 0, **kwargs: Any) -> EmbeddingModel:
    if isinstance(model_or_spec, EmbeddingModel):
        return _with_distance(model_or_spec, distance, settings, "model head")
    text = str(model_or_spec).strip()
    if not text:
        raise ValueError("--model is empty; give a checkpoint folder, hf:PATH, an encoder name or ENCODER+HEAD")
    path = Path(text).expanduser()
    if is_checkpoint(text):
        return _with_distance(load(path), distance, settings, "checkpoint head")
    if "+" in text and not path.exists():
        return _fresh_head(text, distance, settings, seed)
    if path.is_dir() and ":" not in text:
        if (path / "config.json").is_file():
            text = f"hf:{path}"
        else:
            raise ValueError(f"--model {text}: the folder is neither a ragcun checkpoint (no {CONFIG_FILE}) nor a "
                             "transformers model (no config.json)")
    term = parse_spec(text, composable=False).single
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


def _fresh_head(text: str, distance: str | None, settings: Settings | None, seed: int) -> EmbeddingModel:
    import torch

    encoder, head = (part.strip() for part in text.rsplit("+", 1))
    if not encoder or not head:
        raise ValueError(f"--model {text}: expected ENCODER+HEAD, e.g. all-minilm-l6-v2+gaussian")
    from ragcun.plugins import get_registry

    get_registry().get("head", head)  # an unknown head fails here, listing the known ones
    folder = Path(encoder).expanduser()
    if ":" not in encoder and folder.is_dir():
        encoder = f"hf:{folder}"
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
        name = _ST_SIMILARITY.get(declared or "cosine", "cosine")
    return build("distance", name, settings)
