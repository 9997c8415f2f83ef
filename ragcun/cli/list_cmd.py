"""``ragcun list [KIND] [PATTERN]``: registered components."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option
from ragcun.registry import KINDS, PLURALS, normalize_kind


@click.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@format_option
def list_command(kind: str | None, pattern: str | None, output_format: str) -> None:
    """List registered components: KIND is one of encoders, heads, losses, distances, evaluators;
    PATTERN filters names (glob or substring)."""
    from ragcun.plugins import get_registry

    if kind is not None:
        try:
            kind = normalize_kind(kind)
        except ValueError:
            if pattern is None:  # `ragcun list eucl` means a pattern over every kind
                kind, pattern = None, kind
            else:
                raise click.BadParameter(f"{kind!r}; choose one of {', '.join(PLURALS[k] for k in KINDS)}",
                                         param_hint="KIND") from None
    entries = get_registry().entries(kind, pattern)
    if output_format == "json":
        echo_json([e.as_dict() for e in entries])
        return
    from rich.markup import escape
    from rich.table import Table

    from ragcun.console import stdout

    table = Table(title=f"ragcun {PLURALS[kind] if kind else 'components'}" + (f" matching {pattern!r}" if pattern else ""))
    for col in ("kind", "name", "aliases", "provider", "summary"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.kind, e.name, ", ".join(e.aliases), e.provider, escape(e.summary))
    stdout.print(table)
    if not entries:
        stdout.print("nothing matches; `ragcun list` shows everything")


def add_to(group: click.Group) -> None:
    group.add_command(list_command)
