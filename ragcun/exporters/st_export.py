"""Write an EmbeddingModel as a sentence-transformers folder that ``SentenceTransformer(OUT)`` loads offline.

``OUT`` holds, besides the modules (:mod:`ragcun.exporters.st_modules`):

* ``config_sentence_transformers.json``: ``similarity_fn_name`` from the model's distance
  (:mod:`ragcun.exporters.st_similarity`) and the model's query/document prefixes as the prompts ``query`` and
  ``document``;
* ``README.md``: the model card (:mod:`ragcun.exporters.model_card`);
* ``ragcun_export.json``: where it came from (ragcun version, components, distance, what a mean-only export
  drops); ``ragcun_train_config.json``: the run's ``train_config.json``, when there is one.

It never writes ``ragcun.json``: the folder is a sentence-transformers model, and ``hf:OUT`` is how ragcun
loads it back.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ragcun.exporters.atomic_folder import EXPORT_MARKER
from ragcun.exporters.run_reports import RunFiles

EXPORT_INFO = EXPORT_MARKER  # "ragcun_export.json": also what lets --overwrite replace the folder
TRAIN_CONFIG_COPY = "ragcun_train_config.json"
# The oldest sentence-transformers that reads everything written here (similarity_fn_name came in 3.0);
# recording the installed version instead would make every older release warn that the folder is "newer".
MIN_ST_VERSION = "3.0.0"
UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
EMBEDDED_BASE = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ExportResult:
    path: Path
    similarity: str
    pipeline: str
    dim: int
    modules: list[dict[str, Any]]  # modules.json
    lost: str | None = None
    notes: list[str] = field(default_factory=list)
    run: RunFiles = field(default_factory=RunFiles)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_widths(modules: list[Any], dim: int) -> None:
    """Each Dense reads the width the module before it produces, and the last width is the model's."""
    from ragcun.exporters.st_modules import Dense, Pooling

    width = None
    for module in modules:
        if isinstance(module, Pooling):
            width = module.dim
        elif isinstance(module, Dense):
            if width is not None and module.in_features != width:
                raise ValueError(f"exported modules do not chain: a Dense reads {module.in_features} dims after "
                                 f"a module that gives {width}")
            width = module.out_features
    if width != dim:
        raise ValueError(f"exported modules give {width} dims, the model {dim}")


def base_model_id(encoder: Any) -> str | None:
    """The hub id of the model training started from, when ragcun knows it (the embedded encoder; its
    checkpoints keep the class, with config and tokenizer copied into the checkpoint's encoder/)."""
    from ragcun.encoders.embedded import AllMiniLML6V2

    if isinstance(encoder, AllMiniLML6V2) and not getattr(encoder, "post", None):
        return EMBEDDED_BASE
    return None


def _resumes(run: RunFiles) -> int:
    if run.train_config_path is None:
        return 0
    history = run.train_config_path.parent / "config_history.json"
    try:
        entries = json.loads(history.read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(entries, list):
        return 0
    return sum(1 for e in entries if isinstance(e, dict) and e.get("event") == "resume")


def sentence_transformers_config(model: Any, similarity: str) -> dict[str, Any]:
    """``config_sentence_transformers.json``: the similarity, and the model's prefixes as named prompts."""
    return {
        "__version__": {"sentence_transformers": MIN_ST_VERSION, "transformers": _version("transformers"),
                        "pytorch": _version("torch")},
        "model_type": "SentenceTransformer",
        "prompts": {"query": model.query_prefix, "document": model.document_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": similarity,
    }


def check_safetensors_only(folder: Path) -> None:
    unsafe = [p for p in folder.rglob("*") if p.suffix in UNSAFE_WEIGHTS]
    if unsafe:
        raise ValueError(f"the export would contain pickled weights ({unsafe[0].name}); only safetensors are written")


def export_sentence_transformers(model: Any, out: str | Path, *, mean_only: bool = False, overwrite: bool = False,
                                 source: Path | None = None, source_spec: str | None = None,
                                 training_command=None) -> ExportResult:
    """Export ``model``; ``source`` is the checkpoint/run folder it was loaded from (for the model card);
    ``training_command(train_config) -> (command line, unflagged settings)`` spells the training command in
    the card (``ragcun.training.command_line.training_command``; without it the card shows ``--config``)."""
    from ragcun import __version__
    from ragcun.components import provenance
    from ragcun.exporters.atomic_folder import atomic_folder, check_target
    from ragcun.exporters.model_card import CardInputs, render_model_card
    from ragcun.exporters.run_reports import find_run_files
    from ragcun.exporters.st_components import component_name, encoder_modules, head_modules
    from ragcun.exporters.st_modules import describe, write_modules
    from ragcun.exporters.st_similarity import distance_name, similarity_for

    out = Path(out).expanduser()
    check_target(out, overwrite=overwrite, protect=source)  # fail before any work
    similarity, lost = similarity_for(model.distance, mean_only=mean_only)
    distance = distance_name(model.distance)
    head = component_name(model.head)
    notes = []
    if mean_only and lost is None:
        notes.append(f"--mean-only changed nothing: distance {distance} reads only the mean vectors")
    if "logvar" in set(getattr(model.head, "provides", ())) and lost is None:
        notes.append(f"the head's log-variance output is not exported (distance {distance} does not use it)")
    modules = encoder_modules(model.encoder) + head_modules(model.head)
    check_widths(modules, model.dim)
    pipeline = describe(modules)

    run = find_run_files(source)
    command, unflagged = (training_command(run.train_config) if run.train_config and training_command
                          else (None, {}))
    spec = source_spec or (str(source) if source is not None else type(model.encoder).__name__)
    card = CardInputs(
        name=out.name, source=spec, pipeline=pipeline, dim=model.dim, similarity=similarity, distance=distance,
        encoder=component_name(model.encoder) + (f" ({model.encoder.path})" if getattr(model.encoder, "path", None)
                                                 else ""),
        head=head, head_config=model.head.get_config(), ragcun_version=__version__,
        base_model=base_model_id(model.encoder), query_prefix=model.query_prefix,
        document_prefix=model.document_prefix, lost=lost, notes=notes, run=run,
        train_config_copy=TRAIN_CONFIG_COPY if run.train_config_path else None, train_command=command,
        unflagged=unflagged, resumes=_resumes(run))
    info = {"exported_by": f"ragcun {__version__}", "format": "sentence-transformers", "source": spec,
            **{kind: {**provenance(part), "config": part.get_config()}
               for kind, part in (("encoder", model.encoder), ("head", model.head), ("distance", model.distance))},
            "similarity_fn_name": similarity, "mean_only": bool(mean_only), "lost": lost, "modules": pipeline}
    with atomic_folder(out, overwrite=overwrite, protect=source) as tmp:
        entries = write_modules(modules, tmp)
        (tmp / "config_sentence_transformers.json").write_text(
            json.dumps(sentence_transformers_config(model, similarity), indent=2) + "\n")
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        if run.train_config_path is not None:
            shutil.copy2(run.train_config_path, tmp / TRAIN_CONFIG_COPY)
        (tmp / "README.md").write_text(render_model_card(card), encoding="utf-8")
        check_safetensors_only(tmp)
    return ExportResult(out, similarity, pipeline, model.dim, entries, lost, notes, run)
