"""``ragcun eval``: evaluation on benchmarks (``ragcun eval beir``)."""

from __future__ import annotations

import click


@click.group("eval")
def eval_group() -> None:
    """Evaluate a model on retrieval benchmarks."""


def add_to(group: click.Group) -> None:
    group.add_command(eval_group)
