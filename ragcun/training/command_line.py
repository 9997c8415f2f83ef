"""``train_config.json`` back to the ``ragcun train`` command line that gives those settings (for model cards).

The flags are read from TrainConfig's field declarations (:func:`ragcun.training.config.setting`), the ones
``ragcun train``'s options are made from, so a setting added later is picked up without touching this file and
the library needs no CLI. Only settings that differ from the defaults are spelled out (and always what was
trained: the settings declared ``always``, encoder, head, distance, loss, data, output folder); component
settings become ``--set KIND.NAME.PARAM=VALUE`` (TOML literals). A setting without a flag is reported, and
``ragcun train --config train_config.json`` reproduces the run in any case.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ragcun.training.config import TrainConfig, settings_of, value_type


def _toml_literal(value: Any) -> str:
    # JSON numbers, booleans, strings and arrays of them are valid TOML literals, which is what --set parses.
    return json.dumps(value)


def training_command(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(command line, {field: value} of non-default settings that no flag sets)``; ``config``: the contents of
    a ``train_config.json`` (its keys in their order there).

    >>> training_command({**TrainConfig(train_data="beir:scifact:train", steps=10).to_dict(), "show_progress": False,
    ...                   "settings": {"loss": {"isotropy": {"num_slices": 256}}}})[0]  # doctest: +NORMALIZE_WHITESPACE
    'ragcun train --output-dir runs/default --train-data beir:scifact:train --encoder all-minilm-l6-v2
     --head gaussian --distance euclidean --loss contrastive+isotropy --steps 10 --no-progress
     --set loss.isotropy.num_slices=256'
    """
    defaults = TrainConfig().to_dict()
    declared = settings_of()
    argv = ["ragcun", "train"]
    unflagged: dict[str, Any] = {}
    for name, value in config.items():
        if name == "settings":
            continue
        s = declared.get(name)
        if not (s is not None and s.always) and value == defaults.get(name, object()):
            continue
        if s is None or s.flag is None:
            unflagged[name] = value
        elif s.inverted:
            if value is False:
                argv.append(s.flag)
        elif value_type(name) is bool:
            if value:
                argv.append(s.flag)
        elif value is None:
            if s.none_as is not None:
                argv += [s.flag, s.none_as]  # the CLI's way of saying None (--max-grad-norm 0: no clipping)
            else:
                unflagged[name] = value
        else:
            argv += [s.flag, str(value)]
    for option in set_options(config.get("settings")):
        argv += ["--set", option]
    return " ".join(shlex.quote(a) for a in argv), unflagged


def set_options(settings: dict[str, Any] | None, literal=None) -> list[str]:
    """Component settings (``{kind: {name: {param: value}}}``) as ``KIND.NAME.PARAM=VALUE`` strings, ``--set``'s
    syntax, sorted; ``literal(value, "KIND.NAME.PARAM")`` writes each value (default: a TOML literal)."""
    literal = literal or (lambda value, _name: _toml_literal(value))
    out = []
    for kind, by_name in sorted((settings or {}).items()):
        for component, params in sorted(by_name.items()):
            for param, value in sorted(params.items()):
                name = f"{kind}.{component}.{param}"
                out.append(f"{name}={literal(value, name)}")
    return out
