"""``ragcun isotropy``: isotropy diagnostics (``ragcun isotropy report``)."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option, model_settings, set_option


@click.group("isotropy")
def isotropy_group() -> None:
    """Measure how isotropic (Gaussian) a model's embeddings are."""


@isotropy_group.command("report")
@click.option("--model", "models", multiple=True, required=True, metavar="SPEC",
              help="checkpoint folder, hf:PATH, an encoder name, or ENCODER+HEAD for the encoder with a freshly "
                   "initialized head (e.g. all-minilm-l6-v2+gaussian); repeat to compare models side by side")
@click.option("--dataset", required=True, help="a BEIR dataset name under --data-dir, or a BEIR folder")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="RAGCUN_DATA",
              show_envvar=True, help="folder holding the BEIR datasets")
@click.option("--split", default="test", show_default=True, help="qrels split whose queries are sampled")
@click.option("--sample", type=click.IntRange(min=2), default=2000, show_default=True,
              help="documents to sample (also the cap on queries and on alignment pairs)")
@click.option("--query-sample", type=click.IntRange(min=2), default=None,
              help="queries to sample [default: --sample]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seeds the sample, fresh heads, the SIGReg directions and random plots")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="where report.json, report.html and the PNGs go [default: ./isotropy-report-DATASET]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--num-slices", type=click.IntRange(min=1), default=1024, show_default=True,
              help="random directions of the SIGReg statistic")
@click.option("--device", default=None, help="where to embed, e.g. cpu or cuda:1 [default: cuda if available]")
@click.option("--plots/--no-plots", default=True, show_default=True, help="write the PNG plots (needs matplotlib)")
@click.option("--truncate-dim", type=click.IntRange(min=1), default=None, metavar="D",
              help="report on the first D coordinates of every model's embeddings (a Matryoshka prefix)")
@set_option
@format_option
def report_command(models: tuple[str, ...], dataset: str, data_dir: str | None, split: str, sample: int,
                   query_sample: int | None, seed: int, output_dir: str | None, batch_size: int, num_slices: int,
                   device: str | None, plots: bool, truncate_dim: int | None, set_options: tuple[str, ...],
                   output_format: str) -> None:
    """Embed a seeded sample of a dataset's documents and queries with each --model and report isotropy
    metrics side by side (one column per model), with report.json, PNG plots and a self-contained
    report.html in --output-dir.

    Every row says the sample size n and the vectors it was computed on: raw, l2 (L2-normalized, where the
    metric is defined that way), z-score (each dimension standardized) or reference (an exact N(0, I) sample
    of the same size).

    \b
      ragcun isotropy report --model all-minilm-l6-v2 --model all-minilm-l6-v2+gaussian \\
          --dataset scifact --data-dir /data/beir --sample 2000
    """
    from ragcun.diagnostics.report import isotropy_report

    settings = model_settings("ragcun isotropy report", set_options, models)
    report = isotropy_report(list(models), dataset, data_dir, split=split, sample=sample,
                             query_sample=query_sample, seed=seed, output_dir=output_dir, batch_size=batch_size,
                             num_slices=num_slices, settings=settings, plots=plots,
                             device=device, truncate_dim=truncate_dim)
    if output_format == "json":
        echo_json(report)
        return
    print_report_table(report)


@isotropy_group.command("curves")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--output", "-o", default="isotropy-curves.png", show_default=True, type=click.Path(dir_okay=False),
              help="the PNG to write")
@click.option("--label", "labels", multiple=True, help="one per run, in order [default: the folder names]")
def curves_command(runs: tuple[str, ...], output: str, labels: tuple[str, ...]) -> None:
    """Plot isotropy over training for one or several RUNS (folders of `ragcun train --diagnostics-every K`):
    the loss, SIGReg against its N(0, I) floor, effective rank / D and IsoScore against the step."""
    from ragcun.diagnostics.curves import plot_curves

    click.echo(f"wrote {plot_curves(runs, output, labels or None)}")


def print_report_table(report: dict) -> None:
    """The report as a table on stdout, fitted to the terminal: on a narrow one (80 columns) the model columns are
    numbered, with a legend above, so the metric names keep their room and every cell wraps between words."""
    from rich.markup import escape
    from rich.table import Table

    from ragcun.console import stdout
    from ragcun.diagnostics.report import GROUP_TITLES, report_rows, sample_line

    ds = report["dataset"]
    models = report["models"]
    rows = report_rows(report)
    headers = [(m["label"], f"{m['head']} head, D={m['dim']}") for m in models]
    widest_cells = [max([len(cells[i]) for _, _, cells in rows] + [1]) for i in range(len(models))]
    full = sum(max(len(a), len(b), w) + 3 for (a, b), w in zip(headers, widest_cells))
    numbered = stdout.width - full - 4 < 36  # the metric column would get less than 36 characters
    stdout.print(f"isotropy: {escape(ds['name'])} ({escape(ds['split'])}), seed {ds['seed']}", highlight=False)
    stdout.print(escape(sample_line(ds)), highlight=False)
    table = Table(show_header=True)
    table.add_column(escape("metric [vectors, n]"), overflow="fold", ratio=1)
    for i, (label, what) in enumerate(headers, 1):
        if numbered:
            stdout.print(f"({i}) [bold]{escape(label)}[/]: {escape(what)}", highlight=False)
        table.add_column(f"({i})" if numbered else escape(f"{label}\n{what}"), justify="right",
                         no_wrap=numbered, overflow="fold")
    current = None
    for group, label, cells in rows:
        if group != current:
            if current is not None:
                table.add_section()
            current = group
            table.add_row(f"[bold]{GROUP_TITLES[group]}[/]", *([""] * len(cells)))
        table.add_row(escape(label), *cells)
    stdout.print(table)
    for m in models:
        if m.get("verdict"):
            stdout.print(f"[bold]{escape(m['label'])}[/]: {escape(m['verdict'])}", highlight=False)
    files = report["files"]
    written = ["report.json"] + ([files["html"]] if "html" in files else []) + list(files.get("plots", {}).values())
    stdout.print(f"wrote {', '.join(written)} to [bold]{escape(report['output_dir'])}[/]", highlight=False)


def add_to(group: click.Group) -> None:
    group.add_command(isotropy_group)
