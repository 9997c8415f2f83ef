"""Isotropy and normality statistics shared by the ``isotropy`` loss and ``ragcun isotropy report``.

``ragcun.stats.sigreg`` is the SIGReg module (its statistic is ``ragcun.stats.sigreg.sigreg``; it is not
re-exported here, where the name would shadow the module); ``ragcun.stats.isotropy`` the report's metrics.
"""

from ragcun.stats.sigreg import (epps_pulley, quadrature_grid, random_directions, sigreg_closed_form,
                                 sigreg_noise_floor)

__all__ = ["epps_pulley", "quadrature_grid", "random_directions", "sigreg_closed_form", "sigreg_noise_floor"]
