"""What a run folder says about the model it holds: its training settings, ``ragcun eval beir`` reports and
``ragcun isotropy report`` results, for the model card of an export.

Nothing here requires a layout: reports are recognised by their content, wherever ``--output`` /
``--output-dir`` put them, in the run folder or beside it (``scripts/quickstart.sh`` writes ``RUN/model`` next to
``RUN/eval.json`` and ``RUN/isotropy/report.json``), one folder deep. A report counts when the model it names
is this one: its ``--model`` path, as typed, ends with this folder's path (a report of another model, even one
saved inside the run folder, does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAIN_CONFIG = "train_config.json"
MAX_REPORT_BYTES = 50 << 20  # per-query reports of big datasets are large, but not this large


@dataclass
class RunFiles:
    searched: list[Path] = field(default_factory=list)
    train_config: dict[str, Any] | None = None
    train_config_path: Path | None = None
    evals: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # (file, report), oldest first
    isotropy: list[tuple[Path, dict[str, Any], int]] = field(default_factory=list)  # (file, report, model index)


def run_folder(model_folder: Path) -> Path:
    """The training run a checkpoint belongs to: ``RUN/checkpoints/step-N/model`` -> ``RUN``; else itself."""
    parts = model_folder.resolve().parts
    if len(parts) >= 4 and parts[-3] == "checkpoints" and parts[-2].startswith("step-"):
        return Path(*parts[:-3])
    return model_folder.resolve()


def refers_to(spec: Any, folder: Path) -> bool:
    """Does a recorded ``--model`` string name ``folder``? Paths are recorded as typed (often relative to the
    directory the command ran in), so compare their trailing components."""
    if not isinstance(spec, str) or not spec or ":" in spec:
        return False
    parts = [p for p in Path(spec).expanduser().parts if p not in (".", "")]
    if not parts or ".." in parts:
        return False
    target = folder.resolve().parts
    return len(parts) <= len(target) and tuple(parts) == target[-len(parts):]


def _read(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_eval_report(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("datasets"), dict)
            and isinstance(data.get("settings"), dict) and "k_values" in data["settings"])


def is_isotropy_report(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("models"), list) and "dataset" in data
            and all(isinstance(m, dict) and "metrics" in m for m in data["models"]))


def _candidates(folder: Path) -> list[Path]:
    files = [p for p in folder.glob("*.json")] + [p for p in folder.glob("*/*.json")]
    return sorted((p for p in files if p.is_file()), key=lambda p: (p.stat().st_mtime, str(p)))


def find_run_files(model_folder: Path | None) -> RunFiles:
    """Everything known about the model in ``model_folder`` (a checkpoint or run folder); empty for None."""
    found = RunFiles()
    if model_folder is None:
        return found
    model_folder = model_folder.resolve()
    run = run_folder(model_folder)
    for folder in dict.fromkeys([model_folder, run]):
        config = folder / TRAIN_CONFIG
        if found.train_config is None and config.is_file():
            data = _read(config)
            if isinstance(data, dict):
                found.train_config, found.train_config_path = data, config
    places = list(dict.fromkeys([model_folder, run, run.parent]))
    found.searched = places
    seen: set[Path] = set()
    for place in places:
        for path in _candidates(place):
            if path in seen or path.name in (TRAIN_CONFIG, "ragcun.json"):
                continue
            seen.add(path)
            data = _read(path)
            if is_eval_report(data) and refers_to(data.get("model"), model_folder):
                found.evals.append((path, data))
            elif is_isotropy_report(data):
                for index, entry in enumerate(data["models"]):
                    if refers_to(entry.get("spec"), model_folder):
                        found.isotropy.append((path, data, index))
                        break
    return found


def latest_metrics(evals: list[tuple[Path, dict[str, Any]]]) -> dict[tuple[str, str], tuple[Path, dict[str, Any]]]:
    """``(dataset, split) -> (file, report)``, the newest report winning (``evals`` is oldest first)."""
    latest: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}
    for path, report in evals:
        for dataset in report["datasets"]:
            latest[(dataset, str(report["settings"].get("split", "test")))] = (path, report)
    return latest
