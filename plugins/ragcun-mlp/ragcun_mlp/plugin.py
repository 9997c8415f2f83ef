"""The plugin module named by the `ragcun` entry point. Keep it import-light: no torch here."""

import click

import ragcun


@ragcun.hookimpl
def register_heads(register):
    register("mlp", "ragcun_mlp.head:MLPHead", aliases=("mlp-head",), provides=("mean",),
             summary="two-layer MLP (GELU) to out_dim, unnormalized (example plugin)")


@ragcun.hookimpl
def register_evaluators(register):
    register("recall-at-k", "ragcun_mlp.recall:RecallAtK",
             summary="Recall@k on a local BEIR folder, computed independently of beir (example plugin)")


@ragcun.hookimpl
def register_commands(cli):
    @cli.command("params")
    @click.argument("model")
    @click.option("--head", default=None, help="head spec when MODEL is an encoder (default: identity)")
    @click.option("--set", "set_options", multiple=True, metavar="KIND.NAME.PARAM=VALUE")
    def params_command(model, head, set_options):
        """Count the parameters of MODEL (a checkpoint folder, hf:PATH or an encoder name)."""
        from ragcun_mlp.params import count_parameters

        counts = count_parameters(model, head=head, set_options=set_options)
        for part, n in counts.items():
            click.echo(f"{part:10s} {n:>12,d}")
