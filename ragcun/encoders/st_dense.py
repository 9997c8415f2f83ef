"""The modules a sentence-transformers folder may put after its ``Pooling``: ``Dense`` and ``Normalize``.

``ragcun export --to sentence-transformers`` writes a trained head as ``Dense`` modules, so reading them back
is what makes ``hf:EXPORTED_FOLDER`` reproduce the model (and what makes a hub model such as LaBSE, whose
projection is a ``Dense``, encode as ``SentenceTransformer`` does). The layout read here is the one
sentence-transformers writes: ``N_Dense/config.json`` (``in_features``, ``out_features``, ``bias``,
``activation_function``) and ``N_Dense/model.safetensors`` (``linear.weight``, ``linear.bias``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

IDENTITY = "torch.nn.modules.linear.Identity"
WEIGHTS_FILE = "model.safetensors"
# Dense config keys this reader understands, with the only values it supports for the optional ones.
_OPTIONAL_DEFAULTS = {"module_input_name": "sentence_embedding", "module_output_name": None, "use_residual": False}


def activation_from_path(path: str, where: str) -> nn.Module:
    """``torch.nn.modules.activation.GELU`` -> ``GELU()``. Only torch's own ``nn.Module`` classes are built, as
    sentence-transformers does without ``trust_remote_code``: a config must not import arbitrary code."""
    module_name, _, class_name = path.rpartition(".")
    if not path.startswith("torch.") or not module_name:
        raise ValueError(f"{where}: activation_function {path!r} is not a torch.nn module class; ragcun builds "
                         "only torch's own activations from a config")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"{where}: activation_function {path!r} does not exist in this torch") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{where}: activation_function {path!r} is not an nn.Module class")
    return cls()


class STDense(nn.Module):
    """``activation(W x + b)``: sentence-transformers' ``Dense`` (the parameter names match its weight file)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation_function: str = IDENTITY,
                 *, where: str = "Dense") -> None:
        super().__init__()
        self.linear = nn.Linear(int(in_features), int(out_features), bias=bool(bias))
        self.activation_path = activation_function
        self.activation = activation_from_path(activation_function, where)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return self.activation(self.linear(x))


class L2Normalize(nn.Module):
    """sentence-transformers' ``Normalize``: unit L2 norm per vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, D)
        return F.normalize(x, p=2, dim=1)


def build_dense(folder: Path, entry: dict[str, Any], *, load_weights: bool) -> STDense:
    """One ``Dense`` from ``folder/entry['path']``; its weights too unless a ragcun checkpoint supplies them."""
    from safetensors.torch import load_file

    where = str(folder / entry["path"] / "config.json")
    config = dict(entry["config"])
    for key, default in _OPTIONAL_DEFAULTS.items():
        value = config.pop(key, default)
        if value not in (default, "sentence_embedding"):
            raise ValueError(f"{where}: {key}={value!r} is not supported (ragcun reads plain Dense modules)")
    missing = {"in_features", "out_features"} - set(config)
    if missing:
        raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = set(config) - {"in_features", "out_features", "bias", "activation_function"}
    if unknown:
        raise ValueError(f"{where}: unknown Dense setting(s) {', '.join(sorted(unknown))}")
    dense = STDense(config["in_features"], config["out_features"], config.get("bias", True),
                    config.get("activation_function", IDENTITY), where=where)
    if load_weights:
        weights = folder / entry["path"] / WEIGHTS_FILE
        if not weights.is_file():
            raise ValueError(f"{weights.parent}: no {WEIGHTS_FILE} (ragcun reads safetensors only and never "
                             "unpickles a pytorch_model.bin; convert it with safetensors first)")
        state = load_file(str(weights))
        try:
            dense.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights} does not match {where}: {exc}") from None
    return dense


def build_post_modules(folder: Path, entries: list[dict[str, Any]], *, load_weights: bool) -> nn.ModuleList:
    """The modules after pooling (and after a Normalize right after it), in the folder's order."""
    return nn.ModuleList(build_dense(folder, e, load_weights=load_weights) if e["type"] == "dense" else L2Normalize()
                         for e in entries)
