"""How the arms of a Spatial Prediction benchmark run: one after the other in this process, or
side by side in child processes (a pair base / base + SP at the same time, one core each)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wherewhat.bench.runtime import torch_num_threads
from wherewhat.io import write_atomic
from wherewhat.methods.spatial_prediction.arms import Log, run_named_arm
from wherewhat.methods.spatial_prediction.figures import relative_position_png
from wherewhat.methods.spatial_prediction.records import ArmResult
from wherewhat.methods.spatial_prediction.settings import BenchSettings

__all__ = ["arm_child_main", "run_in_process", "run_in_subprocesses"]


def _figure_arm(plan: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
    """The plan's first SimCLR + SP arm (default lambda and views): it draws the held-out pairs
    figure."""
    return next(((name, seed) for name, seed in plan if name == "simclr_sp"), None)


def run_in_process(
    plan: Sequence[tuple[str, int]], s: BenchSettings, log: Log, tmp: Path
) -> tuple[list[ArmResult], bytes | None]:
    """Every arm of ``plan`` one after the other here; the trained figure arm's pairs PNG."""
    arms, positions = [], None
    figure_arm = _figure_arm(plan)
    for name, seed in plan:
        arm, task = run_named_arm(name, seed, s, log)
        arms.append(arm)
        if (name, seed) == figure_arm:
            positions = relative_position_png(task.model, s.cifar_npz)
    return arms, positions


_CHILD = "from wherewhat.methods.spatial_prediction.arm_processes import arm_child_main; arm_child_main()"


def arm_child_main(argv: Sequence[str] | None = None) -> None:
    """Child process of a parallel run: ``SETTINGS_JSON ARM SEED OUT_JSON [FIGURE_PNG]``.

    Runs one arm with the settings' torch threads and writes its
    :class:`~wherewhat.methods.spatial_prediction.records.ArmResult` JSON to ``OUT_JSON`` (and
    the held-out pairs figure to ``FIGURE_PNG`` when given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (4, 5):
        raise SystemExit("usage: SETTINGS_JSON ARM SEED OUT_JSON [FIGURE_PNG]")
    s = BenchSettings.from_dict(json.loads(Path(args[0]).read_text()))
    log = lambda message: print(message, flush=True)  # noqa: E731
    with torch_num_threads(s.threads):
        arm, task = run_named_arm(args[1], int(args[2]), s, log)
        if len(args) == 5:
            write_atomic(args[4], relative_position_png(task.model, s.cifar_npz))
    write_atomic(args[3], json.dumps(arm.to_dict(), allow_nan=True))


def run_in_subprocesses(
    plan: Sequence[tuple[str, int]], s: BenchSettings, log: Log, tmp: Path
) -> tuple[list[ArmResult], bytes | None]:
    """The arms of ``plan`` in child processes (:func:`arm_child_main`), ``s.parallel`` at a
    time, started in plan order (a pair base / base + SP side by side, one core each). Each
    child has ``s.threads`` torch threads; a failed child stops the run once the running ones
    have finished (their results are lost with it: rerun and merge)."""
    settings_path = tmp / "settings.json"
    settings_path.write_text(json.dumps(dataclasses.asdict(s)))
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads)}
    figure_arm = _figure_arm(plan)
    figure = tmp / "relative-positions.png"
    pending = list(enumerate(plan))
    running: dict[int, subprocess.Popen] = {}
    failed: list[str] = []
    try:
        while pending or running:
            while pending and len(running) < s.parallel and not failed:
                index, (name, seed) = pending.pop(0)
                command = [sys.executable, "-c", _CHILD, str(settings_path), name, str(seed),
                           str(tmp / f"arm-{index}.json")]  # fmt: skip
                if (name, seed) == figure_arm:
                    command.append(str(figure))
                log(f"start {name} seed {seed} (process {index + 1} of {len(plan)})")
                running[index] = subprocess.Popen(command, env=env)
            if failed:
                pending.clear()
            time.sleep(0.5)
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                if code != 0:
                    name, seed = plan[index]
                    failed.append(f"{name} seed {seed} (exit code {code})")
    finally:
        for child in running.values():  # only on an interrupt: stop our own children
            child.terminate()
            child.wait()
    if failed:
        raise RuntimeError(
            f"arm(s) failed: {', '.join(failed)}; their errors are printed above. The arms that "
            "finished are not kept: rerun the failed ones with --arms / --seeds and --merge-with."
        )
    arms = [ArmResult.from_dict(json.loads((tmp / f"arm-{i}.json").read_text()))
            for i in range(len(plan))]  # fmt: skip
    return arms, figure.read_bytes() if figure.is_file() else None
