"""Statistics: isotropy and normality (shared by the ``isotropy`` loss and ``ragcun isotropy report``) and paired
comparisons (shared by ``ragcun ablation`` and ``ragcun compare``).

``ragcun.stats.sigreg`` is the SIGReg module (its statistic is ``ragcun.stats.sigreg.sigreg``; it is not
re-exported here, where the name would shadow the module); ``ragcun.stats.isotropy`` the report's metrics;
``ragcun.stats.paired`` the paired tests, bootstrap intervals and power over queries and over runs. The names
below load on first use, so importing ``ragcun.stats.paired`` does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["epps_pulley", "quadrature_grid", "random_directions", "sigreg_closed_form", "sigreg_noise_floor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ragcun.stats import sigreg

        return getattr(sigreg, name)
    raise AttributeError(f"module 'ragcun.stats' has no attribute {name!r}")
