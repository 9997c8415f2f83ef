"""What ragcun retrieved, in files any IR tool reads: TREC run files and per-query metrics.

A TREC run line is ``qid Q0 docid rank score tag`` (trec_eval, ranx ``Run.from_file(..., kind="trec")``,
pyserini); ranks start at 1 and follow the score, ties broken by document id so the file is deterministic.
Per-query metrics are pytrec_eval's (through :func:`ragcun.evaluation.beir_eval.per_query_scores`), as JSON
``{qid: {"NDCG@10": ..., ...}}``. The judgments the run was scored with are written beside it in TREC qrels format
(``qid 0 docid relevance``), which ranx (``Qrels.from_file(path, kind="trec")``), trec_eval and ``ragcun compare``
read; BEIR's own ``qrels/SPLIT.tsv`` (a header, tab-separated) is not TREC and ranx refuses it. Every file is
written to a temporary name and renamed, so a crash never
leaves a half-written run that a later comparison would trust.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ragcun.files import write_text_atomic

RUN_SUFFIX = ".trec"
PER_QUERY_SUFFIX = ".per_query.json"
QRELS_SUFFIX = ".qrels"


def format_trec_qrels(qrels: dict[str, dict[str, int]]) -> str:
    """``{qid: {doc_id: relevance}}`` as TREC qrels text (``qid 0 docid relevance``), sorted by query and document."""
    lines = []
    for qid in sorted(qrels):
        for doc in sorted(qrels[qid]):
            if any(c.isspace() for c in qid + doc):
                raise ValueError(f"TREC qrels need ids without spaces: query {qid!r}, document {doc!r}")
            lines.append(f"{qid} 0 {doc} {int(qrels[qid][doc])}")
    return "".join(line + "\n" for line in lines)


def format_trec_run(results: dict[str, dict[str, float]], tag: str = "ragcun") -> str:
    """``{qid: {doc_id: score}}`` as TREC run text (queries in sorted order)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a TREC run tag must be one word, got {tag!r}")
    lines = []
    for qid in sorted(results):
        ranked = sorted(results[qid].items(), key=lambda item: (-item[1], item[0]))
        lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, 1)]
    return "".join(line + "\n" for line in lines)


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a TREC run file back (``{qid: {doc_id: score}}``), naming the file and line of a malformed line."""
    out: dict[str, dict[str, float]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            qid, _, doc, _, score = parts[:5]
            out.setdefault(qid, {})[doc] = float(score)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a TREC run line (qid Q0 docid rank score tag): {line!r}") from None
    return out


def save_run(report: dict[str, Any], folder: str | os.PathLike, tag: str = "ragcun") -> list[Path]:
    """Write ``DATASET.trec``, ``DATASET.per_query.json`` and ``DATASET.qrels`` (TREC qrels, when the report holds
    them) for every dataset of an :func:`evaluate_beir` report made with ``per_query=True, return_results=True``,
    and ``report.json`` (the summary); returns the paths."""
    if "runs" not in report or "per_query" not in report:
        raise ValueError("save_run needs a report made with per_query=True and return_results=True")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--save-run {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, results in report["runs"].items():
        path = folder / f"{name}{RUN_SUFFIX}"
        write_text_atomic(path, format_trec_run(results, tag))
        written.append(path)
        path = folder / f"{name}{PER_QUERY_SUFFIX}"
        write_text_atomic(path, json.dumps(report["per_query"][name], indent=1, sort_keys=True) + "\n")
        written.append(path)
        if name in report.get("qrels", {}):
            path = folder / f"{name}{QRELS_SUFFIX}"
            write_text_atomic(path, format_trec_qrels(report["qrels"][name]))
            written.append(path)
    summary = {k: v for k, v in report.items() if k not in ("runs", "per_query", "qrels")}
    path = folder / "report.json"
    write_text_atomic(path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    written.append(path)
    return written
