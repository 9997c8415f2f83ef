"""The public API for plugin authors: everything a plugin's encoder, head, loss or distance builds on, importable
from one place instead of ragcun's internal modules (docs/plugins.md shows each contract with an example).

* :class:`Embedding`: what a head returns and what losses and distances read (``mean``, optional ``logvar``);
* :class:`Encoder` and :class:`Head`: the protocols an encoder and a head satisfy (``typing.Protocol``, runtime
  checkable: ``isinstance(obj, Encoder)`` checks the members are there, not their behaviour);
* :class:`Loss` (base class), :class:`LossInputs` (what a loss is called on) and :class:`LossOutput`;
* :class:`Distance` (base class);
* :func:`hookimpl` and the ``Register`` callback type, for the plugin module;
* the collectives a loss that looks across the batch uses under DDP (:func:`is_distributed`, :func:`world`,
  :func:`gather_with_grad`, :func:`all_reduce_sum`, :func:`all_reduce_sum_no_grad`, :func:`all_gather_sizes`);
* the contract checks :func:`check_head` and :func:`check_distance`.

Importing this module is light (no torch): each name loads its module on first use, so a plugin's hook module
may import ``hookimpl`` from here and keep ``ragcun --help`` fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ragcun.distances.base import Distance
    from ragcun.distributed import (all_gather_sizes, all_reduce_sum, all_reduce_sum_no_grad, gather_with_grad,
                                    is_distributed, world)
    from ragcun.embedding import Embedding
    from ragcun.hookspecs import Register, hookimpl
    from ragcun.losses.base import Loss, LossInputs, LossOutput
    from ragcun.testing.contracts import check_distance, check_head

_LAZY = {
    "Embedding": "ragcun.embedding",
    "Loss": "ragcun.losses.base",
    "LossInputs": "ragcun.losses.base",
    "LossOutput": "ragcun.losses.base",
    "Distance": "ragcun.distances.base",
    "hookimpl": "ragcun.hookspecs",
    "Register": "ragcun.hookspecs",
    "is_distributed": "ragcun.distributed",
    "world": "ragcun.distributed",
    "gather_with_grad": "ragcun.distributed",
    "all_reduce_sum": "ragcun.distributed",
    "all_reduce_sum_no_grad": "ragcun.distributed",
    "all_gather_sizes": "ragcun.distributed",
    "check_head": "ragcun.testing.contracts",
    "check_distance": "ragcun.testing.contracts",
}

__all__ = ["Encoder", "Head", *_LAZY]


@runtime_checkable
class Encoder(Protocol):
    """Texts -> pooled vectors ``(B, H)``. An encoder is a ``torch.nn.Module`` built as ``cls(**config)``.

    Required: ``dim`` (``H``), ``tokenize(texts) -> dict of tensors`` (the batch ``forward`` takes; ragcun moves
    it to the model's device), ``forward(features) -> Tensor (B, H)`` and ``get_config() -> dict`` (the
    constructor's arguments, saved in ``ragcun.json``). Optional, used when present: ``tokenize(texts,
    max_length=N)`` (training's ``--max-seq-length``), ``max_seq_length`` and ``tokenizer`` (batches sorted by
    token count), ``save_assets(folder) -> config`` (files a checkpoint must carry, e.g. a tokenizer: the config
    returned replaces ``get_config()``'s in the checkpoint), ``enable_gradient_checkpointing()``
    (``--gradient-checkpointing``), ``path`` (shown in reports)."""

    dim: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def get_config(self) -> dict[str, Any]: ...


@runtime_checkable
class Head(Protocol):
    """Encoder vectors ``(B, H)`` -> :class:`Embedding`. A head is a ``torch.nn.Module`` built as
    ``cls(in_dim=H, **config)``.

    Required: ``provides`` (the :class:`Embedding` fields it fills: ``{"mean"}`` or ``{"mean", "logvar"}``;
    ragcun refuses a distance or loss that needs a field the head does not provide), ``out_dim``,
    ``forward(x) -> Embedding`` and ``get_config() -> dict`` (round-trips through the constructor:
    :func:`check_head` tests it). Optional: ``calibrates`` / ``calibrate(features)`` (a start-up scale, as the
    gaussian head's ``init_scale="auto"``), and ``sentence_transformers_modules()`` or ``affine()`` for
    ``ragcun export``."""

    provides: Any
    out_dim: int

    def forward(self, x: torch.Tensor) -> Embedding: ...

    def get_config(self) -> dict[str, Any]: ...


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ragcun.plugin_api' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
