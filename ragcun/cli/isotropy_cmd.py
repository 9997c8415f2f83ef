"""``ragcun isotropy``: isotropy diagnostics (``ragcun isotropy report``)."""

from __future__ import annotations

import click


@click.group("isotropy")
def isotropy_group() -> None:
    """Measure how isotropic (Gaussian) a model's embeddings are."""


def add_to(group: click.Group) -> None:
    group.add_command(isotropy_group)
