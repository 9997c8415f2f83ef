"""``ragcun compare``: TREC runs on the same queries, query by query (:mod:`ragcun.evaluation.compare_runs`)."""

from __future__ import annotations

import click

from ragcun.cli.options import DATA_DIR, DATA_DIR_HELP, echo_json, format_option


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--qrels", "qrels_spec", required=True, metavar="DATASET[:SPLIT]|FILE",
              help="the judgments: a BEIR dataset and split (default test), or a qrels file (TREC, as --save-run "
                   "writes DATASET.qrels, or BEIR's TSV)")
@click.option("--metric", default="NDCG@10", show_default=True,
              help="NDCG@K, MAP@K, Recall@K, P@K or MRR@K, per query (pytrec_eval, beir's conventions)")
@click.option("--baseline", type=click.IntRange(1), default=1, show_default=True,
              help="which run (1 = the first) the others are compared with")
@click.option("--test", type=click.Choice(["student", "fisher"]), default="student", show_default=True,
              help="paired t-test over queries, or Fisher's randomization test")
@click.option("--resamples", type=click.IntRange(100), default=10_000, show_default=True,
              help="bootstrap resamples of the 95% interval")
@click.option("--seed", type=int, default=0, show_default=True, help="the bootstrap's seed")
@click.option("--ignore-identical-ids/--keep-identical-ids", default=True, show_default=True,
              help="skip documents whose id equals the query's id, as BEIR does")
@click.option("--data-dir", type=DATA_DIR, default=None, envvar="RAGCUN_DATA", show_envvar=True, help=DATA_DIR_HELP)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="also write the comparison (per-query values included) as JSON")
@format_option
def compare_command(runs: tuple[str, ...], qrels_spec: str, metric: str, baseline: int, test: str, resamples: int,
                    seed: int, ignore_identical_ids: bool, data_dir: str | None, output: str | None,
                    output_format: str) -> None:
    """Compare two or more TREC runs (as `ragcun eval beir --save-run` writes them) on the same judged queries:
    the per-query metric of each, every run minus the baseline with a paired test over queries and a bootstrap
    95% interval (the statistics of `ragcun ablation compare`'s query-level test).

    Conditional on the runs: it says whether these runs differ on these queries, not whether the recipes that
    made them do (compare recipes over several seeds with `ragcun ablation`).

    \b
      ragcun compare runs/a/run/scifact.trec runs/b/run/scifact.trec --qrels scifact
      ragcun compare a.trec b.trec --qrels runs/a/run/scifact.qrels --metric Recall@100
    """
    import json

    from ragcun.evaluation.compare_runs import compare_runs, load_judgments, parse_metric

    parse_metric(metric)  # a bad --metric fails before anything is read
    if len(runs) < 2:
        raise click.UsageError("give at least two runs to compare")
    if baseline > len(runs):
        raise click.BadParameter(f"there are {len(runs)} runs", param_hint="--baseline")
    qrels, name = load_judgments(qrels_spec, data_dir)
    report = compare_runs(list(runs), qrels, metric=metric, test=test, baseline=baseline - 1, resamples=resamples,
                          seed=seed, ignore_identical_ids=ignore_identical_ids, qrels_name=name)
    if output:
        from ragcun.files import write_text_atomic

        write_text_atomic(output, json.dumps(report, indent=2) + "\n")
    if output_format == "json":
        echo_json({**report, "runs": [{k: v for k, v in r.items() if k != "per_query"} for r in report["runs"]]})
        return
    print_table(report)


def print_table(report: dict) -> None:
    """The comparison on stdout: what it is, then one row per run (the numbers never wrap, the names may)."""
    from rich.markup import escape
    from rich.table import Table

    from ragcun.console import stdout
    from ragcun.evaluation.compare_runs import conditional_note, run_notes

    metric = report["metric"]
    several = len(report["comparisons"]) > 1
    stdout.print(f"[bold]{metric} of {len(report['runs'])} runs on {escape(report['qrels'])}[/] "
                 f"({report['queries']} judged queries)", highlight=False)
    stdout.print(escape(conditional_note(report)), highlight=False)
    by_run = {c["run"]: c for c in report["comparisons"]}
    widest = max(len(r["run"]) for r in report["runs"]) + len(" (baseline)")
    if stdout.width < widest + 62 + 7 * 3 + 1:  # the table would squeeze the names: one block per run instead
        for row in report["runs"]:
            c = by_run.get(row["run"])
            if c is None:
                stdout.print(f"[bold]{escape(row['run'])}[/] (baseline): {metric} {row['mean']:.4f}", highlight=False)
                continue
            holm = f" (Holm {_p(c['p_holm'])})" if several else ""
            stdout.print(f"[bold]{escape(row['run'])}[/]: {metric} {row['mean']:.4f}, Δ {c['diff']:+.4f}, 95% CI "
                         f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], p {_p(c['p'])}{holm}; {c['better']} queries "
                         f"better, {c['worse']} worse", highlight=False)
    else:
        table = Table()
        table.add_column("run", overflow="fold")
        for name in (metric, "Δ", "95% CI (queries)", "p", *(["p (Holm)"] if several else []), "better / worse"):
            table.add_column(name, justify="right", no_wrap=True)
        for row in report["runs"]:
            c = by_run.get(row["run"])
            if c is None:
                table.add_row(escape(row["run"]) + " (baseline)", f"{row['mean']:.4f}", *[""] * (4 + several))
                continue
            cells = [f"{c['diff']:+.4f}", f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]", _p(c["p"])]
            cells += [_p(c["p_holm"])] if several else []
            table.add_row(escape(row["run"]), f"{row['mean']:.4f}", *cells, f"{c['better']} / {c['worse']}")
        stdout.print(table)
    for note in run_notes(report):
        stdout.print(f"note: {escape(note)}", highlight=False)


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def add_to(group: click.Group) -> None:
    group.add_command(compare_command)
