"""Reports: a self-contained HTML builder, figures with geometry drawn, the tour, previews.

- :mod:`wherewhat.report.html`: :class:`Report` / :class:`Section` -> one offline HTML file.
- :mod:`wherewhat.report.figures`: scene grids with boxes, faces with landmarks, charts.
- :mod:`wherewhat.report.tour`: :func:`run_tour` and :func:`register_section` (sections live in
  :mod:`wherewhat.report.sections`).
- :mod:`wherewhat.report.preview`: :func:`preview_dataset` for ``wherewhat data preview``.
"""

from wherewhat.report.html import Report, Section

__all__ = ["Report", "Section", "TourContext", "TourFailed", "register_section", "run_tour"]

_TOUR_NAMES = {"TourContext", "TourFailed", "register_section", "run_tour"}


def __getattr__(name: str):
    # Lazy, so that `python -m wherewhat.report.tour` does not find the module pre-imported.
    if name in _TOUR_NAMES:
        from wherewhat.report import tour

        return getattr(tour, name)
    raise AttributeError(f"module 'wherewhat.report' has no attribute {name!r}")
