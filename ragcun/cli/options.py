"""Options shared by several commands, and the helpers that turn what a user typed into library arguments."""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Iterable

import click

from ragcun.training.config import (  # the standard library only: no torch at import
    config_default, setting_of, settings_of, value_type)

format_option = click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="table for people (rich), json for machines")

set_option = click.option("--set", "set_options", multiple=True, metavar="KIND.NAME.PARAM=VALUE",
                          help="a component setting, e.g. loss.isotropy.num_slices=256 (repeatable)")

# What several commands share, written once so their --help agrees: --data-dir is a folder (DIRECTORY) in every
# command, with TrainConfig.data_dir's help where it means the same; the training settings' options are made from
# TrainConfig's declarations (config_option: --dtype is one of ragcun.precision.DTYPES in train, preflight, sweep).
DATA_DIR = click.Path(file_okay=False)
DATA_DIR_HELP = setting_of("data_dir").help


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def config_option(*param_decls: str, **attrs: Any):
    """A click option for a TrainConfig field, made from the field's declaration (its metadata,
    :func:`ragcun.training.config.setting`): its help, type (the field's, or a folder, or a choice), metavar,
    environment variable and default, the dataclass's, shown in ``--help``: the dataclass is the one place defaults
    are written. The field is the option's parameter name (``--batch-size`` -> ``batch_size``) or the one whose
    flag this is (``--no-progress``: show_progress, inverted). ``attrs`` override, e.g. a command's own help."""
    names = [d for d in param_decls if not d.startswith("-")]
    name = names[0] if names else max(param_decls, key=len).lstrip("-").replace("-", "_")
    field = name if name in settings_of() else _field_of_flag(max(param_decls, key=len))
    return click.option(*param_decls, **{**_option_attrs(field), **attrs})


def config_options(first: Iterable[str] = ()) -> list:
    """The click options of every TrainConfig field that has a ``ragcun train`` flag: those flags named in
    ``first`` first, in that order (the order of ``--help``), then the others in the dataclass's order."""
    flags = {s.flag: name for name, s in settings_of().items() if s.flag}
    first = list(first)
    unknown = [f for f in first if f not in flags]
    if unknown:
        raise KeyError(f"no TrainConfig field has the flag {', '.join(unknown)}")
    return [config_option(flag) for flag in [*first, *(f for f in flags if f not in first)]]


def _field_of_flag(flag: str) -> str:
    for name, s in settings_of().items():
        if s.flag == flag:
            return name
    raise KeyError(f"no TrainConfig field is {flag.lstrip('-').replace('-', '_')!r} or has the flag {flag}")


def _option_attrs(name: str) -> dict[str, Any]:
    """click.option's arguments for the TrainConfig field ``name``, from its declaration."""
    s = setting_of(name)
    attrs: dict[str, Any] = {"help": s.help} if s.help else {}
    if s.inverted:  # the flag turns the setting off: --no-progress is False unless given
        return {**attrs, "is_flag": True, "default": False}
    kind = value_type(name)
    if kind is bool:
        attrs["is_flag"] = True
    elif s.choices is not None:
        attrs["type"] = click.Choice(s.choices)
    elif s.directory:
        attrs["type"] = DATA_DIR
    elif kind in (int, float):
        attrs["type"] = kind
    if s.metavar:
        attrs["metavar"] = s.metavar
    if s.envvar:
        attrs.update(envvar=s.envvar, show_envvar=True)
    return {**attrs, "default": config_default(name), "show_default": s.show_default}


def given_options(ctx: click.Context) -> set[str]:
    """The parameters the user gave (on the command line or through an environment variable), not defaults."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def config_flags(ctx: click.Context, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{TrainConfig field: value}`` of the options the user gave whose name is a TrainConfig field, or whose
    flag inverts one (``--no-progress``: ``show_progress=False``), for
    :func:`ragcun.training.config.build_config` (``exclude``: options that share a field's name but mean
    something else in this command)."""
    known = set(settings_of()) - set(exclude) - {"settings"}
    flags = {name: ctx.params[name] for name in given_options(ctx) if name in known}
    given = given_options(ctx)
    for name, s in settings_of().items():
        param = s.flag and s.inverted and s.flag.lstrip("-").replace("-", "_")
        if param and name in known and param in given and ctx.params[param]:
            flags[name] = False
    return flags


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
