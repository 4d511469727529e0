"""Tour section "worldcomp2d": a short run of the landmark benchmark
(:mod:`wherewhat.methods.worldcomp2d.experiment`) with its table and figures."""

from __future__ import annotations

from pathlib import Path

from wherewhat.methods.worldcomp2d.experiment import (
    FIGURE_CAPTIONS,
    LandmarkBenchSettings,
    run_landmark_bench,
)
from wherewhat.report.html import Section
from wherewhat.report.tour import TourContext, register_section

# --------------------------------------------------------------------------------------------
# Tour section


@register_section("worldcomp2d", order=40, title="WorldComp2D")
def worldcomp2d_section(ctx: TourContext) -> Section:
    from wherewhat.report.sections.data import AUTO_FACES_ROOT

    section = Section("WorldComp2D")
    root = ctx.faces_root if ctx.faces_root is not None else AUTO_FACES_ROOT
    if not Path(root).is_dir():
        section.paragraph(
            f"WorldComp2D needs 68-point faces: none at {root}; pass faces_root (a folder of "
            "images with .pts files, e.g. 300-W)."
        )
        section.record(nme=None)
        return section
    settings = LandmarkBenchSettings.preset(
        "tour" if ctx.quick else "quick", faces_root=str(root), seed=ctx.seed
    )
    with ctx.step("train + evaluate"):
        result = run_landmark_bench(settings, log=ctx.log)
    split = result["split"]
    section.paragraph(
        "WorldComp2D (Jin & Jeong): a 3 x 3 grid of fixations on a 256 px face crop, each seen "
        "as a native 27 px view and a 109 px context view; an encoder trained only with a "
        "proximity-weighted contrastive loss (PWConLoss) turns each into a code, a localizer "
        "maps the 9 codes and their positions to 68 landmarks, and a refiner moves each by at "
        "most 1 px. "
        f"This {'tiny' if ctx.quick else 'quick'} run trains each stage for "
        f"{settings.max_steps} steps on {split['train_faces']} faces and scores "
        f"{split['val_faces']} validation faces: it shows the pipeline end to end, far from "
        "converged. The README's table comes from `benchmarks/landmarks.py` (60 minutes of "
        "training per model, baselines alongside)."
    )
    rows = [
        {
            "model": name,
            "params (M)": m["params"] / 1e6,
            "MMACs": m["macs"] / 1e6,
            "NME %": 100 * m["nme"],
            "ORT faces/s (1 thread)": m["ort_faces_per_s_1thread"],
            "train min": m["train_minutes"],
        }
        for name, m in result["models"].items()
    ]
    section.table(rows, caption="Validation faces, batch-1 speed from a face crop")
    for name, png in result["figures"].items():
        section.figure(png, FIGURE_CAPTIONS.get(name, name), name=f"worldcomp2d_{name}")
    wc = result["models"].get("worldcomp2d", {})
    section.record(
        nme=wc.get("nme"),
        params=wc.get("params"),
        macs=wc.get("macs"),
        ort_faces_per_s_1thread=wc.get("ort_faces_per_s_1thread"),
        bench_seconds=result["seconds"],
    )
    return section
