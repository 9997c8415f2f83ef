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
            import difflib

            kinds = [*KINDS, *PLURALS.values()]
            close = difflib.get_close_matches(kind.lower(), kinds, n=1, cutoff=0.75)
            if close and not get_registry().entries(None, kind):  # a misspelt kind, not a pattern
                raise click.BadParameter(f"unknown kind {kind!r}; did you mean {PLURALS.get(close[0], close[0])}? "
                                         f"(kinds: {', '.join(PLURALS[k] for k in KINDS)})",
                                         param_hint="KIND") from None
            if pattern is None:  # `ragcun list eucl` means a pattern over every kind
                kind, pattern = None, kind
            else:
                raise click.BadParameter(f"{kind!r}; choose one of {', '.join(PLURALS[k] for k in KINDS)}",
                                         param_hint="KIND") from None
    entries = get_registry().entries(kind, pattern)
    if output_format == "json":
        echo_json([e.as_dict() for e in entries])
        return
    from ragcun.console import stdout

    title = f"ragcun {PLURALS[kind] if kind else 'components'}" + (f" matching {pattern!r}" if pattern else "")
    stdout.print(render_entries(entries, title, stdout.width))
    if not entries:
        stdout.print("nothing matches; `ragcun list` shows everything")


SUMMARY_MIN = 40  # characters the summary column needs before a table reads better than one block per entry


def render_entries(entries, title: str, width: int):
    """The entries as a table when the terminal leaves the summary column at least :data:`SUMMARY_MIN` characters,
    else one block per entry (kind, name, aliases and provider on one line, the summary indented below it), so a
    80-column terminal or pipe never breaks a word in two."""
    import textwrap

    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    widths = [max([len(col)] + [len(getattr(e, col)) for e in entries]) for col in ("kind", "name", "provider")]
    alias_width = max([len("aliases")] + [len(a) + 1 for e in entries for a in e.aliases])
    if width - (sum(widths) + alias_width + 5 * 3 + 1) >= SUMMARY_MIN:
        table = Table(title=title)
        # names are what a user types: never broken mid-word (the summary column takes the squeeze)
        for col in ("kind", "name"):
            table.add_column(col, no_wrap=True, min_width=len(col))
        table.add_column("aliases")  # wraps between aliases, which are comma-separated
        table.add_column("provider", no_wrap=True)
        table.add_column("summary", min_width=SUMMARY_MIN)
        for e in entries:
            table.add_row(e.kind, e.name, ",\n".join(e.aliases), e.provider, escape(e.summary))
        return table
    parts = [Text(title, style="italic")]
    for e in entries:
        line = Text.assemble((e.kind, "dim"), " ", (e.name, "bold"))
        if e.aliases:
            line.append(f" (aliases: {', '.join(e.aliases)})")
        line.append(f" from {e.provider}", style="dim")
        parts.append(line)
        if e.summary:  # indented, wrapped between words (a path-like word longer than the line stays whole)
            parts.append(Text(textwrap.fill(e.summary, max(width - 4, 20), initial_indent="    ",
                                            subsequent_indent="    ", break_long_words=False,
                                            break_on_hyphens=False)))
    return Group(*parts)


def add_to(group: click.Group) -> None:
    group.add_command(list_command)
