"""The Spatial Prediction benchmark pipeline, shared by ``benchmarks/spatial_prediction.py`` and
the tour section "spatial_prediction": :func:`run_bench`.

One *arm* = a base method (SimCLR / BYOL), an SP weight lambda (0: the base method), an SP local
view size and a seed (:mod:`.arms`: pre-train, then probe the frozen backbone with
:mod:`.probes`):

* linear probe (logistic regression, fixed C) and k-NN (cosine, k = 20, exp weights) on the
  test split, fitted on the training images' labels;
* robustness: the same linear probe on test images with Gaussian noise / blur / low contrast
  at three severities;
* "where": an SP read-out head fitted on frozen features of training-image view pairs (the same
  protocol for every arm, SP-trained or not), scored on held-out test-image pairs (loss ratio to
  predicting zero) and by 2x2 / 3x3 patch re-ordering; SP arms also report their own head;
* landmark probe, when asked (:mod:`.face_arms`): SimCLR (+ SP) pre-trained on 68-point face
  crops without labels, then a ridge regression from frozen features to the landmarks, NME on
  faces of held-out photos.

All arms of one seed see the same images in the same order; only lambda (or the SP local view
size) differs. Every run also evaluates the *untrained* network of each seed
(:func:`~.arms.run_random_init`, the ``random_init`` row): an arm is valid only when its linear
probe clears that floor by ``valid_margin``, and no gain is read from a base arm that does not
(:func:`~wherewhat.methods.spatial_prediction.records.bench_result`). The arms run in this
process one after the other, or ``parallel`` at a time in child processes
(:mod:`.arm_processes`); runs with the same settings merge (``merge_with``). The ``quick``
preset is the few-minute version (the tour runs an even smaller one).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from wherewhat.bench.machine import machine_info
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.methods.spatial_prediction.arm_processes import run_in_process, run_in_subprocesses
from wherewhat.methods.spatial_prediction.arms import Log, run_random_init
from wherewhat.methods.spatial_prediction.face_arms import run_face_arms
from wherewhat.methods.spatial_prediction.figures import bench_figures
from wherewhat.methods.spatial_prediction.records import (
    BenchResult,
    bench_result,
    check_mergeable,
    load_earlier_run,
    pool,
)
from wherewhat.methods.spatial_prediction.settings import BenchSettings

__all__ = ["run_bench"]


# -- the run ----------------------------------------------------------------------------------


def run_bench(
    settings: BenchSettings | None = None,
    log: Log = print,
    work_dir: str | Path | None = None,
    merge_with: str | Path | None = None,
) -> BenchResult:
    """Run the benchmark (module docstring) with ``settings`` (default: the ``full`` preset).

    The arms of ``settings.plan()`` run ``settings.parallel`` at a time (1: here, in order;
    more: one child process each, without loader workers); then the random-init network of
    every seed present and, when asked (``face_seeds`` and ``faces_root``), the face arms,
    here. ``merge_with``: an earlier results file made with the same settings except seeds and
    arms (refused otherwise); its arms are pooled with this run's, keyed by (arm, seed), this
    run winning. See :class:`~wherewhat.methods.spatial_prediction.records.BenchResult` for
    what comes back.
    """
    s = settings or BenchSettings.preset("full")
    s.check()
    if s.parallel > 1 and s.num_workers:
        log(f"parallel {s.parallel}: each arm runs in its own process, without loader workers")
        s = dataclasses.replace(s, num_workers=0)
    with_faces = bool(s.faces_root and s.face_seeds)
    earlier = None
    if merge_with is not None:
        earlier = load_earlier_run(merge_with)
        check_mergeable(earlier, s, with_faces)
    start = time.perf_counter()
    plan = s.plan()
    with (
        torch_num_threads(s.threads),
        tempfile.TemporaryDirectory(prefix="spatial-prediction-bench-", dir=work_dir) as tmp,
    ):
        log(f"{len(plan)} arm(s), {s.parallel} at a time: "
            + ", ".join(f"{name}/{seed}" for name, seed in plan))  # fmt: skip
        run = run_in_subprocesses if s.parallel > 1 else run_in_process
        arms, positions = run(plan, s, log, Path(tmp))
        random_init = earlier.random_init if earlier else []
        seeds = sorted({a.seed for a in arms} | {a.seed for a in (earlier.arms if earlier else [])})
        have = {a.seed for a in random_init}
        random_init = random_init + [run_random_init(seed, s, log) for seed in seeds
                                     if seed not in have]  # fmt: skip
        face_arms = run_face_arms(s, Path(tmp), log) if with_faces else []
    seconds = time.perf_counter() - start
    total = seconds
    merged_from: list[str] = []
    if earlier is not None:
        arms = pool(earlier.arms, arms, key=lambda a: (a.arm, a.seed))
        face_arms = pool(earlier.face_arms, face_arms, key=lambda a: (a.arm, a.seed))
        merged_from = [*earlier.merged_from, earlier.path]
        total += earlier.seconds
    result = bench_result(
        arms, sorted(random_init, key=lambda a: a.seed), face_arms, s, machine_info(), seconds
    )
    result.total_seconds, result.merged_from = total, merged_from
    result.figures = bench_figures(result.arms, result.random_init, s.valid_margin)
    if positions is not None:
        result.figures["relative-positions"] = positions
    return result
