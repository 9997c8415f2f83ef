"""Turn what a user types after ``--model`` into an EmbeddingModel.

* a ragcun checkpoint folder (it holds ``ragcun.json``): loaded with its own head and distance;
* ``hf:PATH`` or a registered encoder name (``all-minilm-l6-v2``): the base model evaluated the way its
  authors do, i.e. the identity head and the sentence-transformers similarity (cosine; dot when the model
  does not normalize and says so in ``config_sentence_transformers.json``).
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


def resolve_model(text: str, *, distance: str | None = None, settings: Settings | None = None,
                  **kwargs: Any) -> EmbeddingModel:
    path = Path(text).expanduser()
    if is_checkpoint(text):
        model = load(path)
        if distance is not None:
            from ragcun.components import build, check_compatible

            model.distance = build("distance", distance, settings)
            check_compatible(model.head, model.distance, head_name="checkpoint head", distance_name=distance)
        return model
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


def _authors_similarity(model: EmbeddingModel, settings: Settings | None):
    from ragcun.components import build

    folder = Path(getattr(model.encoder, "path", ""))
    name = "cosine"
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        declared = json.loads(st_cfg.read_text()).get("similarity_fn_name")
        name = _ST_SIMILARITY.get(declared or "cosine", "cosine")
    return build("distance", name, settings)
