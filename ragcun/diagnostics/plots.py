"""PNG plots for the isotropy report (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

NUM_PROJECTIONS = 4  # random 1-D projections shown per model
PCA_POINTS = 3000  # at most this many documents in the scatter (all queries are drawn)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("the isotropy report's plots need matplotlib: pip install matplotlib "
                         "(or pass --no-plots)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: Path, title: str | None = None) -> str:
    """Title (multi-panel figures), write, close; returns the file name."""
    if title is not None:
        fig.suptitle(title)
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _panels(plt, count: int, width: float, height: float, max_cols: int = 3):
    """One panel per model on a grid of at most ``max_cols`` columns; the grid's unused panels are blanked."""
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return fig, list(axes.flat)[:count]


def write_plots(clouds: Sequence[dict[str, Any]], out_dir: Path, *, seed: int = 0, num_slices: int = 1024,
                dataset: str = "") -> dict[str, str]:
    """Write spectrum.png, norms.png, projections.png and pca.png; ``clouds``: one
    ``{"label", "documents" (N, D) tensor, "queries" (Q, D) tensor}`` per model. Returns {plot: file name}."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    files = {}
    files["spectrum"] = _spectrum(plt, clouds, out_dir / "spectrum.png", seed, dataset)
    files["norms"] = _norms(plt, clouds, out_dir / "norms.png", dataset)
    files["projections"] = _projections(plt, clouds, out_dir / "projections.png", seed, num_slices, dataset)
    files["pca"] = _pca(plt, clouds, out_dir / "pca.png", dataset)
    return files


def _spectrum(plt, clouds, path: Path, seed: int, dataset: str) -> str:
    import torch

    from ragcun.stats.isotropy import covariance_eigenvalues

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    references = {}
    for cloud in clouds:
        docs = cloud["documents"]
        n, dim = docs.shape
        keep = min(dim, n - 1)  # a centered sample of n points has at most n - 1 non-zero eigenvalues
        values = covariance_eigenvalues(docs).numpy()
        ax.plot(np.arange(1, keep + 1), np.maximum(values[:keep] / values.mean(), 1e-12),
                label=f"{cloud['label']} (D={dim})")
        references.setdefault((n, dim), None)
    gen = torch.Generator().manual_seed(seed)
    for style, (n, dim) in zip(("--", ":", "-.") * 10, references):
        keep = min(dim, n - 1)
        ref = covariance_eigenvalues(torch.randn(n, dim, generator=gen, dtype=torch.float64)).numpy()
        ax.plot(np.arange(1, keep + 1), ref[:keep] / ref.mean(), color="k", ls=style, lw=1,
                label=f"N(0, I) sample, n={n}, D={dim}")
    ax.set_yscale("log")
    ax.set_xlabel("principal direction (rank; at most n - 1 shown)")
    ax.set_ylabel("eigenvalue / mean eigenvalue")
    n = clouds[0]["documents"].shape[0]
    ax.set_title(f"Covariance spectrum of {n} {dataset} documents (raw vectors)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def _norms(plt, clouds, path: Path, dataset: str) -> str:
    fig, axes = _panels(plt, len(clouds), 4.5, 3.3)
    for ax, cloud in zip(axes, clouds):
        norms = cloud["documents"].norm(dim=1).numpy()
        root_d = math.sqrt(cloud["documents"].shape[1])
        # each panel spans its own data (unit vectors would otherwise be one spike on an axis stretched to
        # sqrt(D)); where N(0, I) would put the norms is marked when it falls inside, and stated when not
        lo, hi = float(np.percentile(norms, 0.5)), float(np.percentile(norms, 99.5))
        pad = max(0.05 * (hi - lo), 1e-3 * max(abs(hi), 1e-12))
        lo, hi = lo - pad, hi + pad
        ax.hist(norms, bins=60, range=(lo, hi))
        if lo <= root_d <= hi:
            ax.axvline(root_d, color="k", ls="--", lw=1, label=f"N(0, I): ~sqrt(D) = {root_d:.3g}")
            ax.legend(fontsize=7)
        else:
            ax.text(0.02, 0.95, f"N(0, I) norms: ~sqrt(D) = {root_d:.3g} (off this axis)", transform=ax.transAxes,
                    fontsize=7, va="top")
        ax.set_title(f"{cloud['label']}\nmean {norms.mean():.4g}, std {norms.std():.3g}", fontsize=9)
        ax.set_xlabel("||x||")
        ax.set_ylabel("documents")
    return _finish(fig, path, f"Norms of {clouds[0]['documents'].shape[0]} {dataset} documents (raw vectors)")


def _projections(plt, clouds, path: Path, seed: int, num_slices: int, dataset: str) -> str:
    from ragcun.stats.isotropy import standardize
    from ragcun.stats.sigreg import random_directions

    k = min(NUM_PROJECTIONS, num_slices)
    fig, axes = plt.subplots(2 * len(clouds), k, figsize=(3.2 * k, 2.6 * 2 * len(clouds)), squeeze=False)
    grid = np.linspace(-4, 4, 401)
    density = np.exp(-0.5 * grid ** 2) / math.sqrt(2 * math.pi)
    for row, cloud in enumerate(clouds):
        docs = cloud["documents"]
        # the first k of the directions SIGReg itself draws for this seed (step 0)
        directions = random_directions(docs.shape[1], num_slices, 0, seed, dtype=docs.dtype)[:, :k]
        for view, (name, x) in enumerate((("raw", docs), ("z-score", standardize(docs)))):
            z = (x @ directions).numpy()
            for col in range(k):
                ax = axes[2 * row + view, col]
                values = z[:, col]
                lo = min(-4.0, float(np.percentile(values, 0.5)))
                hi = max(4.0, float(np.percentile(values, 99.5)))
                std = float(values.std())
                # about 60 bins over the range, finer (down to 1/800 of it) so a narrow spike still has shape
                width = min((hi - lo) / 60, max(std / 3, (hi - lo) / 800))
                bins = max(1, int(round((hi - lo) / width)))
                ax.hist(values, bins=bins, range=(lo, hi), density=True, alpha=0.6, color="C0" if view == 0 else "C2")
                ax.plot(grid, density, "k-", lw=1)
                ax.set_xlim(lo, hi)
                ax.set_title(f"{cloud['label']}, {name}\ndirection {col}: std {std:.3g}", fontsize=8)
                ax.tick_params(labelsize=7)
    return _finish(fig, path,
                   f"Random 1-D projections of {clouds[0]['documents'].shape[0]} {dataset} documents vs N(0, 1)")


def _pca(plt, clouds, path: Path, dataset: str) -> str:
    import torch

    fig, axes = _panels(plt, len(clouds), 4.8, 4.3)
    for ax, cloud in zip(axes, clouds):
        docs, queries = cloud["documents"], cloud["queries"]
        both = torch.cat([docs, queries]) if queries.shape[0] else docs
        mean = both.mean(dim=0, keepdim=True)
        centered = both - mean
        _, s, vh = torch.linalg.svd(centered, full_matrices=False)
        axes2 = vh[:2].T
        explained = (s[:2] ** 2 / (s ** 2).sum()).numpy()
        d2 = ((docs - mean) @ axes2).numpy()
        step = max(1, d2.shape[0] // PCA_POINTS)
        ax.scatter(d2[::step, 0], d2[::step, 1], s=4, alpha=0.4, label=f"documents ({docs.shape[0]})")
        if queries.shape[0]:
            q2 = ((queries - mean) @ axes2).numpy()
            ax.scatter(q2[:, 0], q2[:, 1], s=8, alpha=0.7, marker="^", label=f"queries ({queries.shape[0]})")
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)" if len(explained) > 1 else "PC2")
        ax.set_title(cloud["label"], fontsize=9)
        ax.legend(fontsize=7, markerscale=2)
    return _finish(fig, path, f"PCA of {dataset} documents and queries (raw vectors)")
