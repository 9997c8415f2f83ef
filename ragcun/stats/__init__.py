"""Isotropy and normality statistics shared by the ``isotropy`` loss and ``ragcun isotropy report``."""

from ragcun.stats.sigreg import (epps_pulley, quadrature_grid, random_directions, sigreg, sigreg_closed_form,
                                 sigreg_noise_floor)

__all__ = ["epps_pulley", "quadrature_grid", "random_directions", "sigreg", "sigreg_closed_form",
           "sigreg_noise_floor"]
