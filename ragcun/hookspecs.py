"""The plugin contract: the hooks a ragcun plugin may implement.

Every hook takes a single ``register`` callback (or the click group, for commands). Plugins call
``register(name, target, **metadata)`` once per component. The callback shape lets ragcun add keyword
arguments later without breaking plugins written today.

``target`` is either the component class itself or a ``"package.module:ClassName"`` string. Strings keep
``ragcun --help`` and ``ragcun list`` fast: nothing heavy (torch, transformers) is imported until the
component is built.

Keyword metadata understood by ``register``:

* ``aliases``: other names that resolve to this component (e.g. ``("l2",)``);
* ``summary``: one line shown by ``ragcun list``;
* ``provides`` (heads): which embedding fields the head produces, e.g. ``("mean", "logvar")``;
* ``needs`` (losses, distances): which embedding fields they read.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import pluggy

PROJECT_NAME = "ragcun"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register text encoders: modules turning a list of strings into pooled vectors ``(B, H)``.

    An encoder class is built as ``cls(**config)`` and must expose ``dim`` (the width ``H``),
    ``tokenize(texts) -> dict`` and ``forward(features) -> Tensor (B, H)``.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register heads: modules mapping encoder vectors ``(B, H)`` to a :class:`ragcun.embedding.Embedding`.

    A head class is built as ``cls(in_dim=H, **config)`` and declares ``provides`` (e.g. ``{"mean"}``).
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register training losses. Losses compose in specs (``contrastive+0.05*isotropy``).

    A loss class is built as ``cls(distance=..., **config)`` when its constructor takes ``distance``,
    else ``cls(**config)``, and is called on a :class:`ragcun.losses.base.LossInputs`.
    """


@hookspec
def register_distances(register: Register) -> None:
    """Register distances between embeddings, used both for training logits and for retrieval.

    A distance must also reduce to an inner product (``query_vectors`` / ``document_vectors``) that ranks
    documents exactly as the distance does, so every distance can use one inner-product search.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators (e.g. ``beir``): callables that score a model on a benchmark."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands or groups to the ``ragcun`` command line (``cli`` is the root click group).

    Commands should import heavy libraries inside the command function, so ``ragcun --help`` stays fast.
    """
