"""The four methods, one folder each (networks, LightningModules, pipeline, figures, tour page)."""
