"""Isotropy diagnostics: the report behind ``ragcun isotropy report`` and the training loop's periodic check.

* :func:`isotropy_report` embeds a seeded sample of a BEIR dataset with one or several models and writes
  ``report.json``, PNG plots and a self-contained ``report.html``;
* :func:`embedding_diagnostics` computes the same numbers on embeddings a caller already has.

The metrics themselves are pure functions in :mod:`ragcun.stats.isotropy`.
"""

from ragcun.diagnostics.report import (Metric, embedding_diagnostics, isotropy_report,
                                       population_metrics, report_rows)

__all__ = ["Metric", "embedding_diagnostics", "isotropy_report", "population_metrics",
           "report_rows"]
