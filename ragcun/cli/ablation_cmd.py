"""``ragcun ablation``: run a plan of arms x seeds (``run``), build its report (``compare``) and size it
(``power``)."""

from __future__ import annotations

import math

import click

from ragcun.cli.options import DATA_DIR, DATA_DIR_HELP, echo_json, format_option
from ragcun.launch import PARALLEL_CHOICES, PARALLEL_HELP, SLOTS_HELP


class PositiveFinite(click.ParamType):
    """A finite number above 0 (``nan``, ``inf``, 0 and negatives are refused)."""

    name = "positive number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r}: give a finite number above 0", param, ctx)
        return number


@click.group("ablation")
def ablation_group() -> None:
    """Arms x seeds from a TOML plan, evaluated on BEIR, compared run by run (paired by seed).

    \b
      ragcun ablation power benchmarks/ablation/minilm-scifact.toml --target 0.01
      ragcun ablation run benchmarks/ablation/minilm-scifact.toml
      ragcun ablation compare benchmarks/ablation/minilm-scifact
    """


@ablation_group.command("run")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=DATA_DIR, default=None, envvar="RAGCUN_DATA", show_envvar=True,
              help=DATA_DIR_HELP)
@click.option("--results", default=None, type=click.Path(file_okay=False),
              help="results folder (per-query metrics, report) [default: the plan's `results`, beside the plan]")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="models, caches and TREC runs [default: the plan's `work_dir`]")
@click.option("--only", default=None, help="comma-separated arms to run now (the others are left for later)")
@click.option("--seeds", "seed_list", default=None, help="comma-separated seeds of the trained arms to run now")
@click.option("--parallel", type=click.Choice(PARALLEL_CHOICES), default="auto", show_default=True,
              help="the trained runs, one process each: " + PARALLEL_HELP)
@click.option("--slots", type=click.IntRange(1), default=None, help=SLOTS_HELP)
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="build the comparison table from every finished run at the end")
@click.option("--rerun-changed", is_flag=True,
              help="finished runs (and lambda candidates, model folders) whose recorded settings differ from the "
                   "plan's are set aside under RESULTS/stale/ (models under WORK/stale/) and run again with the "
                   "plan's settings [default: such a plan is refused, naming each run and setting]")
@click.option("--dry-run", is_flag=True,
              help="check the plan (datasets, splits, every run's settings and components, the pre-registration, "
                   "finished runs against the plan) and print what would run, without training or writing anything; "
                   "it warns where this CPU would emulate the plan's bfloat16")
def run_command(plan_file: str, data_dir: str | None, results: str | None, work_dir: str | None,
                only: str | None, seed_list: str | None, parallel: str, slots: int | None, compare: bool,
                rerun_changed: bool, dry_run: bool) -> None:
    """Run every arm x seed of PLAN_FILE that has not finished yet, one after another.

    Finished runs (a result.json in the results folder) are skipped, so an interrupted plan resumes where it
    stopped; a half-trained model resumes from its checkpoint. Each result records the settings that define it;
    a finished run whose settings differ from the plan's (the plan edited since) is refused, naming the run and
    each setting, unless --rerun-changed.
    """
    from ragcun.ablation.compare import write_report
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.runner import PlanRunner, run_plan

    plan = load_plan(plan_file, results=results, work_dir=work_dir)
    if dry_run:
        for line in PlanRunner(plan, data_dir=data_dir, rerun_changed=rerun_changed).dry_run():
            click.echo(line)
        click.echo("dry run: the plan checks out; nothing was trained or written")
        return
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
                       parallel=parallel, slots=slots, rerun_changed=rerun_changed)
    click.echo(f"finished now: {len(summary['finished_now'])} run(s), already finished: {len(summary['skipped'])}, "
               f"wall time {summary['wall_s'] / 60:.1f} min", err=True)
    if compare:
        missing = _report_needs(plan)
        if missing:
            click.echo(f"report: not built yet: {missing}; run the other arms (without --only), then "
                       f"ragcun ablation compare {plan.results}", err=True)
            return
        _, paths = write_report(plan.results)
        click.echo(f"report: {', '.join(str(p) for p in paths)}", err=True)


def _report_needs(plan) -> str | None:
    """What the report still lacks before it can be built (``None``: it can be): any finished run, and, for a
    plan without [primary] (each arm against the baseline), the baseline's runs."""
    from ragcun.ablation.runner import RESULT_FILE

    finished = {p.parent.parent.name for p in plan.results.glob(f"runs/*/*/{RESULT_FILE}")}
    if not finished:
        return "no run has finished"
    if plan.primary is None and plan.baseline not in finished:
        return (f"the comparison needs the baseline's runs, and {plan.baseline!r} has none (finished: "
                f"{', '.join(sorted(finished))})")
    return None


@ablation_group.command("compare")
@click.argument("results", type=click.Path(file_okay=False, exists=True))
@click.option("--plan", "plan_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="the plan file whose [primary] and [secondary] to use [default: those in RESULTS/plan.json]")
@click.option("--exploratory", is_flag=True,
              help="analyse against a primary family that differs from the recorded one (a changed plan or "
                   "--margin), without verdicts")
@click.option("--margin", type=PositiveFinite(), default=None,
              help="equivalence margin of TOST [default: the plan's [primary] margin, else 0.01]; one other than "
                   "the recorded one changes the primary family (--exploratory)")
@click.option("--baseline", default=None,
              help="for a plan without [primary]: the control of the trained arms [default: the plan's baseline]")
@click.option("--test", type=click.Choice(["student", "fisher"]), default="student", show_default=True,
              help="the query-level test (conditional on the runs): paired t-test or Fisher's randomization "
                   "test (both from ranx)")
@click.option("--resamples", type=click.IntRange(100), default=10_000, show_default=True,
              help="resamples of the two-level bootstrap (seeds, then queries)")
@click.option("--seed", type=int, default=0, show_default=True, help="the bootstrap's seed (same seed, same intervals)")
@format_option
def compare_command(results: str, plan_file: str | None, exploratory: bool, margin: float | None,
                    baseline: str | None, test: str, resamples: int, seed: int, output_format: str) -> None:
    """Build the report of RESULTS (a plan's results folder): report.md, report.json, ndcg.png,
    differences.png, isotropy_vs_ndcg.png.

    Verdicts (better / worse / equivalent / inconclusive) come from the run-level analysis of the plan's
    [primary] comparisons only: the per-seed differences of the endpoint, a t-test over seeds Holm-corrected over
    that family, TOST at the margin. Secondary comparisons get unadjusted p-values and intervals; the query-level
    test is reported as conditional on the runs. A [primary] family other than the one recorded in
    RESULTS/preregistration.json is refused unless --exploratory.
    """
    from ragcun.ablation.compare import write_report

    plan = None
    if plan_file:
        from ragcun.ablation.plan import load_plan

        plan = load_plan(plan_file, results=results)
    report, paths = write_report(results, plan=plan, baseline=baseline, test=test, margin=margin,
                                 exploratory=exploratory, resamples=resamples, seed=seed)
    if output_format == "json":
        echo_json(report)
    else:
        click.echo((paths[0]).read_text())


@ablation_group.command("power")
@click.argument("plan_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--pilot", default=None, type=click.Path(file_okay=False, exists=True),
              help="a pilot's or a finished plan's results folder to take the variances from [default: the plan's "
                   "results folder]")
@click.option("--target", type=PositiveFinite(), default=None,
              help="an effect size: also print how many seeds detect it (power 0.8), and how many show equivalence "
                   "within +-target when the truth is 0")
@click.option("--rho", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="assumed correlation of an arm's and its control's runs with the same seed, used only when the "
                   "pilot has no paired runs of a comparison (sd of the difference = sqrt(2) x sd x sqrt(1 - rho))")
@click.option("--power", "power_level", type=click.FloatRange(0.5, 1, max_open=True), default=0.8,
              show_default=True, help="the power the MDE is computed for")
@format_option
def power_command(plan_file: str, pilot: str | None, target: float | None, rho: float, power_level: float,
                  output_format: str) -> None:
    """The minimum detectable effect (MDE: alpha 0.05 two-sided, power 0.8 or --power) of each primary
    comparison of PLAN_FILE with its seeds, from the between-seed variance of the endpoint difference in a pilot
    or finished results folder (paired t over seeds, noncentral t); with --target, the seeds that detect that
    effect, and that show equivalence within +-target when the truth is 0. Also the baseline's per-query spread,
    and how much of its seed-to-seed spread per-query noise alone would explain.
    """
    from pathlib import Path

    from ragcun.ablation.inference import power_markdown, power_report
    from ragcun.ablation.plan import load_plan

    plan = load_plan(plan_file)
    folder = Path(pilot) if pilot else plan.results
    if pilot is None and not any(folder.glob("runs/*/*/result.json")):
        raise click.UsageError(f"{folder} has no finished runs: give --pilot RESULTS (a pilot's results folder)")
    report = power_report(plan, folder, target=target, rho=rho, power=power_level)
    if output_format == "json":
        echo_json(report)
    else:
        click.echo(power_markdown(report), nl=False)


def add_to(group: click.Group) -> None:
    group.add_command(ablation_group)
