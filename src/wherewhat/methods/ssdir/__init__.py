"""SSDIR (Zielinski & Kajdanowicz): an object-centric VAE on a frozen SSD detector.

- :mod:`~wherewhat.methods.ssdir.parts`, :mod:`~wherewhat.methods.ssdir.model`: the network
  (plain PyTorch) and :func:`~wherewhat.methods.ssdir.model.load_detector`;
- :mod:`~wherewhat.methods.ssdir.task`: its LightningModule (``configs/ssdir/``);
- :mod:`~wherewhat.methods.ssdir.evaluation`, :mod:`~wherewhat.methods.ssdir.object_records`,
  :mod:`~wherewhat.methods.ssdir.figures`: numbers, per-object records on disk, figures;
- :mod:`~wherewhat.methods.ssdir.settings`, :mod:`~wherewhat.methods.ssdir.experiment`,
  :mod:`~wherewhat.methods.ssdir.records`, :mod:`~wherewhat.methods.ssdir.markdown`: the
  benchmark pipeline, its typed results and their tables;
- :mod:`~wherewhat.methods.ssdir.tour`: the tour page.

The detector it builds on is the core's :class:`~wherewhat.models.ssd.SSDDetector`, trained
by :class:`~wherewhat.tasks.ssd.SSDTask` (``configs/ssd/``).
"""
