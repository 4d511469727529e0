"""Tour section "worldcomp2d": a short run of the landmark benchmark
(:mod:`wherewhat.methods.worldcomp2d.experiment`) with its table and figures."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from PIL import Image

from wherewhat.methods.worldcomp2d.experiment import FIGURE_CAPTIONS, run_landmark_bench
from wherewhat.methods.worldcomp2d.settings import LandmarkBenchSettings
from wherewhat.report.html import Check, Section, format_value
from wherewhat.report.sections.data import AUTO_FACES_ROOT
from wherewhat.report.tour import TourContext, register_section


@register_section("worldcomp2d", order=40, title="WorldComp2D")
def worldcomp2d_section(ctx: TourContext) -> Section:
    section = Section("WorldComp2D")
    root = ctx.faces_root if ctx.faces_root is not None else AUTO_FACES_ROOT
    if not Path(root).is_dir():
        section.paragraph(
            f"No 68-point faces at {root} to train on (pass faces_root: a folder of images with "
            ".pts files, e.g. 300-W), so this page runs the shipped landmark model instead."
        )
        with ctx.step("shipped model on a photo"):
            shipped_model_on_photo(section)
        section.record(nme=None)
        return section
    settings = LandmarkBenchSettings.preset(
        "tour" if ctx.quick else "quick", faces_root=str(root), seed=ctx.seed
    )
    with ctx.step("train + evaluate"):
        result = run_landmark_bench(settings, log=ctx.log)
    split = result.split
    assert split is not None  # evaluated (not train_only)
    section.paragraph(
        "WorldComp2D (Jin & Jeong): a 3 x 3 grid of fixations on a 256 px face crop, each seen "
        "as a native 27 px view and a 109 px context view; an encoder trained only with a "
        "proximity-weighted contrastive loss (PWConLoss) turns each into a code, a localizer "
        "maps the 9 codes and their positions to 68 landmarks, and a refiner moves each by at "
        "most 1 px. "
        f"This {'tiny' if ctx.quick else 'quick'} run trains each stage for "
        f"{settings.max_steps} steps on {split.train_faces} faces and scores "
        f"{split.val_faces} validation faces: it shows the pipeline end to end, far from "
        "converged. The README's table comes from `benchmarks/worldcomp2d.py` (60 minutes of "
        "training per model, baselines alongside)."
    )
    rows = [
        {
            "model": name,
            "params (M)": m.costs.params / 1e6,
            "MMACs": m.costs.macs / 1e6,
            "NME %": 100 * m.accuracy.nme,
            "ORT faces/s (1 thread)": m.costs.ort_faces_per_s_1thread,
            "train min": m.train_minutes,
        }
        for name, m in result.models.items()
    ]
    section.table(rows, caption="Validation faces, batch-1 speed from a face crop")
    wc = result.models.get("worldcomp2d")
    if wc is not None:
        section.checks(
            landmark_checks(wc.accuracy.nme, wc.costs.ort_faces_per_s_1thread,
                            ctx.benchmark_result("worldcomp2d")),
            caption="This run against the benchmark (benchmarks/results/worldcomp2d.json) and "
            "its targets",
        )  # fmt: skip
        if wc.accuracy.auc10 == 0:
            section.flag(
                f"No validation face is under 10 % NME (AUC@10 = 0, NME "
                f"{100 * wc.accuracy.nme:.1f} %): this {settings.max_steps}-step run has not "
                "learnt landmarks yet, so its CED is flat at 0; the benchmark column is a "
                "trained model."
            )
    for name, png in result.figures.items():
        caption = FIGURE_CAPTIONS.get(name, name)
        if name == "embedding" and not settings.tsne:
            caption = caption.replace("(PCA, t-SNE)", "(PCA; t-SNE is left out of short runs)")
        section.figure(png, caption, name=f"worldcomp2d_{name}")
    section.record(
        nme=wc.accuracy.nme if wc else None,
        params=wc.costs.params if wc else None,
        macs=wc.costs.macs if wc else None,
        ort_faces_per_s_1thread=wc.costs.ort_faces_per_s_1thread if wc else None,
        bench_seconds=result.seconds,
    )
    return section


def sample_face_photo() -> Path:
    """A face photo that an installed dependency ships: matplotlib's sample Grace Hopper."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def shipped_model_on_photo(section: Section, photo: Path | None = None) -> None:
    """The shipped landmark model on ``photo`` (default: :func:`sample_face_photo`): faces
    found, time, and the photo with its landmarks; a paragraph says why when it cannot run."""
    from wherewhat.data.face_overlay import draw_landmarks
    from wherewhat.errors import UserError
    from wherewhat.landmarking.predictor import LandmarkPredictor

    photo = photo or sample_face_photo()
    try:
        import cv2  # noqa: F401  (the detector's package)

        detector = "opencv"
    except ImportError:
        detector = "whole"
    try:
        predictor = LandmarkPredictor.shipped(detector=detector, backend="onnx", threads=1)
    except UserError as error:
        section.paragraph(f"The shipped landmark model is not available: {error}")
        return
    began = time.perf_counter()
    faces = predictor(photo)
    seconds = time.perf_counter() - began
    section.paragraph(
        f"The shipped WorldComp2D model on {photo.name} ({'OpenCV face detector' if detector == 'opencv' else 'the whole photo as the face'}): "
        f"{len(faces)} face(s) in {1000 * seconds:.0f} ms (detector, crop and model, 1 thread). "
        "`wherewhat landmarks PHOTOS...` does the same for any photos."
    )
    with Image.open(photo) as image:
        drawn = draw_landmarks(image, [(f.points, f.box) for f in faces])
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    section.figure(buffer.getvalue(), f"{photo.name}: face box (blue) and 68 landmarks (red)",
                   name="worldcomp2d_shipped_photo")  # fmt: skip


def landmark_checks(
    nme: float, faces_per_s: float | None, benchmark: dict[str, Any] | None
) -> list[Check]:
    """NME beside the benchmark's (its accuracy target needs the benchmark's training), and
    the speed target, judged on this run (speed does not depend on training)."""
    models = (benchmark or {}).get("models", {})
    bench_wc = models.get("worldcomp2d", {})
    heatmap = models.get("heatmap_baseline", {})
    without_refiner = models.get("worldcomp2d_no_refiner", {}).get("ort_faces_per_s_1thread")
    ratio = None
    if bench_wc.get("nme") and heatmap.get("nme"):
        ratio = bench_wc["nme"] / heatmap["nme"]
    return [
        Check("NME (%), validation faces", 100 * nme,
              None if "nme" not in bench_wc else 100 * bench_wc["nme"],
              note="inter-ocular; the paper reports no 300-W number for WorldComp2D"),
        Check("NME, WorldComp2D / heatmap baseline", None, ratio, target=("<=", 1.10),
              judge_benchmark=True, note="equal training budget: benchmarks/worldcomp2d.py"),
        Check("ORT faces/s, 1 thread (with refiner)", faces_per_s,
              bench_wc.get("ort_faces_per_s_1thread"), target=(">=", 200.0),
              note="the refiner is 201 of 273 MMACs; without it the benchmark measured "
              f"{format_value(without_refiner)} faces/s"),
    ]  # fmt: skip
