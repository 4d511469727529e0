"""Reports: a self-contained HTML builder, figures with geometry drawn, the tour, previews.

- :mod:`wherewhat.report.html`: :class:`Report` / :class:`Section` -> one offline HTML file.
- :mod:`wherewhat.report.figures`: scene grids with boxes, faces with landmarks, charts.
- :mod:`wherewhat.report.tour`: :func:`run_tour` and :func:`register_section`, the machinery
  (which pages exist is :mod:`wherewhat.tour`'s business).
- :mod:`wherewhat.report.preview`: :func:`preview_dataset` for ``wherewhat data preview``.
"""

from wherewhat.report.html import Report, Section
from wherewhat.report.tour import TourContext, TourFailed, register_section, run_tour

__all__ = ["Report", "Section", "TourContext", "TourFailed", "register_section", "run_tour"]
