"""``ragcun sweep``: the three-run ablation (baseline, +isotropy, frozen encoder + isotropy) and one table."""

from __future__ import annotations

from typing import Any

import click

from ragcun.cli.options import config_flags, config_option, echo_json, format_option, set_option
from ragcun.launch import PARALLEL_CHOICES, PARALLEL_HELP, SLOTS_HELP


@click.command("sweep")
@click.option("--train-data", required=True, metavar="SPEC", help="as for ragcun train, e.g. beir:scifact:train")
@click.option("--eval-data", required=True, metavar="SPEC",
              help="BEIR split evaluated at the end, e.g. beir:scifact:test")
@config_option("--data-dir")
@click.option("--output-dir", required=True,
              help="the plan (OUTPUT_DIR/sweep.toml), models (OUTPUT_DIR/models/RUN/seed-SEED) and results "
                   "(OUTPUT_DIR/runs/RUN/seed-SEED)")
@config_option("--encoder", help="encoder spec, as for ragcun train")
@config_option("--head", help="head spec, as for ragcun train")
@config_option("--distance", help="distance spec, as for ragcun train")
@click.option("--isotropy-weight", type=float, default=1.0, show_default=True, help="W in contrastive+W*isotropy")
@click.option("--runs", default="baseline,isotropy,frozen", show_default=True, help="which of the three to run")
@config_option("--steps", help="optimizer steps per run")
@config_option("--epochs", help="passes over the data per run (instead of --steps)")
@config_option("--batch-size", help="per process")
@config_option("--lr")
@config_option("--head-lr", help="[default: --lr; 1e-3 for the frozen run]")
@config_option("--warmup")
@config_option("--negatives")
@config_option("--mine-negatives", help="bm25 or model, with filters (bm25:skip=3,range=10-50,margin=0.05)")
@config_option("--no-duplicate-queries", help="each query at most once per global batch")
@config_option("--grad-cache-chunk", help="GradCache chunk, as for ragcun train")
@config_option("--gradient-checkpointing")
@config_option("--dtype")
@config_option("--seed", help="seed of every run")
@config_option("--save-every")
@config_option("--eval-batch-size", help="for the final evaluation")
@click.option("--resume", is_flag=True, hidden=True,
              help="(always so now) unfinished runs resume from their checkpoints; kept for older scripts")
@click.option("--rerun-changed", is_flag=True,
              help="runs finished (or part trained) with other settings than these are set aside under "
                   "OUTPUT_DIR/stale/ and run again [default: refused, naming each setting]")
@click.option("--parallel", type=click.Choice(PARALLEL_CHOICES), default="auto", show_default=True,
              help=PARALLEL_HELP)
@click.option("--slots", type=click.IntRange(1), default=None, help=SLOTS_HELP)
@set_option
@format_option
@click.pass_context
def sweep_command(ctx: click.Context, **params: Any) -> None:
    """Train and evaluate the recommended ablation, then print one comparison table.

    \b
      baseline   contrastive, isotropy weight 0 (no gradient from SIGReg)
      isotropy   contrastive + W * isotropy            (W = --isotropy-weight, default 1.0)
      frozen     contrastive + W * isotropy, encoder frozen (only the head trains)

    The sweep is an ablation plan: it writes OUTPUT_DIR/sweep.toml (one seed, the three arms, these settings) and
    runs it as `ragcun ablation run` does: one after another on a CPU; on a node with two or more GPUs side by
    side, one GPU each (--parallel and --slots change that). Finished runs are skipped and an interrupted one
    resumes from its checkpoint, so re-running the command after a failure only does what is missing. Models
    go in OUTPUT_DIR/models/RUN/seed-SEED, results (result.json, per-query metrics) in OUTPUT_DIR/runs/RUN/.

    \b
      ragcun sweep --train-data beir:scifact:train --eval-data beir:scifact:test --output-dir runs/sweep --epochs 1
    """
    from ragcun.ablation.sweep import arm_configs, run_sweep
    from ragcun.console import stderr, stdout
    from ragcun.training.config import build_config

    runs = [r.strip() for r in params["runs"].split(",") if r.strip()]
    # --eval-data and --eval-batch-size are the final evaluation's, not the runs' periodic evaluation
    flags = config_flags(ctx, exclude=("eval_data", "eval_batch_size"))
    expand = lambda config: arm_configs(config, params["isotropy_weight"], runs).values()  # noqa: E731
    base = build_config(settings=params["set_options"], flags=flags, command="ragcun sweep", expand=expand)
    plan_file, rows = run_sweep(base, params["eval_data"], data_dir=params["data_dir"],
                                isotropy_weight=params["isotropy_weight"], runs=runs,
                                batch_size=params["eval_batch_size"], parallel=params["parallel"],
                                slots=params["slots"], rerun_changed=params["rerun_changed"],
                                show=lambda text: stderr.print(text, highlight=False))
    if params["output_format"] == "json":
        echo_json({"eval_data": params["eval_data"], "plan": str(plan_file), "runs": rows})
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"ablation on {params['eval_data']}", box=box.SIMPLE_HEAD)
    for col in ("run", "NDCG@10", "MRR@10", "R@100", "SIGReg", "erank/D", "loss"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for row in rows:
        iso = row.get("isotropy") or {}
        table.add_row(row["run"], _num(row["NDCG@10"]), _num(row["MRR@10"]), _num(row["Recall@100"]),
                      _num(iso.get("sigreg_raw"), 2), _num(iso.get("effective_rank_ratio")),
                      _num(row["final_train"].get("loss")))
    stdout.print(table)
    for row in rows:
        stdout.print(f"  {row['run']}: {row['loss']}{', encoder frozen' if row['frozen_encoder'] else ''}, "
                     f"{row['trainable_params']:,} trainable parameters", highlight=False)
    floor = next((r["isotropy"]["sigreg_gaussian_floor"] for r in rows
                  if "sigreg_gaussian_floor" in (r.get("isotropy") or {})), None)
    n = next((r["isotropy"]["n"] for r in rows if "n" in (r.get("isotropy") or {})), None)
    stdout.print(f"  SIGReg and erank/D: a fixed sample of {n} searched document embeddings (raw vectors)"
                 + (f"; an exact N(0, I) sample of the same size scores SIGReg {floor:.2f}"
                    if floor is not None else "")
                 + f"; loss: last logged training loss; plan {plan_file}", highlight=False)


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def add_to(group: click.Group) -> None:
    group.add_command(sweep_command)
