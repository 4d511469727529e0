"""Experiment pipelines shared by ``benchmarks/*.py`` and the tour (train, evaluate, tabulate).

Each module runs one method's benchmark end to end and returns a JSON-able dict; the
benchmark scripts write it to ``benchmarks/results`` and the tour sections show a quick run.
"""
