"""Isotropy over training: the periodic diagnostics of one or several runs, side by side.

``ragcun train --diagnostics-every K`` embeds a fixed sample of training documents every K steps and logs
the report's numbers in ``metrics.jsonl``; this reads them back (and the loss terms of every step) so a user
sees SIGReg fall, or not, as training goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Sequence

PANELS = (("sigreg_raw", "SIGReg of the diagnostic sample (log scale; dashed: N(0, I) floor)", True),
          ("effective_rank_ratio", "effective rank / D", False),
          ("isoscore", "IsoScore", False))


def read_curves(run_dir: str | Path) -> dict[str, Any]:
    """``{"steps": [...], "loss": [...], "terms": {name: [...]}, "diagnostics": {"step": [...], key: [...]}}``
    from a run folder's metrics.jsonl (a torn last line, left by a kill, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl (not a ragcun training run?)")
    out: dict[str, Any] = {"steps": [], "loss": [], "terms": {}, "diagnostics": {"step": []}}
    from ragcun.training.logs import read_metrics

    for _, record in read_metrics(path):
        if "loss" in record and "step" in record:
            out["steps"].append(record["step"])
            out["loss"].append(record["loss"])
            for key, value in record.get("terms", {}).items():
                out["terms"].setdefault(key, []).append(value)
        if "diagnostics" in record:
            diag = record["diagnostics"]
            out["diagnostics"]["step"].append(record["step"])
            for key, value in diag.items():
                out["diagnostics"].setdefault(key, []).append(value)
    return out


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """One PNG: the training loss and the logged isotropy diagnostics against the step, one line per run."""
    from ragcun.diagnostics.plots import _pyplot

    runs = [read_curves(r) for r in run_dirs]
    labels = list(labels) if labels else [Path(r).name or str(r) for r in run_dirs]
    if len(labels) != len(runs):
        raise ValueError(f"got {len(labels)} labels for {len(runs)} runs")
    if not any(r["diagnostics"]["step"] for r in runs):
        raise ValueError("none of these runs logged diagnostics; train with --diagnostics-every K")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1 + len(PANELS), figsize=(4.6 * (1 + len(PANELS)), 3.6), squeeze=False)
    axes = axes[0]
    for run, label, color in zip(runs, labels, [f"C{i}" for i in range(10)] * 10):
        axes[0].plot(run["steps"], run["loss"], color=color, label=label)
        diag = run["diagnostics"]
        for ax, (key, _, _log) in zip(axes[1:], PANELS):
            if key in diag:
                ax.plot(diag["step"], diag[key], "o-", color=color, label=label, ms=3)
            if key == "sigreg_raw" and "sigreg_gaussian_floor" in diag:
                ax.plot(diag["step"], diag["sigreg_gaussian_floor"], "--", color=color, lw=1)
    axes[0].set_title("training loss (all terms)")
    for ax, (_, title, log) in zip(axes[1:], PANELS):
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
