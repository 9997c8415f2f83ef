"""One line per model that says what its isotropy numbers mean, for people who do not know them by heart."""

from __future__ import annotations

from typing import Any


def _value(metrics: dict[str, Any], key: str) -> float | None:
    item = metrics.get(key)
    return None if item is None else float(item["value"] if isinstance(item, dict) else item)


def isotropy_verdict(documents: dict[str, Any], dim: int) -> str:
    """A sentence from a model's document metrics (``{key: {"value": ...}}`` or ``{key: value}``) and its width.

    SIGReg is read against the exact N(0, I) floor of the same sample size (not 0); effective rank against D;
    the mean norm against the unit sphere and against ``sqrt(D)`` (where N(0, I) puts it).
    """
    parts = []
    sigreg, floor = _value(documents, "sigreg_raw"), _value(documents, "sigreg_gaussian_floor")
    if sigreg is not None and floor:
        ratio = sigreg / floor
        if ratio < 1.5:
            shape = "as close to N(0, I) as an exact Gaussian sample of this size"
        elif ratio < 10:
            shape = "near N(0, I) but measurably off"
        elif ratio < 100:
            shape = "far from N(0, I)"
        else:
            shape = ("very far from N(0, I): the cloud is much narrower than unit spread (nearly collapsed to a "
                     "point) or badly off-centre")
        parts.append(f"SIGReg {sigreg:.3g} is {ratio:.3g}x its Gaussian floor {floor:.3g}: {shape}")
    erank = _value(documents, "effective_rank_ratio")
    if erank is not None:
        spread = ("spread over most directions" if erank > 0.6 else "concentrated in few directions" if erank < 0.3
                  else "moderately spread")
        parts.append(f"effective rank {erank:.2f} of D={dim} ({spread})")
    norm, sqrt_d = _value(documents, "norm_mean"), dim ** 0.5
    if norm is not None:
        if abs(norm - 1.0) < 0.02:
            parts.append("unit vectors (per-coordinate spread ~1/sqrt(D): SIGReg needs an unnormalized head)")
        else:
            parts.append(f"mean norm {norm:.3g} (N(0, I): {sqrt_d:.3g})")
    iso = _value(documents, "isoscore")
    if iso is not None:
        parts.append(f"IsoScore {iso:.2f} (1 = isotropic)")
    return "; ".join(parts)
