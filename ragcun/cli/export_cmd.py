"""``ragcun export``: a thin shell over :func:`ragcun.exporters.export` (torch is imported inside)."""

from __future__ import annotations

import click

from ragcun.cli.options import echo_json, format_option


@click.command("export")
@click.argument("model", metavar="RUN_OR_MODEL")
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--to", "to", type=click.Choice(["sentence-transformers"]), default="sentence-transformers",
              show_default=True, help="the folder format to write")
@click.option("--mean-only", is_flag=True,
              help="export a log-variance model (wasserstein, expected-sqeuclidean) as its mean vectors with "
                   "Euclidean similarity; the variance terms are lost, and the model card says so")
@click.option("--overwrite", is_flag=True, help="replace OUT when it exists and is not empty")
@click.option("--truncate-dim", type=click.IntRange(min=1), default=None, metavar="D",
              help="export the first D coordinates of the embeddings (a model trained with --loss matryoshka:LOSS)")
@format_option
def export_command(model: str, out: str, to: str, mean_only: bool, overwrite: bool, truncate_dim: int | None,
                   output_format: str) -> None:
    """Write RUN_OR_MODEL (a ragcun run or checkpoint folder, hf:PATH or an encoder name) to the folder OUT in
    another library's format, with a model card (README.md).

    \b
      ragcun export runs/scifact exported/scifact-gaussian
      python -c "from sentence_transformers import SentenceTransformer as S; print(S('exported/scifact-gaussian'))"
      ragcun eval beir --model hf:exported/scifact-gaussian      # ragcun loads it back
    """
    from ragcun import export

    result = export(model, out, to, mean_only=mean_only, overwrite=overwrite, truncate_dim=truncate_dim)
    run = result.run
    summary = {"path": str(result.path), "format": to, "modules": result.pipeline, "dim": result.dim,
               "similarity_fn_name": result.similarity, "lost": result.lost, "notes": result.notes,
               "model_card": {"train_config": str(run.train_config_path) if run.train_config_path else None,
                              "eval_reports": [str(p) for p, _ in run.evals],
                              "isotropy_reports": [str(p) for p, _, _ in run.isotropy]}}
    if output_format == "json":
        echo_json(summary)
        return
    from ragcun.console import stderr, stdout

    if result.lost:
        stderr.print(f"[yellow]warning:[/] {result.lost}")
    for note in result.notes:
        stderr.print(f"note: {note}")
    card = summary["model_card"]
    found = [f"{len(card['eval_reports'])} eval report(s)", f"{len(card['isotropy_reports'])} isotropy report(s)",
             "train_config.json" if card["train_config"] else "no train_config.json"]
    stdout.print(f"wrote [bold]{result.path}[/] ({to}): {result.pipeline}, {result.dim} dims, similarity "
                 f"[bold]{result.similarity}[/]")
    stdout.print(f"model card README.md from {', '.join(found)}")


def add_to(group: click.Group) -> None:
    group.add_command(export_command)
