"""The isotropy report: embed a seeded sample of a dataset with each model and measure its isotropy.

Every number is a :class:`Metric` that carries the sample size ``n`` it was computed on and which vectors it
saw: ``raw`` (as the model outputs them), ``l2`` (L2-normalized; the metric is defined on unit vectors) or
``z-score`` (each dimension standardized). Most isotropy statistics depend on ``n`` (IsoScore strongly), so
the report never shows one without the other.

Sampling (all seeded by ``seed``): ``sample`` documents drawn uniformly from the corpus; up to
``query_sample`` (default ``sample``) of the queries judged in ``split``; the alignment pairs are the
(query, relevant document) pairs of the sampled queries (relevance > 0, at most ``sample`` of them), their
documents embedded as well when they are not in the document sample. Every model sees the same texts.

Models: a checkpoint folder, ``hf:PATH`` or an encoder name (as ``--model`` everywhere, see
:func:`ragcun.resolve.resolve_model`), or ``ENCODER+HEAD`` (e.g. ``all-minilm-l6-v2+gaussian``): the encoder
with a freshly initialized ``HEAD`` (weights drawn from a generator seeded with ``seed``; head settings
through ``settings``, e.g. ``head.gaussian.out_dim``), which is how an untrained ragcun model starts.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

DEFAULT_SAMPLE = 2000
DEFAULT_NUM_SLICES = 1024
DEFAULT_TOP_K = (1, 10)
UNIFORMITY_T = 2.0
ALIGNMENT_ALPHA = 2.0
PLOT_FILES = {"spectrum": "spectrum.png", "norms": "norms.png", "projections": "projections.png",
              "pca": "pca.png"}
VECTORS = {"raw": "raw vectors", "l2": "L2-normalized", "z-score": "per-dimension z-scored",
           "reference": "what an exact N(0, I) sample of the same size scores"}


@dataclass(frozen=True)
class Metric:
    """One reported number with what it was computed on."""

    key: str
    label: str
    value: float
    n: int  # samples (vectors, or pairs for alignment) it was computed on
    vectors: str  # "raw" | "l2" | "z-score" | "reference"

    @property
    def normalized(self) -> bool:
        return self.vectors == "l2"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "normalized": self.normalized}


# -- metrics ------------------------------------------------------------------------------------------------
def population_metrics(x: Any, *, seed: int = 0, num_slices: int = DEFAULT_NUM_SLICES,
                       top_k: Sequence[int] = DEFAULT_TOP_K, reference_draws: int = 3) -> list[Metric]:
    """Every isotropy metric of one cloud ``x`` (N, D) (documents or queries), each labelled with n and vectors.

    ``reference_draws``: exact N(0, I) samples of the same shape whose standardized SIGReg is averaged as the
    reference for the standardized statistic (0 leaves that row out)."""
    from ragcun.stats import isotropy as iso

    t = iso.as_matrix(x, min_rows=2)
    n, dim = t.shape
    unit = iso.l2_normalize(t)
    norms = iso.norm_stats(t)
    eig_share = iso.covariance_eigenvalues(t)
    total = float(eig_share.sum())
    out = [
        Metric("partition_isotropy_raw", "partition isotropy I(W)", iso.partition_isotropy(t), n, "raw"),
        Metric("partition_isotropy_l2", "partition isotropy I(W)", iso.partition_isotropy(unit), n, "l2"),
        Metric("isoscore", "IsoScore", iso.isoscore(t), n, "raw"),
        Metric("average_cosine", "average cosine, pairs i != j", iso.average_cosine(t), n, "l2"),
        Metric("effective_rank_ratio", "effective rank / D", iso.effective_rank_ratio(t), n, "raw"),
    ]
    for k in top_k:
        if k <= dim:
            share = float(eig_share[:k].sum()) / total if total > 0 else 1.0
            out.append(Metric(f"top{k}_variance_share", f"variance share of top {k} PC{'s' if k > 1 else ''}",
                              share, n, "raw"))
    out += [
        Metric("norm_mean", "norm: mean", norms["mean"], n, "raw"),
        Metric("norm_std", "norm: std", norms["std"], n, "raw"),
        Metric("norm_min", "norm: min", norms["min"], n, "raw"),
        Metric("norm_max", "norm: max", norms["max"], n, "raw"),
        Metric("norm_mean_over_sqrt_dim", "norm: mean / sqrt(D)", norms["mean_over_sqrt_dim"], n, "raw"),
        Metric("uniformity", f"uniformity (t={UNIFORMITY_T:g})", iso.uniformity(unit, UNIFORMITY_T), n, "l2"),
        Metric("sigreg_raw", f"SIGReg ({num_slices} directions)",
               iso.sigreg_statistic(t, num_slices=num_slices, seed=seed), n, "raw"),
        Metric("sigreg_gaussian_floor", "SIGReg of N(0, I): expected, exact",
               iso.sigreg_gaussian_floor(n, num_slices=num_slices), n, "reference"),
        Metric("sigreg_standardized", f"SIGReg ({num_slices} directions)",
               iso.sigreg_statistic(t, standardized=True, num_slices=num_slices, seed=seed), n, "z-score"),
    ]
    if reference_draws > 0:
        out.append(Metric("sigreg_standardized_gaussian", "SIGReg of N(0, I) of the same shape, z-scored",
                          iso.sigreg_gaussian_reference(n, dim, standardized=True, num_slices=num_slices,
                                                        seed=seed, draws=reference_draws), n, "reference"))
    return out


def pair_metrics(queries: Any, documents: Any) -> list[Metric]:
    """Alignment on (query, relevant document) pairs, row i with row i."""
    from ragcun.stats import isotropy as iso

    q = iso.as_matrix(queries, name="query embeddings")
    return [Metric("alignment", f"alignment (alpha={ALIGNMENT_ALPHA:g}), query-relevant doc",
                   iso.alignment(q, documents, ALIGNMENT_ALPHA), q.shape[0], "l2")]


def embedding_diagnostics(embeddings: Any, *, positives: Any = None, seed: int = 0, num_slices: int = 256,
                          top_k: Sequence[int] = DEFAULT_TOP_K, prefix: str = "") -> dict[str, float]:
    """The report's numbers for embeddings a caller already has (the training loop's periodic diagnostics).

    ``embeddings``: a tensor/array ``(N, D)`` or an ``Embedding`` (its mean is used; detached, copied to the
    CPU, float64). ``positives``: optional ``(N, D)`` paired row by row with ``embeddings`` (e.g. each
    query's positive document) for the alignment. Returns a flat ``{prefix + key: float}`` that includes
    ``n`` and ``dim``. The keys in :data:`NORMALIZED_KEYS` were computed on L2-normalized vectors,
    ``sigreg_standardized`` on per-dimension z-scored ones, all others on the raw vectors. ``N >= 2``.
    SIGReg is computed on this process's rows only (no collective), so it is safe to call on one rank.
    """
    from ragcun.stats import isotropy as iso

    t = iso.as_matrix(embeddings, min_rows=2)
    metrics = population_metrics(t, seed=seed, num_slices=num_slices, top_k=top_k)
    if positives is not None:
        metrics += pair_metrics(t, positives)
    out: dict[str, float] = {f"{prefix}n": float(t.shape[0]), f"{prefix}dim": float(t.shape[1])}
    out.update({prefix + m.key: float(m.value) for m in metrics})
    return out


NORMALIZED_KEYS = frozenset({"partition_isotropy_l2", "average_cosine", "uniformity", "alignment"})


# -- models ---------------------------------------------------------------------------------------------------
def describe_model(model) -> dict[str, Any]:
    from ragcun.components import provenance

    def name(component):
        return provenance(component)["name"] or type(component).__name__

    return {"encoder": name(model.encoder), "head": name(model.head), "distance": name(model.distance),
            "dim": int(model.dim), "parameters": int(sum(p.numel() for p in model.parameters()))}


# -- data -----------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    dataset: str
    folder: str
    split: str
    corpus_size: int
    judged_queries: int
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    pair_query_index: list[int]  # into query_texts
    pair_doc_index: list[int]  # into doc_texts (the sample, then the extra relevant documents)
    sampled_docs: int  # the first sampled_docs entries of doc_texts are the uniform sample

    def summary(self) -> dict[str, Any]:
        return {"name": self.dataset, "folder": self.folder, "split": self.split, "corpus_size": self.corpus_size,
                "judged_queries": self.judged_queries, "documents": self.sampled_docs,
                "queries": len(self.query_texts), "pairs": len(self.pair_query_index),
                "extra_relevant_documents": len(self.doc_texts) - self.sampled_docs}


def sample_dataset(dataset: str, data_dir: str | Path | None, *, split: str = "test", sample: int = DEFAULT_SAMPLE,
                   query_sample: int | None = None, seed: int = 0) -> Sample:
    """Load a BEIR folder and draw the report's seeded sample (see the module docstring)."""
    from ragcun.data.beir import document_text, find_dataset, load_beir

    if sample < 2:
        raise ValueError(f"--sample must be at least 2, got {sample}")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ValueError(f"--data-dir {data_dir}: no such folder")
    folder = find_dataset(dataset, data_dir, download=False)
    data = load_beir(folder, split, name=Path(dataset).name)
    rng = np.random.default_rng(seed)

    corpus_ids = list(data.corpus)
    picked = np.sort(rng.choice(len(corpus_ids), size=min(sample, len(corpus_ids)), replace=False))
    doc_ids = [corpus_ids[i] for i in picked]

    judged = [qid for qid, docs in data.qrels.items() if qid in data.queries and any(s > 0 for s in docs.values())]
    n_queries = min(sample if query_sample is None else query_sample, len(judged))
    query_ids = [judged[i] for i in np.sort(rng.choice(len(judged), size=n_queries, replace=False))]

    pairs = [(qi, did) for qi, qid in enumerate(query_ids)
             for did, score in sorted(data.qrels[qid].items()) if score > 0 and did in data.corpus]
    if len(pairs) > sample:
        pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), size=sample, replace=False))]
    position = {did: i for i, did in enumerate(doc_ids)}
    all_doc_ids = list(doc_ids)
    for _, did in pairs:
        if did not in position:
            position[did] = len(all_doc_ids)
            all_doc_ids.append(did)
    return Sample(dataset=data.name, folder=str(folder), split=split, corpus_size=len(corpus_ids),
                  judged_queries=len(judged), doc_ids=all_doc_ids,
                  doc_texts=[document_text(data.corpus[d]) for d in all_doc_ids], query_ids=query_ids,
                  query_texts=[data.queries[q] for q in query_ids], pair_query_index=[qi for qi, _ in pairs],
                  pair_doc_index=[position[d] for _, d in pairs], sampled_docs=len(doc_ids))


# -- the report -----------------------------------------------------------------------------------------------
def _unique_labels(specs: Sequence[str]) -> list[str]:
    labels, seen = [], {}
    for spec in specs:
        seen[spec] = seen.get(spec, 0) + 1
        labels.append(spec if seen[spec] == 1 else f"{spec} #{seen[spec]}")
    return labels


def _check_report_arguments(models: Sequence[Any], batch_size: int, num_slices: int) -> None:
    if not models:
        raise ValueError("give at least one --model")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if num_slices < 1:
        raise ValueError(f"num_slices must be positive, got {num_slices}")


def _prepare_model(model: Any, *, settings: Any, seed: int, device: str | None, truncate_dim: int | None) -> Any:
    """A ``--model`` string resolved and moved to ``device`` (a model object stays where it is), then cut to its
    first ``truncate_dim`` coordinates when asked."""
    if isinstance(model, str):
        from ragcun.distributed import pick_device
        from ragcun.resolve import resolve_model

        model = resolve_model(model, settings=settings, seed=seed)
        model.to(pick_device(device))
    if truncate_dim is not None:
        from ragcun.truncation import truncate_model

        model = truncate_model(model, truncate_dim)
    return model


def _fit_head_if_needed(model: Any, data: Sample, batch_size: int, progress: bool) -> tuple[Any, Any]:
    """(the model, what its head was fitted on or None). A center/whiten head from a spec is fitted on the sampled
    documents being reported, on a copy: a model passed in stays as it was given."""
    from ragcun.heads.fitted import needs_fit

    if not needs_fit(model.head):
        return model, None
    import copy

    model = copy.deepcopy(model)
    return model, model.fit_head(data.doc_texts[:data.sampled_docs], batch_size, show_progress=progress)


def _embed_sample(model: Any, data: Sample, label: str, batch_size: int, progress: bool):
    """(documents, queries): the sample's embeddings, float64; the documents include the extra relevant ones."""
    extra = len(data.doc_texts) - data.sampled_docs
    docs = _embed(model, [model.document_prefix + t for t in data.doc_texts], batch_size, progress,
                  f"{label}: documents ({data.sampled_docs} sampled + {extra} relevant to sampled queries)"
                  if extra else f"{label}: documents")
    queries = _embed(model, [model.query_prefix + t for t in data.query_texts], batch_size, progress,
                     f"{label}: queries")
    return docs, queries


def _sample_metrics(docs, queries, data: Sample, *, seed: int, num_slices: int,
                    top_k: Sequence[int]) -> dict[str, list[Metric]]:
    """The metrics of each group: the uniform document sample, the alignment pairs (when there are any) and the
    queries (when there are at least two)."""
    metrics = {"documents": population_metrics(docs[:data.sampled_docs], seed=seed, num_slices=num_slices,
                                               top_k=top_k)}
    if data.pair_query_index:
        metrics["pairs"] = pair_metrics(queries[data.pair_query_index], docs[data.pair_doc_index])
    if queries.shape[0] >= 2:
        metrics["queries"] = population_metrics(queries, seed=seed, num_slices=num_slices, top_k=top_k)
    return metrics


def _measure_model(spec: str, label: str, model: Any, data: Sample, *, settings: Any, seed: int,
                   device: str | None, truncate_dim: int | None, batch_size: int, progress: bool, num_slices: int,
                   top_k: Sequence[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model's entry of the report and its point cloud for the plots."""
    from ragcun.diagnostics.verdict import isotropy_verdict

    model = _prepare_model(model, settings=settings, seed=seed, device=device, truncate_dim=truncate_dim)
    started = time.perf_counter()  # embed_seconds: fitting a head and embedding, not loading the model
    model, fitted_on = _fit_head_if_needed(model, data, batch_size, progress)
    docs, queries = _embed_sample(model, data, label, batch_size, progress)
    embed_seconds = time.perf_counter() - started
    sample_docs = docs[:data.sampled_docs]
    metrics = _sample_metrics(docs, queries, data, seed=seed, num_slices=num_slices, top_k=top_k)
    verdict = isotropy_verdict({m.key: m.value for m in metrics["documents"]}, int(sample_docs.shape[1]))
    result = {"label": label, "spec": spec, **describe_model(model), "verdict": verdict,
              "head_fitted_on": fitted_on,
              "embed_seconds": round(embed_seconds, 2),
              "metrics": {group: {m.key: m.as_dict() for m in ms} for group, ms in metrics.items()}}
    return result, {"label": label, "documents": sample_docs, "queries": queries}


def _write_report_files(report: dict[str, Any], clouds: list[dict[str, Any]], out_dir: Path, *, seed: int,
                        num_slices: int, dataset: str, plots: bool, html_page: bool) -> None:
    """The plots and report.html (when asked), then report.json; the first two record their files in ``report``."""
    if plots:
        from ragcun.diagnostics.plots import write_plots

        report["files"]["plots"] = write_plots(clouds, out_dir, seed=seed, num_slices=num_slices, dataset=dataset)
    if html_page:
        report["files"]["html"] = "report.html"
        (out_dir / "report.html").write_text(render_html(report, out_dir), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def isotropy_report(models: Sequence[Any], dataset: str, data_dir: str | Path | None = None, *,
                    split: str = "test", sample: int = DEFAULT_SAMPLE, query_sample: int | None = None,
                    seed: int = 0, output_dir: str | Path | None = None, batch_size: int = 32,
                    num_slices: int = DEFAULT_NUM_SLICES, top_k: Sequence[int] = DEFAULT_TOP_K,
                    settings: Any = None, plots: bool = True, html_page: bool = True, progress: bool = True,
                    labels: Sequence[str] | None = None, device: str | None = None,
                    truncate_dim: int | None = None) -> dict[str, Any]:
    """Embed a seeded sample of ``dataset`` with every model, compute every metric, write the files.

    ``models``: ``--model`` strings (see :func:`ragcun.resolve.resolve_model`, ``ENCODER+HEAD`` included) or
    ``EmbeddingModel`` objects. Writes
    ``report.json``, the PNG plots (``spectrum``, ``norms``, ``projections``, ``pca``) and ``report.html``
    (images inlined) into ``output_dir`` (default ``isotropy-report-<dataset>``) and returns the JSON's dict.
    Models loaded from strings are moved to ``device`` (default: CUDA when available, else the CPU); model
    objects are used where they are. The metrics are computed on the CPU in float64. ``truncate_dim``: every
    model's embeddings cut to their first ``D`` coordinates (a Matryoshka prefix; :mod:`ragcun.truncation`).
    """
    from ragcun import __version__

    _check_report_arguments(models, batch_size, num_slices)
    data = sample_dataset(dataset, data_dir, split=split, sample=sample, query_sample=query_sample, seed=seed)
    specs = [m if isinstance(m, str) else getattr(m, "name_or_path", type(m).__name__) for m in models]
    labels = list(labels) if labels is not None else _unique_labels(specs)
    if len(labels) != len(models):
        raise ValueError(f"got {len(labels)} labels for {len(models)} models")
    out_dir = Path(output_dir if output_dir is not None else f"isotropy-report-{data.dataset}")
    out_dir.mkdir(parents=True, exist_ok=True)

    results, clouds = [], []
    for spec, label, model in zip(specs, labels, models):
        # one at a time: a model loaded from a string is dropped (on return) before the next one is loaded
        result, cloud = _measure_model(spec, label, model, data, settings=settings, seed=seed, device=device,
                                       truncate_dim=truncate_dim, batch_size=batch_size, progress=progress,
                                       num_slices=num_slices, top_k=top_k)
        results.append(result)
        clouds.append(cloud)

    report: dict[str, Any] = {
        "ragcun_version": __version__,
        "dataset": {**data.summary(), "seed": seed},
        "settings": {"sample": sample, "query_sample": query_sample, "seed": seed, "batch_size": batch_size,
                     "sigreg_num_slices": num_slices, "sigreg_grid": "17 points on [0, 3]", "top_k": list(top_k),
                     "uniformity_t": UNIFORMITY_T, "alignment_alpha": ALIGNMENT_ALPHA, "truncate_dim": truncate_dim},
        "vectors": VECTORS,
        "models": results,
        "output_dir": str(out_dir),
        "files": {"json": "report.json"},
    }
    _write_report_files(report, clouds, out_dir, seed=seed, num_slices=num_slices, dataset=data.dataset,
                        plots=plots, html_page=html_page)
    return report


def _embed(model, texts: list[str], batch_size: int, progress: bool, description: str):
    import torch

    if not texts:
        return torch.empty(0, model.dim, dtype=torch.float64)
    emb = model.encode_embeddings(texts, batch_size, show_progress=progress, description=description)
    return emb.mean.to(torch.float64)


# -- presentation ---------------------------------------------------------------------------------------------
GROUP_TITLES = {"documents": "documents", "pairs": "query / relevant-document pairs", "queries": "queries"}


def format_value(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def sample_line(ds: dict[str, Any]) -> str:
    """What was embedded, in one sentence: the documents sampled, the queries, the pairs and the relevant documents
    outside the sample that the pairs add (which is why more documents are embedded than ``--sample``)."""
    line = (f"sample: {ds['documents']} of {ds['corpus_size']} documents, {ds['queries']} of {ds['judged_queries']} "
            f"judged queries, {ds['pairs']} query / relevant-document pairs")
    extra = int(ds.get("extra_relevant_documents") or 0)
    if extra:
        line += (f"; {extra} relevant documents of those pairs that are not in the sample were embedded too, for the "
                 f"pair rows only ({ds['documents'] + extra} documents embedded in all)")
    return line


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``(group, row label, one formatted cell per model)``; the label states the vectors and n."""
    rows: list[tuple[str, str, list[str]]] = []
    models = report["models"]
    for group in GROUP_TITLES:
        keys: list[str] = []
        for m in models:
            for key in m["metrics"].get(group, {}):
                if key not in keys:
                    keys.append(key)
        for key in keys:
            first = next(m["metrics"][group][key] for m in models if key in m["metrics"].get(group, {}))
            label = f"{first['label']} [{first['vectors']}, n={first['n']}]"
            cells = [format_value(m["metrics"].get(group, {}).get(key, {}).get("value", float("nan")))
                     for m in models]
            rows.append((group, label, cells))
    return rows


def render_html(report: dict[str, Any], out_dir: Path) -> str:
    """One self-contained page: the table, the plots (base64-inlined PNGs) and what each number means."""
    esc = html.escape
    ds = report["dataset"]
    models = report["models"]
    head = "".join(f"<th>{esc(m['label'])}<br><small>{esc(m['encoder'])} + {esc(m['head'])}, D={m['dim']}"
                   f"</small></th>" for m in models)
    body, current = [], None
    for group, label, cells in report_rows(report):
        if group != current:
            current = group
            body.append(f"<tr class='group'><td colspan='{len(models) + 1}'>{esc(GROUP_TITLES[group])}</td></tr>")
        body.append("<tr><td>" + esc(label) + "</td>" + "".join(f"<td class='num'>{esc(c)}</td>" for c in cells)
                    + "</tr>")
    images = []
    captions = {
        "spectrum": "Covariance eigenvalues of the document sample, divided by their mean, on a log scale; "
                    "the dashed line is an exact N(0, I) sample of the same n and D (flat at 1 is isotropic).",
        "norms": "Euclidean norms of the raw document vectors.",
        "projections": "Documents projected on a few of the SIGReg's random unit directions (the first ones it "
                       "draws), raw and per-dimension z-scored, against the N(0, 1) density SIGReg compares "
                       "them with.",
        "pca": "The first two principal components of documents and queries together.",
    }
    for key, name in report.get("files", {}).get("plots", {}).items():
        path = out_dir / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            images.append(f"<figure><img alt='{esc(key)}' src='data:image/png;base64,{data}'>"
                          f"<figcaption>{esc(captions.get(key, key))}</figcaption></figure>")
    notes = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in METRIC_NOTES.items())
    verdicts = "".join(f"<li><b>{esc(m['label'])}</b>: {esc(m.get('verdict', ''))}</li>" for m in report["models"])
    settings = esc(json.dumps(report["settings"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragcun isotropy report: {esc(ds['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
td.num {{ text-align: right; font-family: monospace; }} tr.group td {{ background: #eef; font-weight: bold; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} small {{ color: #666; }}
</style></head><body>
<h1>Isotropy report: {esc(ds['name'])} ({esc(ds['split'])})</h1>
<p>{ds['documents']} documents sampled from {ds['corpus_size']}, {ds['queries']} of {ds['judged_queries']} judged
queries, {ds['pairs']} query / relevant-document pairs; seed {ds['seed']}. Every row states the sample size n and
the vectors it was computed on: <i>raw</i> (as the model outputs them), <i>l2</i> (L2-normalized, as the metric
is defined), <i>z-score</i> (each dimension standardized), <i>reference</i> (an exact N(0, I) sample of the
same size).</p>
<h2>In one line</h2><ul>{verdicts}</ul>
<table><tr><th>metric [vectors, n]</th>{head}</tr>
{''.join(body)}
</table>
<p><small>settings: {settings}; ragcun {esc(str(report['ragcun_version']))}</small></p>
{''.join(images)}
<h2>What the numbers mean</h2><ul>{notes}</ul>
</body></html>
"""


METRIC_NOTES = {
    "partition isotropy I(W)": "min over max of Z(c) = sum_i exp(c . w_i), c over the +- eigenvectors of W^T W "
                               "(Mu & Viswanath 2018). 1 = isotropic; near 0 for a common direction or large "
                               "norms. Not scale invariant, hence shown on raw and on L2-normalized vectors.",
    "IsoScore": "Rudman et al. 2022: how evenly the variance is spread over the principal axes; 1 = isotropic, "
                "(k-1)/(D-1) for k equal axes. Depends strongly on n (a finite Gaussian sample scores below 1; "
                "with n <= D it cannot exceed about (n-2)/(D-1)).",
    "average cosine": "mean cosine between two different samples, over all pairs (Ethayarajh 2019); ~0 isotropic, "
                      "near 1 for a cone.",
    "effective rank / D": "exp of the entropy of the normalized singular values of the centered sample "
                          "(Roy & Vetterli 2007), divided by D; at most min(n-1, D)/D.",
    "variance share of top k PCs": "fraction of the total variance in the k leading principal directions "
                                   "(k/D if isotropic).",
    "norm": "Euclidean norms of the raw vectors; mean / sqrt(D) is ~1 for N(0, I).",
    "alignment": "Wang & Isola 2020: mean squared distance between a query and its relevant document, on "
                 "L2-normalized vectors (lower = closer).",
    "uniformity": "Wang & Isola 2020: log mean exp(-2 ||u_i - u_j||^2) over pairs of different L2-normalized "
                  "documents (lower = more uniform on the sphere).",
    "SIGReg": "LeJEPA's sliced Epps-Pulley statistic (mean over random directions, 17-point grid on [0, 3]), on "
              "raw and on per-dimension z-scored vectors. An exact N(0, I) sample of any size scores the noise "
              "floor (~1.05) in expectation, not 0; a collapsed cloud scores roughly proportionally to n. "
              "Z-scoring with the sample's own mean and spread removes part of that noise, so the standardized "
              "value is compared with exact N(0, I) samples of the same n and D, z-scored the same way "
              "(a seeded Monte Carlo mean).",
}
