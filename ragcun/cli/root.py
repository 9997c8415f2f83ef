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


def _add_builtin_commands(group: click.Group) -> None:
    from ragcun.cli import (ablation_cmd, data_cmd, encode_cmd, eval_cmd, export_cmd, isotropy_cmd, list_cmd,
                            plugins_cmd, preflight_cmd, sweep_cmd, train_cmd)

    for module in (list_cmd, plugins_cmd, encode_cmd, train_cmd, sweep_cmd, ablation_cmd, preflight_cmd, data_cmd,
                   eval_cmd, isotropy_cmd, export_cmd):
        module.add_to(group)


_built = False


def build_cli() -> click.Group:
    """Attach the built-in commands and every plugin's commands to ``cli`` (once)."""
    global _built
    if not _built:
        _built = True
        _add_builtin_commands(cli)
        from ragcun.plugins import get_host

        get_host().add_commands(cli)
    return cli


def main() -> None:
    build_cli()(prog_name="ragcun")
