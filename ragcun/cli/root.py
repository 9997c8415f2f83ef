"""The root ``ragcun`` group. Imports nothing heavy: commands import torch inside their functions."""

from __future__ import annotations

import click

from ragcun import __version__


class RagcunGroup(click.Group):
    """A click group that turns library errors (``ValueError``, missing files) into a one-line error and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=RagcunGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ragcun")
def cli() -> None:
    """Train and evaluate dense retrievers with Gaussian (unnormalized) embeddings, Euclidean distance
    and SIGReg isotropy regularization.

    \b
      ragcun train --head gaussian --loss contrastive+isotropy
      ragcun eval beir
      ragcun isotropy report
      ragcun list losses          every registered component
      ragcun plugins              installed plugins and their status
    """


_built = False


def build_cli() -> click.Group:
    """Attach every plugin's commands to ``cli`` (once): the built-in ones come from the default plugin
    ``ragcun.default_plugins.commands`` through the same ``register_commands`` hook as a third party's."""
    global _built
    if not _built:
        _built = True
        from ragcun.plugins import get_host

        get_host().add_commands(cli)
    return cli


def main() -> None:
    build_cli()(prog_name="ragcun")
