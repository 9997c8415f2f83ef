"""``ragcun data``: training data (``ragcun data download msmarco``, ``ragcun data score``)."""

from __future__ import annotations

import click

from ragcun.cli.options import set_option

from ragcun.cli.options import DATA_DIR
from ragcun.precision import precision_names  # names only: no torch at import


@click.group("data")
def data_group() -> None:
    """Get training data."""


@data_group.command("download")
@click.argument("name", type=click.Choice(["msmarco"]))
@click.option("--data-dir", type=DATA_DIR, default=None, envvar="RAGCUN_DATA", show_envvar=True,
              help="where it goes (in DATA_DIR/msmarco)  [default: ~/.cache/ragcun/beir]")
def download_command(name: str, data_dir: str | None) -> None:
    """Download the official MS MARCO training triples (~7 GB download, ~27 GB unpacked).

    Where the network does not allow it, prints the exact commands to fetch it by hand.
    """
    from ragcun.console import make_progress, stderr, stdout
    from ragcun.data.beir import default_data_dir
    from ragcun.data.msmarco import TRIPLES_URL, download_msmarco_triples

    folder = data_dir or default_data_dir()
    stderr.print(f"downloading {TRIPLES_URL} into {folder}/msmarco", highlight=False)
    with make_progress() as progress:
        task = progress.add_task("msmarco", total=None)
        path = download_msmarco_triples(folder, progress=lambda done, total: progress.update(task, completed=done,
                                                                                            total=total))
    stdout.print(f"ready: train with --train-data triples:{path}", highlight=False)


@data_group.command("score")
@click.option("--teacher", required=True, metavar="MODEL",
              help="the teacher: a ragcun checkpoint folder, hf:PATH, an encoder name, ENCODER+HEAD, or "
                   "cross-encoder:PATH (a local sentence-transformers CrossEncoder folder)")
@click.option("--train-data", required=True, metavar="SPEC",
              help="what to score: beir:NAME:SPLIT (one line per judged pair), jsonl:PATH or triples:PATH")
@click.option("--negatives", type=click.IntRange(min=0), default=0, show_default=True,
              help="hard negatives per line: BEIR's first K mined ones; a JSONL line's first K (0: all of them)")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="the scored JSONL (OUTPUT.meta.json beside it states the teacher, similarity, sign and scale)")
@click.option("--mine-negatives", default=None,
              help="BEIR data: how to mine the negatives, with filters (bm25:skip=3,range=10-50,margin=0.05; model = "
                   "the teacher)  [default: bm25]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="RAGCUN_DATA", show_envvar=True,
              help="folder holding BEIR datasets [default: ~/.cache/ragcun/beir]")
@click.option("--qrels-threshold", type=int, default=1, show_default=True,
              help="BEIR: a pair counts when its qrels score >= this")
@click.option("--distance", default=None, help="a bi-encoder teacher's distance [default: the model's]")
@click.option("--query-prefix", default=None, help="text put before every query [default: the teacher's]")
@click.option("--document-prefix", default=None, help="text put before every passage [default: the teacher's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="lines scored at a time (each one's passages together)")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@click.option("--dtype", type=click.Choice(precision_names("eval")), default="float32", show_default=True,
              help="a bi-encoder teacher's precision, as in ragcun eval beir --dtype (bfloat16-autocast is several "
                   "times faster on a CPU or GPU with native bfloat16; the scores are still computed in float64)")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="score a fixed random sample of N lines (kept in input order) instead of all of them: a pilot, "
                   "or a teacher too slow for the whole set  [default: all]")
@click.option("--sample-seed", type=int, default=0, show_default=True, help="which sample --sample takes")
@set_option
def score_command(teacher: str, train_data: str, negatives: int, output: str, mine_negatives: str | None,
                  data_dir: str | None, qrels_threshold: int, distance: str | None, query_prefix: str | None,
                  document_prefix: str | None, batch_size: int, device: str | None, dtype: str, sample: int | None,
                  sample_seed: int, set_options: tuple[str, ...]) -> None:
    """Score every (query, positive, negatives) of a training set with a teacher, for distillation
    (--loss margin-mse or distill-kl).

    Writes the JSONL layout ragcun trains from: query, pos, neg (with ids when the data has them), pos_scores,
    neg_scores. Resumable: progress is kept in OUTPUT.part-rank*.jsonl, and running the same command again
    continues it; OUTPUT appears only when every line is scored. Sharded under torchrun.

    \b
      ragcun data score --teacher hf:/models/all-mpnet-base-v2 --train-data beir:squad:train --negatives 4 \\
          --output squad-mpnet.jsonl
      torchrun --nproc-per-node=4 $(which ragcun) data score --teacher cross-encoder:/models/ms-marco-MiniLM-L6-v2 \\
          --train-data jsonl:train.jsonl --output scored.jsonl
    """
    from ragcun.console import make_progress, stderr, stdout
    from ragcun.distributed import setup, teardown
    from ragcun.workflows.teacher_scores import CROSS_ENCODER, score_training_data

    settings = None
    if set_options:
        if teacher.startswith(CROSS_ENCODER):
            raise click.BadParameter("a cross-encoder teacher takes no --set settings", param_hint="--set")
        from ragcun.cli.options import model_settings

        settings = model_settings("ragcun data score", set_options, [teacher], distance=distance)
    from contextlib import nullcontext

    ctx = setup(device)
    try:
        with make_progress() if ctx.is_main else nullcontext() as bar:  # rank 0 shows the progress
            task = bar.add_task("scoring", total=None) if bar is not None else None
            result = score_training_data(
                teacher, train_data, output, negatives=negatives, data_dir=data_dir, mine_negatives=mine_negatives,
                qrels_threshold=qrels_threshold, batch_size=batch_size, device=device, distance=distance,
                settings=settings, query_prefix=query_prefix, document_prefix=document_prefix, ctx=ctx,
                sample=sample, sample_seed=sample_seed, dtype=dtype,
                progress=(lambda done, total: bar.update(task, completed=done, total=total)) if task is not None
                else None)
    finally:
        teardown(ctx)
    if not ctx.is_main:
        return
    if result.get("already_complete"):
        stderr.print(f"{output} is already complete ({result['lines']} lines); nothing to do", highlight=False)
    elif result["resumed"]:
        stderr.print(f"continued an unfinished run: {result['resumed']} lines were kept", highlight=False)
    sampled = f" (a sample of {result['sampled_from']})" if "sampled_from" in result else ""
    stdout.print(f"wrote {output}: {result['lines']} lines{sampled} scored by {teacher} ({result['teacher_kind']}, "
                 f"similarity {result['similarity']}: {result['similarity_formula']}); train with --train-data "
                 f"jsonl:{output} --loss margin-mse --negatives K", highlight=False)


def add_to(group: click.Group) -> None:
    group.add_command(data_group)
