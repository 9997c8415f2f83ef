"""``ragcun train``: a thin shell over :func:`ragcun.workflows.run.train` (the loop with its periodic evaluation;
torch is imported inside)."""

from __future__ import annotations

from typing import Any

import click

from ragcun.cli.options import config_flags, config_options, given_options, set_option

# the order of the settings in --help; a setting not named here (one added later) comes after them
_HELP_ORDER = ("--head", "--loss", "--encoder", "--distance", "--train-data", "--data-dir", "--output-dir",
               "--batch-size", "--steps", "--epochs", "--lr", "--head-lr", "--warmup", "--schedule", "--weight-decay",
               "--grad-accum", "--max-grad-norm", "--seed", "--freeze-encoder", "--negatives", "--mine-negatives",
               "--qrels-threshold", "--shuffle-buffer", "--no-duplicate-queries", "--grad-cache-chunk",
               "--gradient-checkpointing", "--max-seq-length", "--dtype", "--device", "--save-every",
               "--keep-checkpoints", "--log-every", "--eval-data", "--eval-every", "--max-eval-queries",
               "--diagnostics-every", "--no-progress")


def _train_options(fn):
    # one option per TrainConfig field with a flag, made from the field's declaration (ragcun.training.config:
    # help, type, default shown in --help); an option the user does not give leaves the value to --config, a
    # resumed run or the dataclass (ragcun.training.config.build_config)
    options = [
        *config_options(_HELP_ORDER),
        click.option("--resume", is_flag=True, default=False,
                     help="continue the run in --output-dir from its latest checkpoint (its saved settings apply)"),
        click.option("--config", "config_file", default=None, metavar="FILE",
                     help="TOML: a [train] table of these settings and [KIND.NAME] component tables"),
        set_option,
        click.option("--nproc-per-node", type=int, default=None,
                     help="launch this many processes with torchrun (one per GPU)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_config(ctx: click.Context):
    """TrainConfig from defaults < a saved run (with --resume) < --config < the flags given < --set
    (:func:`ragcun.training.config.build_config`; the flags: options named after a TrainConfig field)."""
    from ragcun.training.config import build_config

    params = ctx.params
    return build_config(config_file=params.get("config_file"), settings=params.get("set_options") or (),
                        flags=config_flags(ctx), resume=bool(params.get("resume")), command="ragcun train")


def _argv_without(ctx: click.Context, skip: set[str]) -> list[str]:
    """The explicit options of this command as argv, for relaunching it (under torchrun)."""
    argv: list[str] = []
    explicit = given_options(ctx)
    for param in ctx.command.params:
        if param.name in skip or param.name not in explicit or not isinstance(param, click.Option):
            continue
        flag = max(param.opts, key=len)
        value = ctx.params[param.name]
        if param.is_flag:
            if value:
                argv.append(flag)
        elif param.multiple:
            for v in value:
                argv += [flag, str(v)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def launch_torchrun(nproc: int, argv: list[str], extra_env: dict[str, str] | None = None,
                    master_port: int | None = None) -> int:
    """Run ``ragcun train ARGV`` under torchrun with ``nproc`` ranks (:func:`ragcun.launch.torchrun_command`);
    return its exit code.

    torchrun dies with this process (:func:`ragcun.launch.run_one`): a SIGTERM here is passed on to it (it passes
    it to every rank, which saves a checkpoint), and this process waits for it to finish.

    The ranks get the user's own options (ARGV), not the resolved config as a ``--config`` file: each rank
    then resolves exactly what a hand-launched ``torchrun -m ragcun train ...`` resolves, with ``--resume``
    reading the saved run itself, and an error on a rank names the flag or ``--set`` the user typed (a config
    file would stand in for all of them)."""
    from ragcun.launch import run_one, torchrun_command

    cmd = torchrun_command(nproc, ["train", *argv], master_port=master_port)
    return run_one(cmd, env=extra_env, grace=300.0)  # torchrun gives its ranks 30 s to save, then kills them


@click.command("train")
@_train_options
@click.pass_context
def train_command(ctx: click.Context, **params: Any) -> None:
    """Train an embedder (encoder + head) with a composite loss, on one CPU or GPU or under torchrun.

    \b
      ragcun train --head gaussian --loss contrastive+isotropy --train-data beir:scifact:train \\
          --output-dir runs/scifact --epochs 1 --batch-size 32
      ragcun train ... --nproc-per-node 8            # DDP on 8 GPUs (NCCL), via torchrun
      torchrun --nproc-per-node 8 -m ragcun train ...    # the same, launched by hand
      ragcun train --output-dir runs/scifact --resume  # continue exactly where it stopped

    The run folder gets train_config.json (every resolved setting), metrics.jsonl, checkpoints/step-N
    (model, optimizer, scheduler, RNG, data position) and, when finished, the model itself, so
    `ragcun eval beir --model runs/NAME` evaluates it.
    """
    nproc = params.get("nproc_per_node")
    if nproc is not None:
        if nproc < 1:
            raise click.BadParameter("must be a positive integer", param_hint="--nproc-per-node")
        resolve_config(ctx)  # bad input fails here, once, not on every rank
        code = launch_torchrun(nproc, _argv_without(ctx, {"nproc_per_node"}))
        if code:
            raise click.exceptions.Exit(code)
        return
    config = resolve_config(ctx)
    run_training(config, resume=params["resume"])


def run_training(config, *, resume: bool = False):
    from ragcun.distributed import CollectiveTimeout
    from ragcun.training.loop import TrainingDiverged
    from ragcun.workflows.run import train

    try:
        result = train(config, resume=resume)
    except TrainingDiverged as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM, or one before the first step
        from ragcun.signals import exit_code
        from ragcun.training.checkpoint import latest_checkpoint

        last = latest_checkpoint(config.output_dir)
        click.echo(f"stopped; the last checkpoint, {last.folder} (step {last.step}), is intact (continue with "
                   "--resume)" if last is not None else
                   "stopped before any checkpoint was written: there is nothing to resume; run the same command "
                   "again to start over (the --output-dir is reused)", err=True)
        raise click.exceptions.Exit(exit_code(getattr(exc, "signum", None))) from None
    except CollectiveTimeout as exc:  # another rank stopped, hung or died: which collective waited
        raise click.ClickException(str(exc)) from None
    if result.interrupted:  # 130 for Ctrl-C, 143 for SIGTERM
        from ragcun.signals import exit_code

        raise click.exceptions.Exit(exit_code(result.signal))
    from ragcun.console import stderr
    from ragcun.distributed import torchrun_ranks

    main_process = torchrun_ranks()[0] == 0
    if result.already_finished:
        if main_process:
            stderr.print(f"{result.output_dir} is already finished ({result.step} of {result.total_steps} steps; "
                         f"model in {result.model_dir}); nothing was changed. To train longer, --resume with a "
                         "larger --steps or --epochs", highlight=False)
        return result
    if result.model_dir is not None and main_process:
        memory = "".join([f", peak memory {result.peak_rss_mb:.0f} MiB" if result.peak_rss_mb else "",
                          f" (GPU {result.peak_memory_mb:.0f} MiB)" if result.peak_memory_mb else ""])
        stderr.print(f"done: {result.step} steps, {result.pairs_per_s:.1f} pairs/s{memory}; "
                     f"model in {result.model_dir} (ragcun eval beir --model {result.model_dir})", highlight=False)
    return result


def add_to(group: click.Group) -> None:
    group.add_command(train_command)

