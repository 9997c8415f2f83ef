"""The sentence-transformers modules an export is made of, and how each is written to disk.

A sentence-transformers folder is a pipeline listed in ``modules.json``; each module reads its own sub-folder.
These four are the ones every sentence-transformers version (2.x to 6.x) and the tools built on it (MTEB,
vector databases, RAG frameworks) load without ``trust_remote_code``:

=============  =====================  ==========================================================================
module         folder                 files
=============  =====================  ==========================================================================
Transformer    the folder itself      ``config.json``, ``model.safetensors``, tokenizer files,
                                      ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``)
Pooling        ``N_Pooling``          ``config.json`` (``pooling_mode_*_tokens``, ``word_embedding_dimension``)
Dense          ``N_Dense``            ``config.json`` (``in_features``, ``out_features``, ``bias``,
                                      ``activation_function``), ``model.safetensors`` (``linear.weight``,
                                      ``linear.bias``)
Normalize      ``N_Normalize``        ``config.json`` (``{}``)
=============  =====================  ==========================================================================

The configs use the keys sentence-transformers has always written (``pooling_mode_mean_tokens``, not 6.x's
``pooling_mode``), so older releases load the folder too. Weights are safetensors only.

Heads and encoders from plugins describe themselves with :class:`Dense` and :class:`Normalize` (see
:mod:`ragcun.exporters.st_components`); :meth:`Dense.apply` and :meth:`Normalize.apply` compute what
sentence-transformers will compute, so an export is checked before it is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

IDENTITY = "torch.nn.modules.linear.Identity"
POOLING_MODES = ("mean", "cls", "max")
# modules.json names the classes by their historical import path, which every release resolves.
_TYPE = "sentence_transformers.models.{}"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def activation_path(activation: nn.Module | None) -> str:
    """``nn.GELU()`` -> ``"torch.nn.modules.activation.GELU"``, checked to survive the trip.

    sentence-transformers rebuilds an activation as ``cls()`` (no arguments) and only for torch's own classes,
    so ``nn.GELU(approximate="tanh")`` or a custom module would silently load as something else.
    """
    if activation is None:
        return IDENTITY
    cls = type(activation)
    path = f"{cls.__module__}.{cls.__qualname__}"
    if not path.startswith("torch.nn."):
        raise ValueError(f"activation {cls.__name__} is not a torch.nn module; sentence-transformers builds only "
                         "torch's own activations without trust_remote_code")
    try:
        rebuilt = cls()
    except TypeError:
        raise ValueError(f"activation {activation!r} has no default constructor; sentence-transformers rebuilds "
                         "activations as cls()") from None
    if repr(rebuilt) != repr(activation):
        raise ValueError(f"activation {activation!r} has non-default arguments; sentence-transformers would load "
                         f"it as {rebuilt!r}")
    return path


@dataclass(frozen=True)
class Transformer:
    """The transformers model and tokenizer (written at the folder's root, as sentence-transformers does)."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    max_seq_length: int
    do_lower_case: bool = False

    kind = "Transformer"

    def write(self, folder: Path) -> None:
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one file is noise
        try:
            self.model.save_pretrained(folder)  # transformers >= 5 writes safetensors only
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(folder)
        _write_json(folder / "sentence_bert_config.json",
                    {"max_seq_length": int(self.max_seq_length), "do_lower_case": bool(self.do_lower_case)})


@dataclass(frozen=True)
class Pooling:
    """Token vectors ``(B, T, H)`` -> one vector ``(B, H)``: ``mean`` (over the attention mask), ``cls`` or ``max``."""

    dim: int
    mode: str = "mean"

    kind = "Pooling"

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {', '.join(POOLING_MODES)}, got {self.mode!r}")

    def write(self, folder: Path) -> None:
        _write_json(folder / "config.json", {
            "word_embedding_dimension": int(self.dim),
            "pooling_mode_cls_token": self.mode == "cls",
            "pooling_mode_mean_tokens": self.mode == "mean",
            "pooling_mode_max_tokens": self.mode == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        })


@dataclass(frozen=True)
class Dense:
    """``activation(x @ weight.T + bias)``: ``weight`` is ``(out, in)``, ``bias`` ``(out,)`` or None, ``activation``
    a torch.nn class path (see :func:`activation_path`; default identity)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    activation: str = IDENTITY

    kind = "Dense"

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise ValueError(f"Dense weight must be (out, in), got shape {tuple(self.weight.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise ValueError(f"Dense bias must be ({self.weight.shape[0]},), got shape {tuple(self.bias.shape)}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: nn.Module | None = None) -> Dense:
        return cls(linear.weight, linear.bias, activation_path(activation))

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        from ragcun.encoders.st_dense import activation_from_path

        weight = self.weight.detach().to(x.dtype)
        bias = None if self.bias is None else self.bias.detach().to(x.dtype)
        return activation_from_path(self.activation, "Dense")(F.linear(x, weight, bias))

    def write(self, folder: Path) -> None:
        from safetensors.torch import save_file

        _write_json(folder / "config.json", {"in_features": self.in_features, "out_features": self.out_features,
                                             "bias": self.bias is not None, "activation_function": self.activation})
        state = {"linear.weight": self.weight.detach().to("cpu", torch.float32).contiguous().clone()}
        if self.bias is not None:
            state["linear.bias"] = self.bias.detach().to("cpu", torch.float32).contiguous().clone()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@dataclass(frozen=True)
class Normalize:
    """Unit L2 norm per vector."""

    kind = "Normalize"

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, D)
        return F.normalize(x, p=2, dim=-1)

    def write(self, folder: Path) -> None:
        _write_json(folder / "config.json", {})


STModule = Transformer | Pooling | Dense | Normalize
#: what may follow the pooling (a head's modules)
VECTOR_MODULES = (Dense, Normalize)


def write_modules(modules: list[STModule], folder: Path) -> list[dict[str, Any]]:
    """Write every module into ``folder`` and ``modules.json``; return its entries."""
    entries = []
    for idx, module in enumerate(modules):
        path = "" if module.kind == "Transformer" else f"{idx}_{module.kind}"
        module.write(folder / path if path else folder)
        entries.append({"idx": idx, "name": str(idx), "path": path, "type": _TYPE.format(module.kind)})
    _write_json(folder / "modules.json", entries)
    return entries


def describe(modules: list[STModule]) -> str:
    """``Transformer -> Pooling(mean) -> Dense(384->512, Identity)`` for messages and the model card."""
    parts = []
    for m in modules:
        if isinstance(m, Pooling):
            parts.append(f"Pooling({m.mode})")
        elif isinstance(m, Dense):
            parts.append(f"Dense({m.in_features}->{m.out_features}, {m.activation.rsplit('.', 1)[-1]})")
        else:
            parts.append(m.kind)
    return " -> ".join(parts)
