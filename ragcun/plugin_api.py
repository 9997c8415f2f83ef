"""The public API for plugin authors: everything a plugin's encoder, head, loss or distance builds on, importable
from one place instead of ragcun's internal modules (docs/plugins.md shows each contract with an example).

* :class:`Embedding`: what a head returns and what losses and distances read (``mean``, optional ``logvar``);
* :class:`Encoder` and :class:`Head`: the protocols an encoder and a head satisfy (``typing.Protocol``, runtime
  checkable: ``isinstance(obj, Encoder)`` checks the members are there, not their behaviour), from
  :mod:`ragcun.protocols`, which documents every kind's contract in full (also the loss's and the distance's,
  and the optional calibration and fitting of a head);
* :class:`Loss` (base class), :class:`LossInputs` (what a loss is called on) and :class:`LossOutput`;
* :class:`Distance` (base class);
* :func:`hookimpl` and the ``Register`` callback type, for the plugin module;
* the collectives a loss that looks across the batch uses under DDP (:func:`is_distributed`, :func:`world`,
  :func:`gather_with_grad`, :func:`all_reduce_sum`, :func:`all_reduce_sum_no_grad`, :func:`all_gather_sizes`);
* the contract checks :func:`check_encoder`, :func:`check_head`, :func:`check_loss` and :func:`check_distance`
  (:mod:`ragcun.testing.contracts`).

Importing this module is light (no torch): each name loads its module on first use, so a plugin's hook module
may import ``hookimpl`` from here and keep ``ragcun --help`` fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragcun.protocols import Encoder, Head

if TYPE_CHECKING:  # pragma: no cover
    from ragcun.distances.base import Distance
    from ragcun.distributed import (all_gather_sizes, all_reduce_sum, all_reduce_sum_no_grad, gather_with_grad,
                                    is_distributed, world)
    from ragcun.embedding import Embedding
    from ragcun.hookspecs import Register, hookimpl
    from ragcun.losses.base import Loss, LossInputs, LossOutput
    from ragcun.testing.contracts import check_distance, check_encoder, check_head, check_loss

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
    "check_encoder": "ragcun.testing.contracts",
    "check_head": "ragcun.testing.contracts",
    "check_loss": "ragcun.testing.contracts",
    "check_distance": "ragcun.testing.contracts",
}

__all__ = ["Encoder", "Head", *_LAZY]


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
