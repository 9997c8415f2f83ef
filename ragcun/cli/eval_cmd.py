"""``ragcun eval``: evaluation on benchmarks (``ragcun eval beir``)."""

from __future__ import annotations

import click

from ragcun.cli.options import DATA_DIR, echo_json, format_option, model_settings, set_option
from ragcun.precision import precision_names  # names only: no torch at import


class EvaluatorGroup(click.Group):
    """``ragcun eval NAME``: NAME is any registered evaluator (``ragcun list evaluators``), a plugin's too.

    ``beir`` has its own hand-written command (many options, documented); any other evaluator gets a command
    built from its constructor's keyword arguments (``--k 10`` for ``k: int = 100``), plus ``--model`` and
    ``--format``. Listing the evaluators reads only the registry, so ``ragcun eval --help`` imports no torch.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ragcun.plugins import get_registry

        return sorted(set(super().list_commands(ctx)) | {e.name for e in get_registry().entries("evaluator")})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        from ragcun.plugins import get_registry

        try:
            entry = get_registry().get("evaluator", name)
        except ValueError as exc:  # an unknown name says what to type
            raise click.UsageError(str(exc), ctx) from None
        return super().get_command(ctx, entry.name) or evaluator_command(entry)

    def format_commands(self, ctx: click.Context, formatter) -> None:
        from ragcun.plugins import get_registry

        rows = [(e.name, e.summary or "") for e in get_registry().entries("evaluator")]
        if rows:
            with formatter.section("Evaluators (ragcun list evaluators)"):
                formatter.write_dl(rows)


def evaluator_command(entry) -> click.Command:
    """A click command for a registered evaluator, its options read from the constructor's signature."""
    import inspect

    target = entry.load()
    func = target.__init__ if inspect.isclass(target) else target
    params: list[click.Parameter] = [
        click.Option(["--model", "model_spec"], default="all-minilm-l6-v2", show_default=True,
                     help="ragcun checkpoint folder, hf:PATH, or an encoder name"),
        click.Option(["--format", "output_format"], type=click.Choice(["table", "json"]), default="table",
                     show_default=True, help="table for people, json for machines")]
    names = []
    for name, p in inspect.signature(func).parameters.items():
        if name == "self" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        names.append(name)
        flag = "--" + name.replace("_", "-")
        default = None if p.default is inspect.Parameter.empty else p.default
        if isinstance(default, bool):
            params.append(click.Option([f"{flag}/--no-{name.replace('_', '-')}", name], default=default,
                                       show_default=True))
        else:
            kind = type(default) if isinstance(default, (int, float)) else str
            kind = DATA_DIR if name == "data_dir" else kind  # a folder, as in every command
            params.append(click.Option([flag, name], type=kind, default=default,
                                       required=p.default is inspect.Parameter.empty, show_default=True))

    def run(model_spec: str, output_format: str, **settings) -> None:
        from ragcun.components import build
        from ragcun.resolve import resolve_model

        evaluator = build("evaluator", entry.name, {"evaluator": {entry.name: settings}})
        report = evaluator(resolve_model(model_spec))
        if output_format == "json":
            echo_json(report)
            return
        from rich.table import Table

        from ragcun.console import stdout

        table = Table(title=f"{entry.name} · {model_spec}")
        table.add_column("result")
        table.add_column("value", justify="right")
        for key, value in _flat(report).items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        stdout.print(table)

    return click.Command(entry.name, params=params, callback=run,
                         help=(entry.summary or f"the {entry.name} evaluator") + f" (from {entry.provider})")


def _flat(report, prefix: str = "") -> dict:
    out = {}
    for key, value in (report.items() if isinstance(report, dict) else []):
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


@click.group("eval", cls=EvaluatorGroup)
def eval_group() -> None:
    """Evaluate a model with a registered evaluator: `ragcun eval beir` (BEIR datasets, beir's metrics) or any
    evaluator a plugin adds (`ragcun list evaluators`)."""


@eval_group.command("beir")
@click.option("--model", "model_spec", default="all-minilm-l6-v2", show_default=True,
              help="ragcun checkpoint folder, hf:PATH, or an encoder name (base models use their authors' "
                   "similarity and max_seq_length)")
@click.option("--datasets", default="scifact,nfcorpus", show_default=True,
              help="comma-separated dataset names or folders, or 'all' (every BEIR folder in --data-dir)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="folder holding BEIR datasets [default: $RAGCUN_DATA, else ~/.cache/ragcun/beir]")
@click.option("--split", default="test", show_default=True, help="qrels split (qrels/<split>.tsv)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the JSON report here")
@click.option("--k", "k", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="documents retrieved per query (metrics at 1,3,5,10,100,1000 up to k)")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--dtype", type=click.Choice(precision_names("eval")), default="float32", show_default=True,
              help="encoder precision: bfloat16-weights = the whole encoder in bfloat16; bfloat16-autocast and "
                   "float16 autocast the matrix products (the same names as an ablation plan's dtype); bfloat16, "
                   "the older spelling, is read here as bfloat16-weights")
@click.option("--distance", default=None, help="override the model's distance (see `ragcun list distances`)")
@click.option("--query-prefix", default=None, help="text put before every query [default: the model's]")
@click.option("--document-prefix", default=None, help="text put before every document [default: the model's]")
@click.option("--search", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact chunked top-k, or a flat FAISS index (pip install 'ragcun[faiss]')")
@click.option("--ignore-identical-ids/--keep-identical-ids", default=True, show_default=True,
              help="skip documents whose id equals the query's id, as BEIR does")
@click.option("--per-query", is_flag=True, help="add per-query scores to the JSON (for significance tests)")
@click.option("--save-run", type=click.Path(file_okay=False), default=None,
              help="write DATASET.trec (TREC run: top-k per query), DATASET.qrels (its judgments, TREC format) and "
                   "DATASET.per_query.json (pytrec_eval's per-query metrics) into this folder, for `ragcun compare`, "
                   "ranx, trec_eval or `ragcun ablation compare`")
@click.option("--download/--no-download", default=True, show_default=True,
              help="download a missing BEIR dataset from the official BEIR location")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@click.option("--truncate-dim", type=click.IntRange(min=1), default=None, metavar="D",
              help="evaluate the first D coordinates of every embedding (a model trained with --loss matryoshka:LOSS)")
@set_option
@format_option
def beir_command(model_spec: str, datasets: str, data_dir: str | None, split: str, output: str | None, k: int,
                 batch_size: int, dtype: str, distance: str | None, query_prefix: str | None,
                 document_prefix: str | None, search: str, ignore_identical_ids: bool, per_query: bool,
                 save_run: str | None, download: bool, device: str | None, truncate_dim: int | None,
                 set_options: tuple[str, ...], output_format: str) -> None:
    """Retrieve with MODEL on BEIR datasets and score with beir's metrics (pytrec_eval).

    \b
      ragcun eval beir --model all-minilm-l6-v2 --datasets scifact,nfcorpus --output results.json
      torchrun --nproc-per-node=2 $(which ragcun) eval beir --model runs/ckpt --datasets all
    """
    from ragcun.distributed import setup, teardown
    from ragcun.evaluation.beir_eval import evaluate_beir

    settings = model_settings("ragcun eval beir", set_options, [model_spec], distance=distance)  # before setup
    check_outputs(output, save_run)  # an unwritable --output fails now, not after the whole evaluation
    ctx = setup(device)  # torchrun's process group, on --device (gloo on the CPU); one process otherwise
    rank = ctx.rank
    try:
        report = evaluate_beir(model_spec, datasets, data_dir, split, k=k, batch_size=batch_size, dtype=dtype,
                               distance=distance, query_prefix=query_prefix, document_prefix=document_prefix,
                               ignore_identical_ids=ignore_identical_ids, search=search,
                               per_query=per_query or save_run is not None, return_results=save_run is not None,
                               download=download, device=device, settings=settings, truncate_dim=truncate_dim)
    finally:
        teardown(ctx)  # only if setup started the group
    if rank != 0:
        return  # every rank computed the same report; rank 0 speaks
    from ragcun.files import OutputError

    failed = None  # a write that fails now (the disk filled up meanwhile) still shows the results below
    if save_run:
        from ragcun.evaluation.run_files import save_run as write_run_files

        try:
            write_run_files(report, save_run)
        except OutputError as exc:
            failed = exc
        report.pop("runs", None)
        report.pop("qrels", None)
        if not per_query:
            report.pop("per_query", None)
    if output and failed is None:
        try:
            write_report(report, output)
        except OutputError as exc:
            failed = exc
    if output_format == "json":
        echo_json(report)
    else:
        print_report(report, None if failed else output)
    if failed is not None:
        raise click.ClickException(f"{failed}; the results are shown above, the file was not written")


def check_outputs(output: str | None, save_run: str | None) -> None:
    """Fail before the evaluation when ``--output``'s folder or ``--save-run`` cannot be written."""
    from pathlib import Path

    from ragcun.files import check_writable

    if output:
        if Path(output).is_dir():
            raise click.BadParameter(f"{output} is a folder; give a file name", param_hint="--output")
        check_writable(Path(output).parent, what=f"--output {output}")
    if save_run:
        if Path(save_run).exists() and not Path(save_run).is_dir():
            raise click.BadParameter(f"{save_run} exists and is not a folder", param_hint="--save-run")
        check_writable(save_run, what=f"--save-run {save_run}")


def write_report(report: dict, path: str) -> None:
    """The JSON report, written atomically (a full disk leaves the old file or none, never half of one)."""
    import json

    from ragcun.files import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def print_report(report: dict, output: str | None = None) -> None:
    from rich.table import Table

    from ragcun.console import stderr, stdout
    from ragcun.evaluation.beir_eval import main_metrics

    for warning in report.get("warnings", []):
        stderr.print(f"[yellow]warning:[/] {warning}")
    settings = report["settings"]
    cols = main_metrics(report)
    table = Table(title=f"{report['model']} · {settings['split']} · distance {settings['distance']} · "
                        f"{settings['dtype']}")
    table.add_column("dataset", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True)
    table.add_column("docs/s", justify="right", no_wrap=True)
    for name, metrics in report["datasets"].items():
        speed = report["timings"].get(name, {}).get("docs_per_s")
        table.add_row(name, *(f"{metrics[c]:.4f}" for c in cols), f"{speed:.0f}" if speed else "")
    stdout.print(table)
    if report.get("skipped"):
        missing = [n for n, why in report["skipped"].items() if why.startswith("not present")]
        other = {n: why for n, why in report["skipped"].items() if not why.startswith("not present")}
        for n, why in other.items():
            stdout.print(f"skipped {n}: {why}")
        if missing:
            stdout.print(f"skipped (not present in {settings['data_dir']}): {', '.join(missing)}")
    if output:
        stdout.print(f"report written to {output}")


def add_to(group: click.Group) -> None:
    group.add_command(eval_group)
