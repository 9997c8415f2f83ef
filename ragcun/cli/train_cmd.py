"""``ragcun train``: a thin shell over :func:`ragcun.workflows.run.train` (the loop with its periodic evaluation;
torch is imported inside)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ragcun.cli.options import set_option

# CLI parameter -> TrainConfig field (the same name unless listed)
_NOT_CONFIG = {"resume", "config_file", "set_options", "nproc_per_node", "no_progress"}


def _train_options(fn):
    options = [
        click.option("--head", default=None, help="head spec  [default: gaussian]"),
        click.option("--loss", default=None, help="loss spec, e.g. contrastive+isotropy or contrastive+0.5*isotropy  "
                                                  "[default: contrastive+isotropy]"),
        click.option("--encoder", default=None, help="encoder spec: all-minilm-l6-v2 or hf:PATH  "
                                                     "[default: all-minilm-l6-v2]"),
        click.option("--distance", default=None, help="distance spec  [default: euclidean]"),
        click.option("--train-data", default=None, metavar="SPEC",
                     help="beir:NAME[:SPLIT] (qrels pairs), jsonl:PATH (MS MARCO-style) or triples:PATH (MS MARCO TSV)"),
        click.option("--data-dir", default=None, envvar="RAGCUN_DATA", show_envvar=True,
                     help="folder holding the BEIR datasets"),
        click.option("--output-dir", default=None, help="run folder: config, metrics, checkpoints, final model"),
        click.option("--batch-size", type=int, default=None, help="per process and micro-step  [default: 32]"),
        click.option("--steps", type=int, default=None, help="optimizer steps"),
        click.option("--epochs", type=float, default=None, help="passes over the data (instead of --steps)"),
        click.option("--lr", type=float, default=None, help="peak learning rate  [default: 2e-5]"),
        click.option("--head-lr", type=float, default=None, help="the head's learning rate  [default: --lr]"),
        click.option("--warmup", type=float, default=None,
                     help="warmup: a fraction of the steps (< 1) or a number of steps  [default: 0.1]"),
        click.option("--schedule", default=None, help="linear, cosine or constant (after warmup)  [default: linear]"),
        click.option("--weight-decay", type=float, default=None, help="AdamW weight decay  [default: 0.01]"),
        click.option("--grad-accum", type=int, default=None, help="micro-batches per optimizer step  [default: 1]"),
        click.option("--max-grad-norm", type=float, default=None, help="gradient clipping (0 disables)  [default: 1.0]"),
        click.option("--seed", type=int, default=None, help="[default: 42]"),
        click.option("--freeze-encoder", is_flag=True, default=None, help="train only the head"),
        click.option("--negatives", type=int, default=None, help="hard negatives per query  [default: 0]"),
        click.option("--mine-negatives", default=None, help="bm25 or model: mine hard negatives (BEIR data), cached"),
        click.option("--qrels-threshold", type=int, default=None,
                     help="graded qrels: a pair is relevant when its score >= this  [default: 1]"),
        click.option("--shuffle-buffer", type=int, default=None, help="streamed data: shuffle buffer  [default: 10000]"),
        click.option("--grad-cache-chunk", type=int, default=None,
                     help="GradCache: embed in chunks of K texts (large batches in bounded memory)"),
        click.option("--dtype", default=None, help="auto, float32, bfloat16 or float16 (autocast; weights stay float32)  [default: auto: bf16 on "
                          "GPUs that support it, float32 on CPUs; bfloat16 also works on a CPU, 1.55x faster "
                          "on one with AVX512-BF16, see benchmarks/RESULTS.md]"),
        click.option("--device", default=None, help="cpu, cuda, cuda:1  [default: cuda:LOCAL_RANK if available]"),
        click.option("--save-every", type=int, default=None, help="checkpoint every K steps  [default: 500]"),
        click.option("--keep-checkpoints", type=int, default=None, help="checkpoints kept  [default: 2]"),
        click.option("--log-every", type=int, default=None, help="metrics every K steps  [default: 10]"),
        click.option("--eval-data", default=None, metavar="SPEC", help="periodic evaluation, e.g. beir:nfcorpus:dev"),
        click.option("--eval-every", type=int, default=None, help="evaluate every K steps"),
        click.option("--max-eval-queries", type=int, default=None, help="cap on the queries of periodic evaluation"),
        click.option("--diagnostics-every", type=int, default=None, help="isotropy diagnostics every K steps"),
        click.option("--no-progress", is_flag=True, default=False, help="no live display"),
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


def resolve_config(params: dict[str, Any], explicit: set[str]):
    """TrainConfig from defaults < a saved run (with --resume) < --config < explicit flags < --set."""
    from ragcun.spec import load_toml, merge_settings, parse_set_option, settings_from_mapping
    from ragcun.training.config import CONFIG_FILE, TrainConfig

    base: dict[str, Any] = TrainConfig().to_dict()
    origins: dict[tuple[str, str, str], str] = {}  # (kind, name, param) -> where the setting came from
    output_dir = params.get("output_dir")
    if params.get("resume"):
        if not output_dir:
            raise ValueError("--resume needs --output-dir (the run to continue)")
        if not (Path(output_dir) / CONFIG_FILE).is_file():
            raise ValueError(f"--resume: {output_dir} has no {CONFIG_FILE}; it is not a ragcun training run")
        base = TrainConfig.load(output_dir).to_dict()
        for kind, names in (base.get("settings") or {}).items():
            for name, values in names.items():
                for param in values:
                    origins[(kind, name, param)] = f"{Path(output_dir) / CONFIG_FILE} (settings.{kind}.{name})"
    config_file = params.get("config_file")
    if config_file:
        if str(config_file).endswith(".json"):
            import json

            try:
                data = json.loads(Path(config_file).read_text())
            except FileNotFoundError:
                raise ValueError(f"--config {config_file} does not exist") from None
            base.update(TrainConfig.from_dict(data, str(config_file)).to_dict())
        else:
            data = load_toml(config_file)
            table = {k.replace("-", "_"): v for k, v in dict(data.get("train", {})).items()}
            unknown = set(table) - set(base) - {"settings"}
            if unknown:
                TrainConfig.from_dict(table, f"{config_file} [train]")  # raises with a did-you-mean
            _check_train_types(table, f"{config_file} [train]")
            base.update(table)
            components = settings_from_mapping(data, str(config_file), other_tables=("train",), origins=origins)
            merged = base.get("settings") or {}
            for kind, names in components.items():
                for name, values in names.items():
                    merged.setdefault(kind, {}).setdefault(name, {}).update(values)
            base["settings"] = merged
    for name in explicit:
        if name in _NOT_CONFIG:
            continue
        base[name] = params[name]
    if "no_progress" in explicit and params["no_progress"]:
        base["show_progress"] = False
    if base.get("max_grad_norm") == 0:
        base["max_grad_norm"] = None
    settings = base.get("settings") or {}
    settings = {k: {n: dict(v) for n, v in names.items()} for k, names in settings.items()}
    for option in params.get("set_options") or ():
        kind, name, param, value = parse_set_option(option)
        merge_settings(settings, kind, name, param, value)
        origins[(kind, name, param)] = f"--set {option}"
    base["settings"] = {k: v for k, v in settings.items() if v}
    config = TrainConfig.from_dict(base)
    config.validate()
    # every setting names a registered component, a constructor argument of the right type, and a component
    # this run builds; checked here so a typo fails before anything runs (and once, not on every rank)
    from ragcun.components import check_settings, components_in_use

    in_use = components_in_use({"encoder": config.encoder, "head": config.head, "distance": config.distance,
                                "loss": config.loss})
    check_settings(config.settings, in_use, origins=origins)
    return config


def _check_train_types(table: dict[str, Any], source: str) -> None:
    """A [train] table's values have the types of TrainConfig's fields (``lr = "fast"`` fails here, named)."""
    import inspect

    from ragcun.spec import check_value_type
    from ragcun.training.config import TrainConfig

    parameters = inspect.signature(TrainConfig).parameters
    for key, value in table.items():
        if key in parameters and key != "settings":
            try:
                check_value_type(parameters[key], value, key)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None


def _explicit(ctx: click.Context) -> set[str]:
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def _argv_without(ctx: click.Context, skip: set[str]) -> list[str]:
    """The explicit options of this command as argv, for relaunching it (under torchrun)."""
    argv: list[str] = []
    explicit = _explicit(ctx)
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
    """Run ``ragcun train ARGV`` under ``python -m torch.distributed.run --standalone``; return its exit code."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += [f"--master-port={master_port}", "--rdzv-backend=static", "--master-addr=127.0.0.1",
            "--nnodes=1", "--node-rank=0"] if master_port else ["--standalone"]
    cmd += ["-m", "ragcun", "train", *argv]  # ragcun/__main__.py: the whole CLI, plugins included
    return subprocess.call(cmd, env={**os.environ, **(extra_env or {})})


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
        resolve_config(params, _explicit(ctx))  # bad input fails here, once, not on every rank
        code = launch_torchrun(nproc, _argv_without(ctx, {"nproc_per_node"}))
        if code:
            raise click.exceptions.Exit(code)
        return
    config = resolve_config(params, _explicit(ctx))
    run_training(config, resume=params["resume"])


def run_training(config, *, resume: bool = False):
    from ragcun.training.loop import TrainingDiverged
    from ragcun.workflows.run import train

    try:
        result = train(config, resume=resume)
    except TrainingDiverged as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        from ragcun.training.checkpoint import latest_checkpoint

        last = latest_checkpoint(config.output_dir)
        click.echo(f"stopped; the last checkpoint, {last.folder} (step {last.step}), is intact (continue with "
                   "--resume)" if last is not None else
                   "stopped before any checkpoint was written: there is nothing to resume; run the same command "
                   "again to start over (the --output-dir is reused)", err=True)
        raise click.exceptions.Exit(130) from None
    if result.interrupted:
        raise click.exceptions.Exit(130)
    import os

    from ragcun.console import stderr

    if result.already_finished:
        if int(os.environ.get("RANK", "0")) == 0:
            stderr.print(f"{result.output_dir} is already finished ({result.step} of {result.total_steps} steps; "
                         f"model in {result.model_dir}); nothing was changed. To train longer, --resume with a "
                         "larger --steps or --epochs", highlight=False)
        return result
    if result.model_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        stderr.print(f"done: {result.step} steps, {result.pairs_per_s:.1f} pairs/s; model in {result.model_dir} "
                     f"(ragcun eval beir --model {result.model_dir})", highlight=False)
    return result


def add_to(group: click.Group) -> None:
    group.add_command(train_command)

