"""``ragcun data``: training data (``ragcun data download msmarco``)."""

from __future__ import annotations

import click

from ragcun.cli.options import DATA_DIR


@click.group("data")
def data_group() -> None:
    """Get training data."""


@data_group.command("download")
@click.argument("name", type=click.Choice(["msmarco"]))
@click.option("--data-dir", type=DATA_DIR, default=None, envvar="RAGCUN_DATA", show_envvar=True,
              help="where it goes (in DATA_DIR/msmarco)  [default: ~/.cache/ragcun/beir]")
def download_command(name: str, data_dir: str | None) -> None:
    """Download the official MS MARCO training triples (~7 GB download, ~27 GB unpacked).

    Where the network does not allow it, prints the exact commands to fetch it by hand.
    """
    from ragcun.console import make_progress, stderr, stdout
    from ragcun.data.beir import default_data_dir
    from ragcun.data.msmarco import TRIPLES_URL, download_msmarco_triples

    folder = data_dir or default_data_dir()
    stderr.print(f"downloading {TRIPLES_URL} into {folder}/msmarco", highlight=False)
    with make_progress() as progress:
        task = progress.add_task("msmarco", total=None)
        path = download_msmarco_triples(folder, progress=lambda done, total: progress.update(task, completed=done,
                                                                                            total=total))
    stdout.print(f"ready: train with --train-data triples:{path}", highlight=False)


def add_to(group: click.Group) -> None:
    group.add_command(data_group)
