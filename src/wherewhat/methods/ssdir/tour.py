"""Tour section "ssdir": a short SSDIR run (:mod:`wherewhat.methods.ssdir.experiment`) with its
tables and figures."""

from __future__ import annotations

from typing import Any

from wherewhat.methods.ssdir.experiment import run_ssdir_bench
from wherewhat.methods.ssdir.markdown import floor_rows, summary_rows
from wherewhat.methods.ssdir.records import Headline
from wherewhat.methods.ssdir.settings import SSDIRBenchSettings
from wherewhat.report.html import Check, Section, benchmark_targets
from wherewhat.report.tour import TourContext, register_section

FIGURE_CAPTIONS = {
    "reconstructions": "Test scenes: input, SSDIR's reconstruction, and the inferred objects "
    "(red, presence probability) over the ground truth (dashed green).",
    "glimpses": "Rendered objects: the input cut to the object's box (upper) above the decoded "
    "glimpse (lower), titled with the matched digit (? = no digit at IoU >= 0.5) and presence.",
    "tsne": "2-D t-SNE of test objects' z_what, coloured by the digit each object matched "
    "(grey: unmatched). Separated colours mean z_what holds the digit's identity.",
}
# Per-arm object counts shown under the results.
OBJECT_COLUMNS = (
    "variant", "test_objects", "test_matched", "test_unmatched", "test_gt", "test_gt_missed",
    "test_duplicates", "detector_label_accuracy", "rendered_per_scene",
)  # fmt: skip


@register_section("ssdir", order=30, title="SSDIR")
def ssdir_section(ctx: TourContext) -> Section:
    section = Section("SSDIR")
    settings = SSDIRBenchSettings.preset("quick" if ctx.quick else "medium")
    with ctx.step("train + evaluate"):
        result = run_ssdir_bench(settings=settings, log=ctx.log)
    s = result.settings
    section.paragraph(
        "SSDIR (Zielinski & Kajdanowicz): an object-centric VAE on a frozen SSD detector. "
        f"{'Quick' if s.quick else 'Medium'} run: {s.n_train} train / {s.n_test} test "
        f"scenes, detector {s.detector_max_steps} steps, SSDIR {s.ssdir_max_steps} steps "
        f"(batch {s.batch_size}), arm(s) {', '.join(s.variants)}, seed "
        f"{s.seeds[0]}. This shows the pipeline end to end; the numbers are far from "
        "converged: the README's table comes from `benchmarks/ssdir.py` (full run)."
    )
    section.table([*summary_rows(result), *floor_rows(result)], caption="Results (test scenes)")
    rows = [arm.to_json() for arm in result.arms]
    section.table(
        [{k: row.get(k) for k in OBJECT_COLUMNS} for row in rows],
        caption=f"Objects above presence {result.arms[0].metrics['present_threshold']} on the "
        f"test scenes, matched to a digit at IoU >= {s.min_iou}",
    )
    section.checks(
        ssdir_checks(result.headline, ctx.benchmark_result("ssdir")),
        caption="This run against the benchmark (benchmarks/results/ssdir.json), the paper "
        "and the targets",
    )
    for name, png in result.figures.items():
        kind = name.rsplit("-", 1)[-1]
        variant = name.rsplit("-", 1)[0].replace("_", "-")
        section.figure(png, f"{variant} arm. {FIGURE_CAPTIONS.get(kind, '')}", name=name)
    headline = result.headline
    section.record(
        ap50_class_agnostic=headline.ap50_class_agnostic,
        probe_accuracy_class_agnostic=headline.probe_accuracy_class_agnostic,
        probe_accuracy_per_class=headline.probe_accuracy_per_class,
        recon_mse_per_class=headline.recon_mse_per_class,
        recon_mse=headline.recon_mse,
        scenes_per_s_batch32=headline.scenes_per_s_batch32,
        train_minutes_one_seed=headline.train_minutes_one_seed,
        bench_seconds=result.seconds,
    )
    return section


# Published (Zielinski & Kajdanowicz, multi-scale MNIST): z_what probe and reconstruction MSE.
PAPER = {"probe_accuracy_per_class": 0.9789, "recon_mse_per_class": 0.0121}


def ssdir_checks(headline: Headline, benchmark: dict[str, Any] | None) -> list[Check]:
    """Accuracy targets judged on the benchmark (a short run cannot reach them; its values are
    shown beside), the speed target on this run."""
    bench = benchmark or {}
    targets = benchmark_targets(bench)
    accuracy = (
        ("ap50_class_agnostic", "AP50, class-agnostic detector", ">=", 0.95),
        ("probe_accuracy_per_class", "z_what probe, faithful arm (per-class detector)", ">=", 0.97),
        ("probe_accuracy_class_agnostic", "z_what probe, best label-free arm", ">=", 0.93),
        ("recon_mse_per_class", "reconstruction MSE, faithful arm", "<=", 0.0121),
        ("recon_mse", "reconstruction MSE, best label-free arm", "<=", 0.0121),
    )
    checks = [
        Check(label, getattr(headline, key), bench.get(key), PAPER.get(key),
              targets.get(key, (op, bound)), judge_benchmark=True)
        for key, label, op, bound in accuracy
    ]  # fmt: skip
    checks.append(
        Check("scenes/s, batch 32", headline.scenes_per_s_batch32,
              bench.get("scenes_per_s_batch32"),
              target=targets.get("scenes_per_s_batch32", (">=", 100.0)))
    )  # fmt: skip
    return checks
