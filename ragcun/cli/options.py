"""Options shared by several commands, and the helpers that turn what a user typed into library arguments."""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Iterable

import click

from ragcun.precision import DTYPES  # names only: no torch at import
from ragcun.training.config import config_default  # the standard library only: no torch at import

format_option = click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="table for people (rich), json for machines")

set_option = click.option("--set", "set_options", multiple=True, metavar="KIND.NAME.PARAM=VALUE",
                          help="a component setting, e.g. loss.isotropy.num_slices=256 (repeatable)")

# What several commands share, written once so their --help agrees: --data-dir is a folder (DIRECTORY) in every
# command; training's --dtype is one of ragcun.precision.DTYPES, in that order, in train, preflight and sweep.
DATA_DIR = click.Path(file_okay=False)
DATA_DIR_HELP = "folder holding the BEIR datasets"
TRAIN_DTYPES = click.Choice(DTYPES)
TRAIN_DTYPE_HELP = ("autocast precision of the steps (weights stay float32); auto: bf16 on GPUs that support it, "
                    "float32 on CPUs; bfloat16 also works on a CPU, 1.55x faster on one with AVX512-BF16, see "
                    "benchmarks/RESULTS.md")
# benchmarks/RESULTS.md, "Memory per phase": the quickstart's training on a quiet machine, 1.21x the time
GRADIENT_CHECKPOINTING_HELP = ("recompute each encoder layer in the backward pass: less memory (0.58x the peak), "
                               "about 1.21x the training time, the same losses")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def config_option(*param_decls: str, **attrs: Any):
    """A click option for a TrainConfig field (the option's parameter name, ``--batch-size`` -> ``batch_size``)
    whose default is the dataclass's, shown in ``--help``: the dataclass is the one place defaults are written."""
    names = [d for d in param_decls if not d.startswith("-")]
    name = names[0] if names else max(param_decls, key=len).lstrip("-").replace("-", "_")
    attrs.setdefault("default", config_default(name))
    attrs.setdefault("show_default", True)
    return click.option(*param_decls, **attrs)


def given_options(ctx: click.Context) -> set[str]:
    """The parameters the user gave (on the command line or through an environment variable), not defaults."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def config_flags(ctx: click.Context, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{TrainConfig field: value}`` of the options the user gave whose name is a TrainConfig field, for
    :func:`ragcun.training.config.build_config` (``exclude``: options that share a field's name but mean
    something else in this command)."""
    from dataclasses import fields

    from ragcun.training.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - set(exclude) - {"settings"}
    return {name: ctx.params[name] for name in given_options(ctx) if name in known}


def model_settings(command: str, set_options: Iterable[str], models: Iterable[str], *,
                   distance: str | None = None):
    """The ``--set`` settings of a command that embeds with ``--model`` (encode, eval beir, isotropy report),
    checked before anything is loaded by the one check, :func:`ragcun.components.check_settings`: each names
    a registered component, a constructor argument of the right type, and a component the command builds; a
    setting it would ignore is an error (``ValueError``, exit 1) naming the command and the key."""
    from ragcun.spec import settings_from_options

    set_options = tuple(set_options)
    origins: dict = {}
    settings = settings_from_options(set_options, origins=origins, command=command)
    if set_options:
        from ragcun.components import check_settings

        from ragcun.resolve import components_built_for

        in_use, checkpoints = components_built_for(models, distance=distance)
        if checkpoints:
            note = (f" (--model {', '.join(checkpoints)}: a ragcun checkpoint, loaded with the settings it was "
                    "saved with)")
            origins = {key: where + note for key, where in origins.items()}
        check_settings(settings, in_use, origins=origins)
    return settings
