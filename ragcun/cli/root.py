"""The root ``ragcun`` group. Imports nothing heavy: commands import torch inside their functions."""

from __future__ import annotations

import click

from ragcun import __version__


class RagcunGroup(click.Group):
    """A click group that turns library errors (``ValueError``, missing files) and write errors that are about
    the place written to (a full disk, a read-only folder) into a one-line error and exit 1, and a stop signal
    (SIGTERM, or SIGINT raised as :class:`ragcun.signals.Stopped`) into the exit code 128 + signal."""

    def invoke(self, ctx: click.Context):
        from ragcun.signals import Stopped

        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            raise click.ClickException(str(exc)) from None
        except Stopped as exc:
            click.echo(f"stopped ({exc.args[0]})", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None
        except OSError as exc:
            from ragcun.files import WRITE_ERRORS, output_error

            if exc.errno not in WRITE_ERRORS:
                raise
            error = output_error(exc, exc.filename or "a file")
            raise click.ClickException(str(error)) from None


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
    from ragcun.console import guard_closed_streams

    guard_closed_streams()  # `ragcun train | tee log`, then Ctrl-C: the closed pipe must not cost the run
    build_cli()(prog_name="ragcun")
