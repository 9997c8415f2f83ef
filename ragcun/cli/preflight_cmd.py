"""``ragcun preflight``: environment, GPUs and NCCL, data, disk, a few real steps and a tiny evaluation."""

from __future__ import annotations

from typing import Any

import click

from ragcun.cli.options import config_flags, config_option, echo_json, format_option, set_option


@click.command("preflight")
@click.option("--train-data", required=True, metavar="SPEC", help="as for ragcun train")
@click.option("--eval-data", default=None, metavar="SPEC",
              help="a BEIR split for the tiny evaluation, e.g. beir:scifact:test")
@config_option("--data-dir")
@click.option("--output-dir", default="runs", show_default=True, help="where the real run will write (disk check)")
@config_option("--encoder", help="encoder spec, as for ragcun train")
@config_option("--head", help="head spec, as for ragcun train")
@config_option("--distance", help="distance spec, as for ragcun train")
@config_option("--loss", help="loss spec, as for ragcun train")
@config_option("--batch-size", help="per process, as the real run will use it (memory is checked with it)")
@click.option("--steps", type=int, default=3, show_default=True, help="real training steps to try")
@config_option("--grad-cache-chunk", help="GradCache chunk, as for ragcun train")
@config_option("--gradient-checkpointing")
@config_option("--no-duplicate-queries",
               help="each query at most once per global batch, as for ragcun train")
@config_option("--dtype")
@config_option("--device")
@set_option
@format_option
@click.pass_context
def preflight_command(ctx: click.Context, **params: Any) -> None:
    """Check that an expensive run will start and work, in a few minutes: environment, GPUs and NCCL,
    data present, disk space, a few real training steps and a tiny evaluation end to end.

    \b
      ragcun preflight --train-data beir:scifact:train --eval-data beir:scifact:test
    """
    from ragcun.console import stderr, stdout
    from ragcun.training.config import build_config
    from ragcun.workflows.preflight import preflight

    if params["steps"] < 1:
        raise click.BadParameter("must be a positive integer", param_hint="--steps")
    # --output-dir and --steps have preflight's own defaults (the disk checked, the steps tried), so they are
    # always passed; --eval-data is the tiny evaluation's, not the run's periodic evaluation
    flags = {**config_flags(ctx, exclude=("eval_data",)), "output_dir": params["output_dir"],
             "steps": params["steps"], "show_progress": False}
    config = build_config(settings=params["set_options"], flags=flags, command="ragcun preflight")
    table_mode = params["output_format"] == "table"

    def report(check) -> None:
        if table_mode:
            mark = ("[green]  ok[/]" if check.ok and not check.warning else
                    "[yellow]note[/]" if check.ok else "[red]FAIL[/]")
            stderr.print(f"{mark}  [bold]{check.name}[/]: {check.detail}", soft_wrap=True, highlight=False)

    checks = preflight(config, eval_data=params["eval_data"], steps=params["steps"], report=report)
    failed = [c for c in checks if not c.ok]
    if not table_mode:
        echo_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    elif not failed:
        stdout.print("[green]preflight passed[/]: the run should start and train")
    if failed:
        raise click.ClickException(f"preflight failed: {', '.join(c.name for c in failed)}")


def add_to(group: click.Group) -> None:
    group.add_command(preflight_command)
