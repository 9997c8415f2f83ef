"""EmbeddingModel = encoder + head (+ the distance it is trained and searched with).

Checkpoints are a folder::

    model.safetensors   every weight (encoder and head), loaded without unpickling anything
    ragcun.json         registry names, configs, versions and which distribution supplied each component
    encoder/            the encoder's config and tokenizer files, so the folder is self-contained
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ragcun import __version__
from ragcun.components import build, check_compatible, provenance
from ragcun.embedding import Embedding
from ragcun.files import atomic_path, ordinary_permissions, output_error
from ragcun.registry import UnknownComponentError
from ragcun.spec import Settings

CONFIG_FILE = "ragcun.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
PROGRESS_THRESHOLD = 1000  # texts; below this a progress bar is noise


class EmbeddingModel(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module, distance: Any, *, query_prefix: str = "",
                 document_prefix: str = "") -> None:
        super().__init__()
        self.training_token_limit: int | None = None  # training's --max-seq-length (not saved)
        self.encoder = encoder
        self.head = head
        self.distance = distance
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, encoder: str = "all-minilm-l6-v2", head: str = "gaussian", distance: str = "euclidean",
              settings: Settings | None = None, *, query_prefix: str = "", document_prefix: str = "",
              registry=None) -> EmbeddingModel:
        """Build from specs, e.g. ``EmbeddingModel.build("hf:/models/mpnet", "gaussian", "euclidean")``."""
        enc = build("encoder", encoder, settings, registry=registry)
        hd = build("head", head, settings, registry=registry, in_dim=enc.dim)
        dist = build("distance", distance, settings, registry=registry)
        check_compatible(hd, dist, head_name=head, distance_name=distance)
        return cls(enc, hd, dist, query_prefix=query_prefix, document_prefix=document_prefix)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.head.out_dim)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, features: dict[str, torch.Tensor]) -> Embedding:
        return self.head(self.encoder(features))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.training_token_limit is not None:
            return self.encoder.tokenize(texts, max_length=self.training_token_limit)
        return self.encoder.tokenize(texts)

    def limit_training_tokens(self, limit: int | None) -> None:
        """Truncate texts to ``limit`` tokens in this process (training's ``--max-seq-length``); not saved with the
        model, which keeps its encoder's own limit. The encoder's ``tokenize`` must take ``max_length``."""
        import inspect

        if limit is not None and "max_length" not in inspect.signature(self.encoder.tokenize).parameters:
            raise ValueError(f"--max-seq-length: the encoder {type(self.encoder).__name__} does not take a token limit "
                             "(its tokenize() has no max_length); leave --max-seq-length out")
        self.training_token_limit = limit

    def embed(self, texts: list[str]) -> Embedding:
        """Embed with autograd (for training): tokenize, move to the model's device, forward."""
        features = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        return self(features)

    def encode_embeddings(self, texts: Sequence[str], batch_size: int = 32, *, show_progress: bool | None = None,
                          autocast_dtype: torch.dtype | None = None, description: str = "Encoding") -> Embedding:
        """Embed without autograd, in the input order, as float32 on the CPU.

        Texts are sorted by token count so each batch pads to similar lengths (the dominant cost), then
        restored (ragcun.encoding.encode, the one encoding function; this process encodes all of them).
        """
        from ragcun.encoding import encode

        texts = list(texts)
        show = len(texts) >= PROGRESS_THRESHOLD if show_progress is None else show_progress
        with _progress(show, description, len(texts)) as advance:
            return encode(self, texts, batch_size, autocast_dtype=autocast_dtype, progress=advance, shard=False)

    def encode(self, texts: Sequence[str] | str, batch_size: int = 32, **kwargs: Any) -> np.ndarray:
        """Mean vectors as a float32 array ``(N, D)`` (a single string gives ``(D,)``)."""
        single = isinstance(texts, str)
        emb = self.encode_embeddings([texts] if single else texts, batch_size, **kwargs)
        out = emb.mean.numpy().astype(np.float32, copy=False)
        return out[0] if single else out

    def fit_head(self, documents: Sequence[str], batch_size: int = 32, *, sample: int | None = None, seed: int = 0,
                 document_prefix: str | None = None, autocast_dtype: torch.dtype | None = None,
                 show_progress: bool | None = None) -> int:
        """Fit a head that is fitted from data (``center``, ``whiten``) on the encoder's vectors of ``documents``
        (the corpus to be searched; ``document_prefix``, default the model's, is added here): all of them, or a
        seeded sample of ``sample`` (default :data:`ragcun.heads.fitted.FIT_SAMPLE`). Returns how many it was
        fitted on.

        Example::

            model = EmbeddingModel.build("all-minilm-l6-v2", "whiten", "euclidean")
            model.fit_head(corpus_texts)          # then encode, evaluate, save as usual
        """
        import random

        from ragcun.heads.fitted import FIT_SAMPLE

        if not callable(getattr(self.head, "fit", None)):
            raise ValueError(f"the model's head ({type(self.head).__name__}) is trained, not fitted: fit_head "
                             "applies to heads fitted from data (center, whiten)")
        documents = list(documents)
        limit = FIT_SAMPLE if sample is None else int(sample)
        if len(documents) > limit:
            documents = [documents[i] for i in sorted(random.Random(seed).sample(range(len(documents)), limit))]
        head = self.head
        self.head = _Passthrough(self.encoder.dim)  # the encoder's own vectors, whatever the head would do
        try:
            prefix = self.document_prefix if document_prefix is None else document_prefix
            features = self.encode_embeddings([prefix + t for t in documents], batch_size,
                                              show_progress=show_progress, autocast_dtype=autocast_dtype,
                                              description="Fitting the head")
        finally:
            self.head = head
        head.fit(features.mean)
        return len(documents)

    # -- BEIR's custom-model interface ------------------------------------------------------------
    # beir's DenseRetrievalExactSearch calls these and ranks by dot product; returning the distance's
    # inner-product vectors makes that ranking exactly the model's own distance (use score_function="dot").
    def encode_queries(self, queries: list[str], batch_size: int = 32, **kwargs: Any) -> np.ndarray:
        texts = [self.query_prefix + q for q in queries]
        emb = self.encode_embeddings(texts, batch_size, **_encode_kwargs(kwargs), description="Queries")
        return self.distance.query_vectors(emb).numpy().astype(np.float32, copy=False)

    def encode_corpus(self, corpus: list[dict[str, str]] | dict[str, list[str]], batch_size: int = 32,
                      **kwargs: Any) -> np.ndarray:
        texts = [self.document_prefix + t for t in corpus_texts(corpus)]
        emb = self.encode_embeddings(texts, batch_size, **_encode_kwargs(kwargs), description="Documents")
        return self.distance.document_vectors(emb).numpy().astype(np.float32, copy=False)

    # -- persistence ----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "ragcun_version": __version__,
            "encoder": {**provenance(self.encoder), "config": self.encoder.get_config()},
            "head": {**provenance(self.head), "config": self.head.get_config()},
            "distance": {**provenance(self.distance), "config": self.distance.get_config()},
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the checkpoint; each file lands atomically (written aside, then renamed)."""
        from safetensors.torch import save_model

        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            config = self.config_dict()
            if hasattr(self.encoder, "save_assets"):
                config["encoder"]["config"] = self.encoder.save_assets(folder / "encoder")
            with atomic_path(folder / WEIGHTS_FILE) as tmp:
                save_model(self, str(tmp), metadata={"format": "pt", "ragcun_version": __version__})
            config["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(folder / WEIGHTS_FILE)}
            with atomic_path(folder / CONFIG_FILE) as tmp:
                tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            ordinary_permissions(folder, ("encoder",))  # save_assets copies files with their source's mode
        except OSError as exc:  # a full disk or a read-only folder: one line naming the folder (OutputError)
            raise (output_error(exc, folder) or exc) from None
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, registry=None, map_location: str = "cpu") -> EmbeddingModel:
        return load(folder, registry=registry, map_location=map_location)


def load(folder: str | os.PathLike, *, registry=None, map_location: str = "cpu") -> EmbeddingModel:
    """Load a checkpoint written by :meth:`EmbeddingModel.save_pretrained`. Never unpickles."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config, weights = verified_model_folder(folder)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: checkpoint format {config.get('format_version')!r} is not supported "
                         f"by ragcun {__version__} (it reads format {FORMAT_VERSION})")

    parts = {}
    for kind in ("encoder", "head", "distance"):
        section = config.get(kind)
        if not isinstance(section, dict) or not section.get("name"):
            raise ValueError(f"{config_path}: missing or malformed '{kind}' section")
        params = dict(section.get("config") or {})
        if kind == "encoder":
            if "path" in params:  # the encoder's files saved beside the weights (save_assets)
                params["path"] = str(inside(folder, params["path"], f"{config_path}: encoder.config.path"))
        injected = {"init_weights": False} if kind == "encoder" else {}
        if kind == "head":
            params.pop("in_dim", None)
            injected = {"in_dim": parts["encoder"].dim}
        settings = {kind: {section["name"]: params}}
        try:
            parts[kind] = build(kind, section["name"], settings, registry=registry, **injected)
        except UnknownComponentError:
            from ragcun.plugins import explain_missing

            provider = section.get("provider", "unknown")
            raise ValueError(f"{folder} needs {kind} {section['name']!r} from the package {provider!r}: "
                             + explain_missing(kind, section["name"], provider)) from None
    model = EmbeddingModel(parts["encoder"], parts["head"], parts["distance"],
                           query_prefix=config.get("query_prefix", ""),
                           document_prefix=config.get("document_prefix", ""))
    state = read_weights(weights, map_location)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    # Tied weights are stored once by safetensors' save_model; they are legitimately "missing".
    missing = [k for k in missing if not _is_tied(model, k, state)]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match {CONFIG_FILE}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, tensor in state.items():
        if own[key].shape != tensor.shape:
            raise ValueError(f"{weights} does not match {CONFIG_FILE}: {key} has shape {tuple(tensor.shape)}, "
                             f"the config builds {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return model


class _Passthrough(nn.Module):
    """The encoder's vectors unchanged (what a fitted head is fitted on)."""

    provides = frozenset({"mean"})

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = int(dim)

    def forward(self, x: torch.Tensor) -> Embedding:
        return Embedding(x)


def inside(folder: Path, name: Any, what: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder`` (no absolute path, no ``..``, no symbolic
    link leading out): a model folder's ragcun.json names only its own files."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or name.startswith("~"):
        raise ValueError(f"{what} is {name!r}: a model folder may only name files inside itself (a relative path)")
    path = folder / name
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(f"{what} is {name!r}, which leads outside {folder}: a model folder may only name files "
                         "inside itself")
    return path


def corpus_texts(corpus: list[dict[str, str]] | dict[str, list[str]]) -> list[str]:
    """Documents as sentence-transformers encodes them for BEIR: ``title + " " + text``, stripped."""
    if isinstance(corpus, dict):
        titles = corpus.get("title") or [""] * len(corpus["text"])
        docs = [{"title": t, "text": x} for t, x in zip(titles, corpus["text"])]
    else:
        docs = corpus
    from ragcun.data.beir import document_text

    return [document_text(d) for d in docs]


def _encode_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # beir passes sentence-transformers' keyword arguments; keep the ones that mean something here.
    out = {}
    if "show_progress_bar" in kwargs:
        out["show_progress"] = kwargs["show_progress_bar"]
    if "autocast_dtype" in kwargs:
        out["autocast_dtype"] = kwargs["autocast_dtype"]
    return out


def _is_tied(model: nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return any(other in state and own[other].data_ptr() == own[key].data_ptr() for other in own if other != key)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def verified_model_folder(folder: str | os.PathLike) -> tuple[dict, Path]:
    """``(config, weights file)`` of a saved model folder once its weights are verified: the folder holds a
    readable ``ragcun.json`` naming a weights file inside the folder, present, whose SHA-256 matches the one
    recorded (a missing checksum is refused, not skipped); a ValueError saying what is wrong otherwise. The one
    integrity check of a saved model: :func:`load` and training's checkpoint verification
    (``ragcun.training.checkpoint.verify_model_folder``) both use it, with the same messages."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; a ragcun checkpoint is a folder holding {CONFIG_FILE}")
    if not config_path.is_file():
        raise ValueError(f"{folder} is not a ragcun checkpoint: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{config_path} cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a JSON object")
    weights_entry = config.get("weights") if isinstance(config.get("weights"), dict) else {}
    weights = inside(folder, weights_entry.get("file", WEIGHTS_FILE), f"{config_path}: weights.file")
    if not weights.is_file():
        raise ValueError(f"{folder}: weights file {weights.name} is missing")
    expected = weights_entry.get("sha256")
    if not expected:
        raise ValueError(f"{config_path} has no checksum for {weights.name} (ragcun writes one with every model): "
                         "the file was edited or not written by ragcun; refusing to load weights it cannot verify")
    if _sha256(weights) != expected:
        raise ValueError(f"{weights}: checksum does not match {CONFIG_FILE}; the file is corrupt or truncated")
    return config, weights


def read_weights(weights: Path, map_location: str = "cpu") -> dict:
    """The tensors of a safetensors file (never unpickles); a ValueError naming it when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights}: cannot read weights ({exc}); the file is corrupt or truncated") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _progress(show: bool, description: str, total: int):
    """``advance(n)`` of one progress task (ragcun.console.progress_tasks: a bar, log lines or nothing)."""
    from ragcun.console import progress_tasks

    with progress_tasks(show) as start:
        yield start(description, total)
