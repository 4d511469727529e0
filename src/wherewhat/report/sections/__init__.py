"""Built-in tour sections, one module each; importing this package registers them all.

To add a section (e.g. for a method):

1. write ``wherewhat/report/sections/<name>.py`` with a function decorated by
   ``@register_section("<name>", order=N, title="...")`` that takes a
   :class:`~wherewhat.report.tour.TourContext` and returns a
   :class:`~wherewhat.report.html.Section` (size its work by ``ctx.quick``; record key numbers
   with ``section.record(...)``; import heavy modules inside the function);
2. append ``"<name>"`` to :data:`SECTION_MODULES` below.

Orders in use: data 10; methods 20-80 (suggested: ssdir 30, worldcomp 40, lzu 50,
spatial_prediction 60); bench 90.
"""

from importlib import import_module

SECTION_MODULES = ["data", "bench", "ssdir", "worldcomp2d", "lzu", "spatial_prediction"]

for _module in SECTION_MODULES:
    import_module(f"{__name__}.{_module}")
