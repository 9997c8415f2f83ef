"""``ragcun plugins``: installed plugins, what they provide, and any that failed to load."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option


@click.command("plugins")
@format_option
@click.option("--all", "show_all", is_flag=True, help="include the built-in default plugins")
def plugins_command(output_format: str, show_all: bool) -> None:
    """Show plugins loaded from the 'ragcun' entry-point group (RAGCUN_LOAD_PLUGINS / RAGCUN_DISABLE_PLUGINS
    filter them)."""
    from ragcun.plugins import get_host

    host = get_host()
    records = [r for r in host.plugin_records() if show_all or not r.builtin]
    counts = {}
    for entry in host.registry.entries():
        counts.setdefault(entry.provider, []).append(f"{entry.kind}:{entry.name}")
    rows = []
    for r in records:
        row = r.as_dict()
        row["components"] = sorted(counts.get(r.distribution, [])) if not r.builtin else None
        rows.append(row)
    if output_format == "json":
        echo_json(rows)
        return
    from rich.table import Table

    from ragcun.console import stdout

    table = Table(title="ragcun plugins")
    for col in ("name", "distribution", "version", "hooks", "status"):
        table.add_column(col, overflow="fold")
    for row in rows:
        status = "[green]ok[/]" if row["status"] == "ok" else f"[red]error[/]: {row['error']}"
        table.add_row(row["name"], row["distribution"], row["version"], ", ".join(row["hooks"]), status)
    stdout.print(table)
    if not rows:
        stdout.print("no third-party plugins installed (packages with a [project.entry-points.ragcun] entry)")


def add_to(group: click.Group) -> None:
    group.add_command(plugins_command)
