"""WorldComp2D (Jin & Jeong): face landmarks from a few fixations and a proximity-structured
latent, with the landmark benchmark against two baselines.

- :mod:`.parts`, :mod:`.model`: the geometry, losses and networks (no Lightning);
- :mod:`.task`: the three-stage LightningModule (configs/worldcomp2d/);
- :mod:`.settings`, :mod:`.records`, :mod:`.store`, :mod:`.experiment`, :mod:`.markdown`,
  :mod:`.figures`: the benchmark pipeline (``benchmarks/worldcomp2d.py``) and its reports;
- :mod:`.differences`: what differs between two settings (saved runs, model specs);
- :mod:`.tour`: the tour's "worldcomp2d" section.

The baselines' networks and tasks are core (:mod:`wherewhat.models.landmark_baselines`,
:mod:`wherewhat.tasks.landmark_baselines`).
"""
