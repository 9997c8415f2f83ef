"""``train_config.json`` back to the ``ragcun train`` command line that gives those settings.

It lives with the command line because it reads the ``ragcun train`` options themselves; the exporters get it
injected (``ragcun.export`` and ``ragcun export`` pass it), so the library never imports the CLI.

The flags come from the ``ragcun train`` command itself (each click option's parameter name is its
``TrainConfig`` field), so a setting added later is picked up without touching this file. Only settings that
differ from the defaults are spelled out (and always what was trained: encoder, head, distance, loss,
data, output folder); component settings become ``--set KIND.NAME.PARAM=VALUE`` (TOML
literals). A setting without a flag is reported, and ``ragcun train --config train_config.json`` reproduces
the run in any case.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

# TrainConfig fields whose flag is not their own name
_INVERTED_FLAGS = {"show_progress": (False, "--no-progress")}
# What was trained, spelled out even when it is the default (defaults may change between versions).
_ALWAYS = ("encoder", "head", "distance", "loss", "train_data", "output_dir")


def _toml_literal(value: Any) -> str:
    # JSON numbers, booleans, strings and arrays of them are valid TOML literals, which is what --set parses.
    return json.dumps(value)


def training_command(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(command line, {field: value} of non-default settings that no flag sets)``."""
    import click

    from ragcun.cli.train_cmd import train_command
    from ragcun.training.config import TrainConfig

    defaults = TrainConfig().to_dict()
    options = {p.name: p for p in train_command.params if isinstance(p, click.Option)}
    argv = ["ragcun", "train"]
    unflagged: dict[str, Any] = {}
    for name, value in config.items():
        if name == "settings" or (name not in _ALWAYS and value == defaults.get(name, object())):
            continue
        if name in _INVERTED_FLAGS:
            off_value, flag = _INVERTED_FLAGS[name]
            if value == off_value:
                argv.append(flag)
            continue
        option = options.get(name)
        if option is None:
            unflagged[name] = value
        elif option.is_flag:
            if value:
                argv.append(option.opts[0])
        elif value is None:
            if name == "max_grad_norm":
                argv += [option.opts[0], "0"]  # the CLI's way of saying "no clipping"
            else:
                unflagged[name] = value
        else:
            argv += [option.opts[0], str(value)]
    for kind, by_name in sorted((config.get("settings") or {}).items()):
        for component, params in sorted(by_name.items()):
            for param, value in sorted(params.items()):
                argv += ["--set", f"{kind}.{component}.{param}={_toml_literal(value)}"]
    return " ".join(shlex.quote(a) for a in argv), unflagged
