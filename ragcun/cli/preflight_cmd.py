"""``ragcun preflight``: environment, GPUs and NCCL, data, disk, a few real steps and a tiny evaluation."""

from __future__ import annotations

from typing import Any

import click

from ragcun.cli.options import echo_json, format_option, set_option


@click.command("preflight")
@click.option("--train-data", required=True, metavar="SPEC", help="as for ragcun train")
@click.option("--eval-data", default=None, metavar="SPEC", help="a BEIR split for the tiny evaluation, e.g. beir:scifact:test")
@click.option("--data-dir", default=None, envvar="RAGCUN_DATA", show_envvar=True)
@click.option("--output-dir", default="runs", show_default=True, help="where the real run will write (disk check)")
@click.option("--encoder", default="all-minilm-l6-v2", show_default=True)
@click.option("--head", default="gaussian", show_default=True)
@click.option("--distance", default="euclidean", show_default=True)
@click.option("--loss", default="contrastive+isotropy", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--steps", type=int, default=3, show_default=True, help="real training steps to try")
@click.option("--grad-cache-chunk", type=int, default=None)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--device", default=None)
@set_option
@format_option
def preflight_command(**params: Any) -> None:
    """Check that an expensive run will start and work, in a few minutes: environment, GPUs and NCCL,
    data present, disk space, a few real training steps and a tiny evaluation end to end.

    \b
      ragcun preflight --train-data beir:scifact:train --eval-data beir:scifact:test
    """
    from ragcun.console import stderr, stdout
    from ragcun.spec import settings_from_options
    from ragcun.training.config import TrainConfig
    from ragcun.workflows.preflight import preflight

    if params["steps"] < 1:
        raise click.BadParameter("must be a positive integer", param_hint="--steps")
    settings = settings_from_options(params["set_options"])
    config = TrainConfig(output_dir=params["output_dir"], train_data=params["train_data"], data_dir=params["data_dir"],
                         encoder=params["encoder"], head=params["head"], distance=params["distance"],
                         loss=params["loss"], settings={k: v for k, v in settings.items() if v},
                         batch_size=params["batch_size"], steps=params["steps"],
                         grad_cache_chunk=params["grad_cache_chunk"], dtype=params["dtype"], device=params["device"],
                         show_progress=False).validate()
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
