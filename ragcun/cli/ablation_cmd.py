"""``ragcun ablation``: run a plan of arms x seeds (``run``) and build its comparison table (``compare``)."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option


@click.group("ablation")
def ablation_group() -> None:
    """Arms x seeds from a TOML plan, evaluated on BEIR, compared with paired significance tests.

    \b
      ragcun ablation run benchmarks/ablation/minilm-scifact.toml
      ragcun ablation compare benchmarks/ablation/minilm-scifact
    """


@ablation_group.command("run")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--data-dir", default=None, envvar="RAGCUN_DATA", show_envvar=True,
              help="folder holding the BEIR datasets")
@click.option("--results", default=None, type=click.Path(file_okay=False),
              help="results folder (per-query metrics, report) [default: the plan's `results`, beside the plan]")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="models, caches and TREC runs [default: the plan's `work_dir`]")
@click.option("--only", default=None, help="comma-separated arms to run now (the others are left for later)")
@click.option("--seeds", "seed_list", default=None, help="comma-separated seeds of the trained arms to run now")
@click.option("--parallel", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="trained runs side by side, one process each: auto = one per GPU on a node with 2 or more, "
                   "else one after another; yes = also on a CPU (the cores shared out); no = one after another")
@click.option("--slots", type=click.IntRange(1), default=None,
              help="how many runs at once with --parallel [default: the GPU count, or 2 on a CPU]")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="build the comparison table from every finished run at the end")
def run_command(plan_file: str, data_dir: str | None, results: str | None, work_dir: str | None,
                only: str | None, seed_list: str | None, parallel: str, slots: int | None, compare: bool) -> None:
    """Run every arm x seed of PLAN_FILE that has not finished yet, one after another.

    Finished runs (a result.json in the results folder) are skipped, so an interrupted plan resumes where it
    stopped; a half-trained model resumes from its checkpoint.
    """
    from ragcun.ablation.compare import write_report
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.runner import run_plan

    plan = load_plan(plan_file, results=results, work_dir=work_dir)
    chosen = None
    if only:
        chosen = {a.strip() for a in only.split(",") if a.strip()}
        unknown = sorted(chosen - set(plan.arms))
        if unknown:
            raise click.BadParameter(f"unknown arm(s) {', '.join(unknown)}; the plan has {', '.join(plan.arms)}",
                                     param_hint="--only")
    seeds = None
    if seed_list:
        try:
            seeds = {int(s) for s in seed_list.split(",") if s.strip()}
        except ValueError:
            raise click.BadParameter(f"{seed_list!r}: give comma-separated integers", param_hint="--seeds") from None
    summary = run_plan(plan, data_dir=data_dir, show=lambda s: click.echo(s, err=True), only=chosen, seeds=seeds,
                       parallel=parallel, slots=slots)
    click.echo(f"finished now: {len(summary['finished_now'])} run(s), already finished: {len(summary['skipped'])}, "
               f"wall time {summary['wall_s'] / 60:.1f} min", err=True)
    if compare:
        _, paths = write_report(plan.results)
        click.echo(f"report: {', '.join(str(p) for p in paths)}", err=True)


@ablation_group.command("compare")
@click.argument("results", type=click.Path(file_okay=False, exists=True))
@click.option("--baseline", default=None, help="arm every other arm is tested against [default: the plan's]")
@click.option("--test", type=click.Choice(["student", "fisher"]), default="student", show_default=True,
              help="paired t-test or Fisher's randomization test (both from ranx)")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="differences whose 95% CI lies inside +-margin are reported as equivalent")
@format_option
def compare_command(results: str, baseline: str | None, test: str, margin: float, output_format: str) -> None:
    """Build the table of RESULTS (a plan's results folder): report.md, report.json, ndcg.png,
    isotropy_vs_ndcg.png."""
    from ragcun.ablation.compare import write_report

    report, paths = write_report(results, baseline=baseline, test=test, margin=margin)
    if output_format == "json":
        echo_json(report)
    else:
        click.echo((paths[0]).read_text())


def add_to(group: click.Group) -> None:
    group.add_command(ablation_group)
