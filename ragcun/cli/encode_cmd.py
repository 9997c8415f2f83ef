"""``ragcun encode``: embed a few texts and print their pairwise distances (a quick sanity check)."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option, model_settings, set_option

DEFAULT_TEXTS = ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                 "A man is riding a horse.")


@click.command("encode")
@click.argument("texts", nargs=-1)
@click.option("--model", "model_spec", default="all-minilm-l6-v2", show_default=True,
              help="checkpoint folder, hf:PATH or an encoder name")
@click.option("--distance", default=None, help="override the model's distance (see `ragcun list distances`)")
@set_option
@format_option
def encode_command(texts: tuple[str, ...], model_spec: str, distance: str | None, set_options: tuple[str, ...],
                   output_format: str) -> None:
    """Embed TEXTS (default: four example sentences) and print the distance between every pair."""
    from ragcun.pairwise import pairwise_report

    settings = model_settings("ragcun encode", set_options, [model_spec], distance=distance)
    report = pairwise_report(list(texts or DEFAULT_TEXTS), model_spec, distance=distance, settings=settings)
    if output_format == "json":
        echo_json(report)
        return
    from rich.table import Table

    from ragcun.console import stdout

    stdout.print(f"model [bold]{report['model']}[/]: {report['dim']} dims, distance [bold]{report['distance']}[/] "
                 f"({'lower' if report['is_metric'] else 'higher'} = closer)")
    table = Table()
    table.add_column("text", overflow="fold", max_width=40)
    for i in range(len(report["texts"])):
        table.add_column(f"#{i}", justify="right")
    for i, (text, row) in enumerate(zip(report["texts"], report["matrix"])):
        table.add_row(f"#{i} {text}", *(f"{v:.4f}" for v in row))
    stdout.print(table)


def add_to(group: click.Group) -> None:
    group.add_command(encode_command)
