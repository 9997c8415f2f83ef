"""The exported folder's ``README.md``: a model card in the form the Hugging Face hub and sentence-transformers
use (YAML front matter, then Markdown), so the folder is ready to publish.

The front matter carries ``base_model`` (when known), ``library_name: sentence-transformers``, ``pipeline_tag:
sentence-similarity``, ``tags``, the training ``datasets``, the ``metrics`` that ``ragcun eval beir`` measured
for this model and a ``model-index`` with their values. The body says what the folder computes, how to use it,
the exact training command and settings, and the isotropy figures, each with the file it came from. What was
not found is said, not left out silently. YAML scalars are written as JSON, which YAML reads unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ragcun.exporters.run_reports import RunFiles, latest_metrics

# BEIR metric names -> the hub's model-index metric types
_METRIC_TYPES = {"NDCG": "ndcg_at", "MAP": "map_at", "Recall": "recall_at", "P": "precision_at", "MRR": "mrr_at"}
CARD_METRICS = ("NDCG@10", "MRR@10", "MAP@10", "Recall@10", "P@10", "Recall@100")
TABLE_METRICS = ("NDCG@10", "MRR@10", "Recall@10", "Recall@100")


@dataclass
class CardInputs:
    name: str  # the exported folder's name
    source: str  # what was exported, as given
    pipeline: str  # "Transformer -> Pooling(mean) -> ..."
    dim: int
    similarity: str
    distance: str
    encoder: str
    head: str
    head_config: dict[str, Any]
    ragcun_version: str
    base_model: str | None = None
    query_prefix: str = ""
    document_prefix: str = ""
    lost: str | None = None  # what a --mean-only export gives up
    notes: list[str] = field(default_factory=list)
    run: RunFiles = field(default_factory=RunFiles)
    train_config_copy: str | None = None  # its file name inside the export
    train_command: str | None = None
    unflagged: dict[str, Any] = field(default_factory=dict)
    resumes: int = 0


def _y(value: Any) -> str:
    return json.dumps(value)


def _shown(path: Any, inputs: CardInputs) -> str:
    """A report's path relative to the folder holding the run (a card to publish need not show local paths)."""
    base = inputs.run.searched[-1] if inputs.run.searched else None
    try:
        return str(path.relative_to(base)) if base is not None else str(path)
    except ValueError:
        return str(path)


def metric_type(name: str) -> str | None:
    """``"NDCG@10"`` -> ``"ndcg_at_10"``."""
    base, _, k = name.partition("@")
    prefix = _METRIC_TYPES.get(base)
    return f"{prefix}_{k}" if prefix and k.isdigit() else None


def dataset_id(name: str) -> str:
    from ragcun.data.beir import BEIR_DATASETS

    return f"BeIR/{name}" if name.lower() in BEIR_DATASETS else name


def training_datasets(config: dict[str, Any] | None) -> list[str]:
    """``beir:scifact:train`` -> ``BeIR/scifact``; local files are named in the body, not here."""
    spec = str((config or {}).get("train_data") or "")
    if spec.startswith("beir:"):
        return [dataset_id(spec.split(":")[1])]
    return []


def comparable(report: dict[str, Any], inputs: CardInputs) -> bool:
    """Do a report's numbers describe the exported folder? Not when the eval ranked with another distance, nor
    after a mean-only export (the eval used the variances)."""
    return inputs.lost is None and report["settings"].get("distance") in (inputs.distance, None)


def _front_matter(inputs: CardInputs, results: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    lines = ["---"]
    if inputs.base_model:
        lines.append(f"base_model: {_y(inputs.base_model)}")
    lines += ["library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval", "ragcun",
            f"ragcun-head-{inputs.head}", f"ragcun-distance-{inputs.distance}"]
    lines += [f"- {_y(t)}" for t in tags]
    datasets = training_datasets(inputs.run.train_config)
    if datasets:
        lines.append("datasets:")
        lines += [f"- {_y(d)}" for d in datasets]
    types = list(dict.fromkeys(t for _, _, metrics in results for m in metrics if (t := metric_type(m))))
    if types:
        lines.append("metrics:")
        lines += [f"- {_y(t)}" for t in types]
        lines += ["model-index:", f"- name: {_y(inputs.name)}", "  results:"]
        for dataset, split, metrics in results:
            lines += ["  - task:", "      type: \"Retrieval\"", "    dataset:",
                      f"      name: {_y('BEIR ' + dataset)}", f"      type: {_y(dataset_id(dataset))}",
                      f"      split: {_y(split)}", "    metrics:"]
            for metric, value in metrics.items():
                lines += [f"    - type: {_y(metric_type(metric))}", f"      value: {_y(round(float(value), 5))}",
                          f"      name: {_y(metric)}"]
    lines.append("---")
    return lines


def _eval_section(inputs: CardInputs) -> tuple[list[str], list[tuple[str, str, dict[str, float]]]]:
    run = inputs.run
    lines = ["## Evaluation", ""]
    results: list[tuple[str, str, dict[str, float]]] = []
    if not run.evals:
        if run.searched:
            where = ", ".join(f"`{p}`" for p in run.searched)
            lines += [f"No `ragcun eval beir` report for this model was found (looked in {where}). Measure it "
                      f"with `ragcun eval beir --model {inputs.source} --datasets scifact --output "
                      f"{inputs.source}/eval.json` and export again, or evaluate this folder directly with "
                      "`ragcun eval beir --model hf:PATH_OF_THIS_FOLDER`.", ""]
        else:
            lines += [f"No `ragcun eval beir` report: the export was made from `{inputs.source}`, not from a run "
                      "folder, so there was nowhere to look. Evaluate this folder with `ragcun eval beir --model "
                      "hf:PATH_OF_THIS_FOLDER`.", ""]
        return lines, results
    latest = latest_metrics(run.evals)
    header = "| dataset | split | " + " | ".join(TABLE_METRICS) + " | distance | dtype | report |"
    lines += ["Measured by `ragcun eval beir` (BEIR's metrics through pytrec_eval) on the ragcun model this "
              "folder was exported from:", "", header, "|" + "---|" * (header.count("|") - 1)]
    skipped = []
    for (dataset, split), (path, report) in sorted(latest.items()):
        metrics = report["datasets"][dataset]
        settings = report["settings"]
        cells = [f"{metrics[m]:.4f}" if m in metrics else "" for m in TABLE_METRICS]
        lines.append(f"| {dataset} | {split} | " + " | ".join(cells) +
                     f" | {settings.get('distance', '')} | {settings.get('dtype', '')} | `{_shown(path, inputs)}` |")
        if comparable(report, inputs):
            results.append((dataset, split, {m: metrics[m] for m in CARD_METRICS if m in metrics}))
        else:
            skipped.append(dataset)
    lines.append("")
    if skipped:
        why = ("this is a mean-only export" if inputs.lost else
               f"they were measured with another distance than the model's {inputs.distance}")
        lines += [f"Not in the metadata ({', '.join(skipped)}): {why}, so they do not describe this folder.", ""]
    return lines, results


def _training_section(inputs: CardInputs) -> list[str]:
    run = inputs.run
    lines = ["## Training", ""]
    if run.train_config is None:
        return lines + ["No `train_config.json` was found beside the model, so the training settings are unknown "
                        "(the model may not have been trained by `ragcun train`).", ""]
    lines += ["Trained with ragcun; the settings that differ from the defaults, as a command:", "", "```bash",
              inputs.train_command or "", "```", ""]
    if inputs.unflagged:
        lines += ["Settings no flag sets (they are in the config file below): " +
                  ", ".join(f"`{k}={v!r}`" for k, v in inputs.unflagged.items()) + ".", ""]
    calibrated = calibrated_init_scale(run.train_config, inputs.head, inputs.head_config)
    if calibrated is not None:
        lines += [f"`head.{inputs.head}.init_scale` is `\"auto\"` in these settings: training calibrated the head "
                  f"before its first step, and the model holds the value it chose, **{calibrated:.4g}** (the head "
                  "configuration above; `metrics.jsonl` records it at step 0).", ""]
    resumes = resume_history(run)
    changed = [entry for entry in resumes if entry.get("changes")]
    copy = inputs.train_config_copy or _shown(run.train_config_path, inputs)
    source = _shown(run.train_config_path, inputs)
    if changed:
        what = "; ".join(f"at step {entry.get('step', '?')}: " + ", ".join(
            f"`{key}` {_setting(change)}" for key, change in sorted(entry["changes"].items())) for entry in changed)
        lines += [f"**The run was resumed {len(resumes)} time(s), with changed settings** ({what}). The settings "
                  f"above and in `{copy}` (copied from `{source}`) are those of its last invocation, so `ragcun "
                  f"train --config {copy}` trains with them from the first step: it does **not** repeat this run "
                  "exactly (`config_history.json` in the run folder lists every invocation).", ""]
    else:
        if resumes or inputs.resumes:
            lines += [f"The run was resumed {len(resumes) or inputs.resumes} time(s), each with the same settings "
                      "(`config_history.json` in the run folder).", ""]
        lines += [f"Every resolved setting is in `{copy}` (copied from `{source}`); `ragcun train --config {copy}` "
                  "repeats the run exactly.", ""]
    lines += ["<details><summary>All settings</summary>", "", "```json",
              json.dumps(run.train_config, indent=2, sort_keys=True), "```", "", "</details>", ""]
    return lines


def _setting(change: Any) -> str:
    if isinstance(change, dict) and "from" in change and "to" in change:
        return f"{json.dumps(change['from'])} -> {json.dumps(change['to'])}"
    return json.dumps(change)


def resume_history(run: RunFiles) -> list[dict[str, Any]]:
    """The ``resume`` entries of the run's ``config_history.json`` (each with the settings it changed), oldest
    first; empty when there is none or it cannot be read."""
    if run.train_config_path is None:
        return []
    try:
        entries = json.loads((run.train_config_path.parent / "config_history.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and e.get("event") == "resume"]


def calibrated_init_scale(train_config: dict[str, Any] | None, head: str, head_config: dict[str, Any]) -> float | None:
    """The gain a head calibrated at training start holds (``init_scale`` a number in the model) when the run's
    settings say ``"auto"`` (explicitly, or by leaving the default of a head whose default is ``"auto"``)."""
    value = head_config.get("init_scale")
    if train_config is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    settings = ((train_config.get("settings") or {}).get("head") or {}).get(head) or {}
    if "init_scale" in settings:
        return float(value) if settings["init_scale"] == "auto" else None
    try:
        import inspect

        from ragcun.plugins import get_registry

        default = inspect.signature(get_registry().get("head", head).load()).parameters["init_scale"].default
    except Exception:  # an unknown or unloadable head, a head without init_scale: nothing to explain
        return None
    return float(value) if default == "auto" else None


def _isotropy_section(inputs: CardInputs) -> list[str]:
    from ragcun.diagnostics.report import report_rows

    lines = ["## Isotropy", ""]
    if not inputs.run.isotropy:
        return lines + ["No `ragcun isotropy report` for this model was found beside it; `ragcun isotropy report "
                        f"--model {inputs.source} --dataset scifact` measures it.", ""]
    path, report, index = inputs.run.isotropy[-1]
    labels = [m.get("label", m.get("spec", "?")) + (" (this model)" if i == index else "")
              for i, m in enumerate(report["models"])]
    dataset = report.get("dataset", {})
    dataset_name = dataset.get("dataset", dataset.get("name", "?")) if isinstance(dataset, dict) else dataset
    lines += [f"From `{_shown(path, inputs)}` (`ragcun isotropy report`, dataset {dataset_name}); document "
              "embeddings, each row naming the vectors it was computed on and the sample size:", "",
              "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for group, label, cells in report_rows(report):
        if group == "documents":
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_model_card(inputs: CardInputs) -> str:
    eval_lines, results = _eval_section(inputs)
    prompts = bool(inputs.query_prefix or inputs.document_prefix)
    encode_q = 'model.encode(["a query"], prompt_name="query")' if prompts else 'model.encode(["a query"])'
    encode_d = ('model.encode(["a document"], prompt_name="document")' if prompts
                else 'model.encode(["a document"])')
    body = [
        "", f"# {inputs.name}", "",
        f"A [sentence-transformers](https://www.sbert.net) model exported by "
        f"ragcun {inputs.ragcun_version} from `{inputs.source}`: it maps texts to "
        f"{inputs.dim}-dimensional vectors compared by **{inputs.similarity}** similarity.", "",
        "## Model", "",
        f"* modules: `{inputs.pipeline}`",
        f"* ragcun model: encoder `{inputs.encoder}`, head `{inputs.head}` "
        f"(`{json.dumps(inputs.head_config, sort_keys=True)}`), distance `{inputs.distance}`",
        f"* `similarity_fn_name`: `{inputs.similarity}`"
        + (" (ranks exactly like the model's squared Euclidean distance)" if inputs.distance == "sqeuclidean"
           else ""),
    ]
    if prompts:
        body.append(f"* prompts: query `{inputs.query_prefix!r}`, document `{inputs.document_prefix!r}` "
                    "(`prompt_name=\"query\"` / `\"document\"`)")
    body += [f"* {note}" for note in inputs.notes]
    if inputs.lost:
        body += ["", f"> **Warning:** {inputs.lost}."]
    body += ["", "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             'model = SentenceTransformer("PATH_OF_THIS_FOLDER")', f"queries = {encode_q}",
             f"documents = {encode_d}",
             f"scores = model.similarity(queries, documents)  # {inputs.similarity}: higher is closer", "```", "",
             "ragcun loads it back too: `ragcun eval beir --model hf:PATH_OF_THIS_FOLDER`.", ""]
    body += eval_lines + _training_section(inputs) + _isotropy_section(inputs)
    return "\n".join(_front_matter(inputs, results) + body).rstrip() + "\n"
