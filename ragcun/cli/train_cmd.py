"""``ragcun train``: the training loop (see ragcun/training/)."""

from __future__ import annotations

import click


@click.group("train", invoke_without_command=True)
@click.pass_context
def train_group(ctx: click.Context) -> None:
    """Train an embedder: ragcun train --head gaussian --loss contrastive+isotropy."""
    if ctx.invoked_subcommand is None:
        raise click.UsageError("the training loop is not implemented yet (issue #5)")


def add_to(group: click.Group) -> None:
    group.add_command(train_group)
