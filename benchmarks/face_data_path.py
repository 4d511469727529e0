"""Speed of the WorldComp2D encoder's training step on the two face data paths.

The encoder stage of configs/worldcomp2d/default.yaml (batch 128, one anchor + view pair per
face, the reference's augmentation), trained for a few steps on each path with identical
settings, on ``--threads`` torch threads (default 1):

- ``per_face``: every face is decoded from its photo and warped into a 256-px crop, then the
  views are cut from the crops (``data.batched_views: false``);
- ``batched``: every photo is decoded once at setup into a uint8 canvas, and all views of a
  batch come from one ``grid_sample`` on the canvases (``data.batched_views: true``).

The step time is the median gap between the ends of consecutive training batches (data
included, the first step left out); its FLOP rate is given as a fraction of the machine's
measured matmul peak on the same threads. Run it on a quiet machine.

    .venv/bin/python benchmarks/face_data_path.py                # 1 thread, 20 steps per path

Writes benchmarks/results/face_data_path.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from wherewhat.bench.machine import machine_info, peak_matmul_gflops
from wherewhat.bench.tables import format_markdown_table, write_results
from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.methods.worldcomp2d.training_runs import (
    EXPECTED_WARNINGS,
    StepClock,
    training_step_gflop,
)
from wherewhat.training.config_files import load_layered_config
from wherewhat.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "worldcomp2d" / "default.yaml"
PATHS = {"per_face": False, "batched": True}


def _arm(model_args: dict, data_args: dict, batched: bool, steps: int) -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    task = WorldComp2DTask(**model_args)
    data = FaceLandmarkDataModule(**{**data_args, "batched_views": batched})
    began = time.perf_counter()
    data.setup("fit")
    setup_seconds = time.perf_counter() - began
    clock = StepClock()
    fit(task, data, max_steps=steps + 1, callbacks=[clock], progress=False,
        expected_warnings=EXPECTED_WARNINGS)  # fmt: skip
    seconds = clock.median_step()
    gflop = training_step_gflop(task, data)
    return {"setup_seconds": setup_seconds, "seconds_per_step": seconds, "step_gflop": gflop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_layered_config(CONFIG)
    model_args = {k: v for k, v in config["model"]["init_args"].items() if k != "init_from"}
    data_args = dict(config["data"]["init_args"])
    root = Path(data_args["root"])
    data_args["root"] = str(root if root.is_absolute() else (ROOT / root).resolve())
    peak = peak_matmul_gflops(args.threads)
    arms = {}
    for name, batched in PATHS.items():
        print(f"{name}: {args.steps} steps ...", flush=True)
        arm = _arm(model_args, data_args, batched, args.steps)
        arm["fraction_of_peak"] = arm["step_gflop"] / arm["seconds_per_step"] / peak
        arms[name] = arm
    speedup = arms["per_face"]["seconds_per_step"] / arms["batched"]["seconds_per_step"]
    command = "python benchmarks/face_data_path.py " + " ".join(argv or sys.argv[1:])
    result = {
        "arms": arms,
        "speedup": speedup,
        "target_speedup": 2.0,
        "met": speedup >= 2.0,
        "threads": args.threads,
        "steps": args.steps,
        "peak_gflops": peak,
        "batch_size": data_args["batch_size"],
        "views_per_image": model_args.get("views_per_image"),
        "machine": machine_info(),
        "command": command.strip(),
    }
    rows = [
        {"path": name, "s": round(a["seconds_per_step"], 3), "gflop": round(a["step_gflop"], 1),
         "peak": round(a["fraction_of_peak"], 3), "setup": round(a["setup_seconds"], 1)}
        for name, a in arms.items()
    ]  # fmt: skip
    columns = [("path", "path"), ("s", "s / step"), ("gflop", "GFLOP / step"),
               ("peak", "fraction of peak"), ("setup", "setup s")]  # fmt: skip
    markdown = "\n".join([
        "# WorldComp2D encoder step: per-face crops against the decode-once path",
        "",
        f"Batch {data_args['batch_size']}, {model_args.get('views_per_image')} pair(s) per face, "
        f"{args.threads} thread(s), median of {args.steps} steps (data included); peak "
        f"{peak:.0f} GFLOP/s.",
        "",
        format_markdown_table(rows, columns),
        "",
        f"Speed-up: {speedup:.2f}x (target >= 2: {'met' if speedup >= 2 else 'NOT met'}).",
        "",
        f"Command: `{command.strip()}`",
        "",
    ])  # fmt: skip
    paths = write_results("face_data_path", result, markdown, RESULTS)
    print(markdown)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
