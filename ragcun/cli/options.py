"""Options shared by several commands."""

from __future__ import annotations

import json
from typing import Any

import click

format_option = click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="table for people (rich), json for machines")

set_option = click.option("--set", "set_options", multiple=True, metavar="KIND.NAME.PARAM=VALUE",
                          help="a component setting, e.g. loss.isotropy.num_slices=256 (repeatable)")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))
