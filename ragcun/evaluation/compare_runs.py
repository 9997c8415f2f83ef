"""``ragcun compare``: two or more TREC runs on the same queries, query by query.

Each run (a TREC run file, as ``ragcun eval beir --save-run`` writes it) is scored per query with beir's
conventions through the scorer ``ragcun eval beir`` uses (:func:`ragcun.evaluation.beir_eval.per_query_scores`:
pytrec_eval's NDCG/MAP/Recall/P at the cut-off, MRR@k; every judged query counts, one a run did not retrieve for
scores 0; documents whose id equals the query's are skipped, as BEIR does). Every other run is compared with the
first (or ``baseline``) over the judged queries: the mean difference, a paired test over queries and a percentile
bootstrap 95% interval of the mean difference, from :mod:`ragcun.stats.paired`, the same code as the ablation
report's query-level test; with more than one comparison, Holm-adjusted p-values beside the raw ones.

What it answers: whether these particular runs differ on these queries. It is conditional on the runs: the
variation that another training seed would bring is not in it, so it compares two models, not two recipes (for
that, ``ragcun ablation`` compares several seeds run by run).

The qrels are ``DATASET[:SPLIT]`` (a BEIR folder's ``qrels/SPLIT.tsv``, split ``test`` by default, rows naming an
unknown query dropped as ``ragcun eval beir`` drops them) or a qrels file: TREC (``qid 0 docid rel``, what
``--save-run`` writes beside each run as ``DATASET.qrels``) or BEIR's TSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

METRIC_FAMILIES = ("NDCG", "MAP", "Recall", "P", "MRR")


def parse_metric(metric: str) -> tuple[str, int]:
    """``"NDCG@10"`` -> ``("NDCG@10", 10)``; case-insensitive family, a positive cut-off."""
    family, sep, k = str(metric).strip().partition("@")
    names = {f.lower(): f for f in METRIC_FAMILIES}
    if not sep or family.lower() not in names or not k.isdigit() or int(k) < 1:
        raise ValueError(f"--metric {metric!r}: expected FAMILY@K with FAMILY one of {', '.join(METRIC_FAMILIES)}, "
                         "e.g. NDCG@10")
    return f"{names[family.lower()]}@{int(k)}", int(k)


def read_qrels_file(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """A TREC qrels file (``qid iter docid rel``) or BEIR's TSV (``query-id corpus-id score``, a header line)."""
    from ragcun.data.beir import load_qrels

    path = Path(path)
    first = next((line for line in path.read_text().splitlines() if line.strip()), "")
    if len(first.split()) != 4:
        return load_qrels(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            qid, _, doc, rel = parts
            qrels.setdefault(qid, {})[doc] = int(float(rel))
        except ValueError:
            raise ValueError(f"{path}:{number}: not a TREC qrels line (qid 0 docid relevance): {line!r}") from None
    return qrels


def load_judgments(spec: str, data_dir: str | os.PathLike | None = None) -> tuple[dict[str, dict[str, int]], str]:
    """``(qrels, what they are)`` for ``--qrels``: an existing file (TREC or BEIR TSV), or ``DATASET[:SPLIT]``."""
    from ragcun.data.beir import QRELS_FOLDER, find_dataset, load_qrels, load_queries

    if Path(spec).expanduser().is_file():
        return read_qrels_file(Path(spec).expanduser()), str(spec)
    name, _, split = str(spec).partition(":")
    split = split or "test"
    folder = find_dataset(name, data_dir, download=False)
    path = Path(folder) / QRELS_FOLDER / f"{split}.tsv"
    if not path.is_file():
        from ragcun.data.beir import available_splits

        raise ValueError(f"--qrels {spec}: {path} does not exist (splits of {name}: "
                         f"{', '.join(available_splits(folder)) or 'none'})")
    raw = load_qrels(path)
    queries = load_queries(folder)
    qrels = {q: docs for q, docs in raw.items() if q in queries}  # as ragcun eval beir (load_beir) keeps them
    if not qrels:
        raise ValueError(f"--qrels {spec}: {path} judges no query of {folder}")
    return qrels, f"{name}:{split}"


def compare_runs(runs: Sequence[str | os.PathLike], qrels: dict[str, dict[str, int]], *, metric: str = "NDCG@10",
                 test: str = "student", baseline: int = 0, resamples: int = 10_000, seed: int = 0,
                 ignore_identical_ids: bool = True, labels: Sequence[str] | None = None,
                 qrels_name: str = "qrels") -> dict[str, Any]:
    """The comparison as a dict: per-run mean ``metric`` and per-query values, and for every run but the
    ``baseline``-th, the paired difference from it (see the module docstring)."""
    from ragcun.evaluation.beir_eval import per_query_scores
    from ragcun.evaluation.run_files import read_trec_run
    from ragcun.stats.paired import bootstrap_interval, holm, paired_test

    if len(runs) < 2:
        raise ValueError(f"give at least two runs to compare, got {len(runs)}")
    if not 0 <= baseline < len(runs):
        raise ValueError(f"baseline must index one of the {len(runs)} runs, got {baseline}")
    metric, k = parse_metric(metric)
    labels = list(labels) if labels is not None else _labels([str(r) for r in runs])
    qids = sorted(qrels)
    rows = []
    for path, label in zip(runs, labels):
        results = read_trec_run(path)
        if ignore_identical_ids:
            results = {q: {d: s for d, s in docs.items() if d != q} for q, docs in results.items()}
        missing = [q for q in qids if q not in results]
        if len(missing) == len(qids):
            raise ValueError(f"{path}: no query of the qrels ({qrels_name}) is in this run: another dataset or split?")
        scores = per_query_scores(qrels, results, [k])
        values = np.array([scores[q][metric] for q in qids], dtype=np.float64)
        rows.append({"run": label, "path": str(path), "mean": float(values.mean()), "queries_missing": len(missing),
                     "extra_queries": len(set(results) - set(qrels)), "per_query": dict(zip(qids, values.tolist()))})
    base = np.array([rows[baseline]["per_query"][q] for q in qids])
    comparisons = []
    for i, row in enumerate(rows):
        if i == baseline:
            continue
        other = np.array([row["per_query"][q] for q in qids])
        diff = other - base
        low, high = bootstrap_interval(diff, resamples=resamples, seed=seed)
        comparisons.append({"run": row["run"], "control": rows[baseline]["run"], "diff": float(diff.mean()),
                            "ci95": [low, high], "p": paired_test(base, other, test),
                            "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())})
    for c, p_holm in zip(comparisons, holm([c["p"] for c in comparisons])):
        c["p_holm"] = p_holm
    return {"metric": metric, "qrels": qrels_name, "queries": len(qids), "test": test,
            "baseline": rows[baseline]["run"], "bootstrap": {"resamples": resamples, "seed": seed},
            "ignore_identical_ids": ignore_identical_ids, "runs": rows, "comparisons": comparisons}


def _labels(paths: list[str]) -> list[str]:
    """Short distinct names: the file names, or, for runs of the same dataset in different folders
    (``runs/a/scifact.trec``, ``runs/b/scifact.trec``), the folders (``a``, ``b``)."""
    parts = [list(Path(p).parts) for p in paths]
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]  # a common file name (and common folders above it) says nothing
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return paths


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def conditional_note(report: dict[str, Any]) -> str:
    """What the comparison computed, and that it is conditional on the runs."""
    several = len(report["comparisons"]) > 1
    return (f"Per-query {report['metric']} (pytrec_eval through beir's conventions), each run minus "
            f"{report['baseline']}: the mean difference Δ, a paired "
            f"{'t-test' if report['test'] == 'student' else 'randomization test'} over queries and a bootstrap 95% "
            f"CI over queries ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']})"
            + ("; p (Holm) adjusts over the comparisons" if several else "")
            + ". Conditional on these runs: it says whether these particular runs differ on these queries, not "
            "whether the recipes that made them do (another training seed would move each run; compare recipes "
            "over several seeds with ragcun ablation).")


def run_notes(report: dict[str, Any]) -> list[str]:
    """Queries a run did not retrieve for (scored 0) or that the qrels do not judge (left out)."""
    notes = [f"{r['run']} retrieved nothing for {r['queries_missing']} judged queries (scored 0)"
             for r in report["runs"] if r["queries_missing"]]
    return notes + [f"{r['run']} has {r['extra_queries']} queries the qrels do not judge (left out)"
                    for r in report["runs"] if r["extra_queries"]]


def to_markdown(report: dict[str, Any]) -> str:
    """The comparison as Markdown: the ablation report's query-level table, with what it does and does not say."""
    metric = report["metric"]
    several = len(report["comparisons"]) > 1
    lines = [f"# {metric} of {len(report['runs'])} runs on {report['qrels']} ({report['queries']} judged queries)", "",
             conditional_note(report).replace("Conditional on these runs:", "**Conditional on these runs:**"), "",
             "| run | " + metric + " | Δ | 95% CI (queries) | p | " + ("p (Holm) | " if several else "")
             + "queries better / worse |",
             "|---|---|---|---|---|" + ("---|" if several else "") + "---|"]
    by_run = {c["run"]: c for c in report["comparisons"]}
    for row in report["runs"]:
        c = by_run.get(row["run"])
        if c is None:
            cells = [f"`{row['run']}` (baseline)", f"{row['mean']:.4f}", "", "", ""] + ([""] if several else []) + [""]
        else:
            cells = [f"`{row['run']}`", f"{row['mean']:.4f}", f"{c['diff']:+.4f}",
                     f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]", _p(c["p"])]
            cells += [_p(c["p_holm"])] if several else []
            cells += [f"{c['better']} / {c['worse']}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = run_notes(report)
    if notes:
        lines += ["", "Note: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"
