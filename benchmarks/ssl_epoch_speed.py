"""How fast one self-supervised epoch runs: per-image views (before) against batched views.

SimCLR and SimCLR + SP (lambda 0.5) on the CIFAR-10 arrays, the Spatial Prediction benchmark's
settings (ResNet-18 CIFAR stem, width 8, 10,000 images, batch 256, 1 torch thread), in one run:

* ``per_image``: views drawn one image at a time in one loader worker, weights NCHW (the loop
  before the batched path);
* ``batched_worker``: one batched view call per batch in one loader worker, channels-last;
* ``batched_inline``: the same in the training process itself, no worker (the setting of the
  paired runs, where the other core trains the other arm);
* ``batched_inline_bf16``: the same with bf16 mixed precision (autocast; the losses stay
  float32), which this CPU's AMX / AVX-512 BF16 units run faster.

Each variant trains ``--epochs`` epochs (2: the first also starts workers and warms caches) and
the last epoch's wall and CPU seconds are kept. Step FLOPs are counted on one batch
(FlopCounterMode: convolutions and matmuls only), so ``fraction_of_peak`` is the step's
counted FLOPs per second over the measured 1-thread matmul peak.

    .venv/bin/python benchmarks/ssl_epoch_speed.py            # ~6 min on a quiet machine
    .venv/bin/python benchmarks/ssl_epoch_speed.py --quick    # 1,280 images, seconds

Writes benchmarks/results/ssl_epoch_speed[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.machine import machine_info, peak_matmul_gflops
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.bench.tables import format_markdown_table, write_results
from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.methods.spatial_prediction.arms import build_task
from wherewhat.methods.spatial_prediction.settings import BenchSettings
from wherewhat.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz"

# name -> (views drawn per batch, loader workers, channels-last weights, precision)
VARIANTS = {
    "per_image": (False, 1, False, "32-true"),
    "batched_worker": (True, 1, True, "32-true"),
    "batched_inline": (True, 0, True, "32-true"),
    "batched_inline_bf16": (True, 0, True, "bf16-mixed"),
}


def time_variant(
    method: str, sp_lambda: float, variant: str, s: BenchSettings, epochs: int
) -> dict[str, float | str]:
    """Train ``epochs`` epochs of one arm with one loop variant; the last epoch's timing."""
    batched, workers, channels_last, precision = VARIANTS[variant]
    seed_everything(0, verbose=False)
    task = build_task(method, sp_lambda, s, knn_every_n_epochs=0, channels_last=channels_last)
    data = SelfSupervisedDataModule(
        npz_path=s.cifar_npz, batch_size=s.batch_size, train_limit=s.train_images,
        num_workers=workers, seed=0, batch_transform=batched,
    )  # fmt: skip
    record = fit(task, data, max_epochs=epochs, precision=precision)
    last = task.history[-1]
    steps = record.steps // epochs
    # Count one step's FLOPs on a batch of the same loop (after training: same shapes).
    views, _ = next(iter(data.train_dataloader()))
    flops = training_step_flops(task, views, step=lambda b: task.model.loss(b)["loss"])
    return {
        "arm": method if sp_lambda == 0 else f"{method}_sp",
        "variant": variant,
        "epoch_seconds": last["seconds"],
        "epoch_cpu_seconds": last["cpu_seconds"],
        "steps_per_epoch": steps,
        "step_seconds": last["seconds"] / steps,
        "step_gflop": flops / 1e9,
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,280 images, 1 epoch")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per variant (2)")
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    # The settings of the loop before batched views: 10,000 images, float32 unless the variant
    # says otherwise.
    settings = BenchSettings.preset(
        "full", cifar_npz=str(args.cifar), train_images=10000, precision="32-true"
    )
    epochs = args.epochs or 2
    if args.quick:
        settings = BenchSettings.preset("full", cifar_npz=str(args.cifar), train_images=1280)
        epochs = args.epochs or 1
    start = time.perf_counter()
    rows = []
    with torch_num_threads(1):
        peaks = {
            "32-true": peak_matmul_gflops(1),
            "bf16-mixed": peak_matmul_gflops(1, dtype=torch.bfloat16),
        }
        for method, sp_lambda in (("simclr", 0.0), ("simclr", settings.sp_lambda)):
            for variant in VARIANTS:
                row = time_variant(method, sp_lambda, variant, settings, epochs)
                peak = peaks[row["precision"]]
                row["fraction_of_peak"] = row["step_gflop"] / row["step_seconds"] / peak
                print(
                    f"{row['arm']:>10} {variant:>15}: {row['epoch_seconds']:.1f} s/epoch, "
                    f"{row['step_gflop']:.1f} GFLOP/step, {row['fraction_of_peak']:.0%} of peak",
                    flush=True,
                )
                rows.append(row)
    for row in rows:
        before = next(r for r in rows if r["arm"] == row["arm"] and r["variant"] == "per_image")
        row["speedup_vs_per_image"] = before["epoch_seconds"] / row["epoch_seconds"]
    by = {(r["arm"], r["variant"]): r for r in rows}
    result = {
        "quick": args.quick,
        "epochs_per_variant": epochs,
        "train_images": settings.train_images,
        "batch_size": settings.batch_size,
        "backbone_width": settings.task_args["backbone_width"],
        "torch_threads": 1,
        "peak_gflops_1_thread": peaks,
        "rows": rows,
        "simclr_epoch_speedup": by[("simclr", "batched_inline")]["speedup_vs_per_image"],
        "simclr_epoch_speedup_bf16": by[("simclr", "batched_inline_bf16")]["speedup_vs_per_image"],
        "sp_time_overhead": {
            variant: by[("simclr_sp", variant)]["epoch_seconds"]
            / by[("simclr", variant)]["epoch_seconds"]
            - 1
            for variant in VARIANTS
        },
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
    }
    columns = [
        ("arm", "arm"), ("variant", "loop"), ("precision", "precision"),
        ("epoch_seconds", "s / epoch"),
        ("epoch_cpu_seconds", "CPU s / epoch (trainer)"), ("step_seconds", "s / step"),
        ("step_gflop", "GFLOP / step"), ("fraction_of_peak", "of 1-thread peak"),
        ("speedup_vs_per_image", "speed-up"),
    ]  # fmt: skip
    markdown = "\n".join(
        [
            "# One self-supervised epoch: per-image views vs batched views",
            "",
            f"{settings.train_images:,} CIFAR-10 images, batch {settings.batch_size}, ResNet-18 "
            f"(CIFAR stem) width {settings.task_args['backbone_width']}, 1 torch thread; the last "
            f"of {epochs} epoch(s) per variant. Peak (1 thread, matmul): "
            f"{peaks['32-true']:.0f} GFLOP/s float32, {peaks['bf16-mixed']:.0f} bfloat16; each "
            "row's fraction is of the peak of its precision. CPU s counts the training process "
            "only (not its loader worker).",
            "",
            format_markdown_table(rows, columns),
            "",
            f"SimCLR epoch speed-up over per-image views: batched, in-process "
            f"{result['simclr_epoch_speedup']:.2f}x (float32), "
            f"{result['simclr_epoch_speedup_bf16']:.2f}x (bf16 mixed). SP time overhead per "
            "epoch: "
            + ", ".join(f"{v} {o:.0%}" for v, o in result["sp_time_overhead"].items())
            + f". Run time {result['seconds'] / 60:.1f} min.",
        ]
    )
    name = "ssl_epoch_speed_quick" if args.quick else "ssl_epoch_speed"
    write_results(name, result, markdown, args.results_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
