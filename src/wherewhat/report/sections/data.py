"""Tour section "data": what the methods train on, with the geometry drawn on top.

Scattered-MNIST test scenes with their boxes and labels, the split's statistics, and 68-point
faces with their landmarks when a faces folder is given or found at ``../shared/data/faces68``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wherewhat.data.faces import load_pts_folder, read_face_image
from wherewhat.data.scatter import ScatterConfig, load_or_generate
from wherewhat.report.figures import bar_chart, faces_with_landmarks, scene_grid
from wherewhat.report.html import Section
from wherewhat.report.tour import TourContext, register_section

# Where the project's shared real data sits relative to a checkout (the tour's working folder).
AUTO_FACES_ROOT = Path("../shared/data/faces68")
QUICK_TEST_SCENES = 200
SHOWN_SCENES = 8
SHOWN_FACES = 8


@register_section("data", order=10, title="Data")
def data_section(ctx: TourContext) -> Section:
    section = Section("Data")
    _scatter_part(ctx, section)
    _faces_part(ctx, section)
    return section


def _scatter_part(ctx: TourContext, section: Section) -> None:
    # Scene i depends only on (seed, split, i), so the quick tour's scenes are the first ones of
    # the default test split: a smaller count changes how many, never which.
    config = ScatterConfig()
    if ctx.quick:
        config = config.replace(n_test=QUICK_TEST_SCENES)
    with ctx.step("scatter scenes"):
        scenes = load_or_generate(config, "test")
    height, width = config.image_size
    section.paragraph(
        f"Scattered MNIST (test split, {len(scenes):,} scenes of the default configuration): "
        f"{height}x{width} grey scenes with {config.min_digits}-{config.max_digits} real MNIST "
        f"digits of {config.min_digit_size}-{config.max_digit_size} px, placed on a grid "
        f"picked from {[f'{r}x{c}' for r, c in config.grid_sizes]}. Test scenes use only the "
        "test pool of digits. Boxes are tight around each digit's ink, so they are smaller than "
        "the digit's side (MNIST digits carry a blank margin)."
    )

    shown = list(range(min(SHOWN_SCENES, len(scenes))))
    fig = scene_grid(
        [scenes.images[i] for i in shown],
        [scenes.boxes[i] for i in shown],
        [scenes.labels[i] for i in shown],
        ncols=4,
        titles=[f"test scene {i}" for i in shown],
    )
    section.figure(fig, "Test scenes with their boxes and digit labels.", name="scatter_scenes")

    per_scene = np.diff(scenes.offsets)
    boxes = np.asarray(scenes.boxes_flat, dtype=np.float64)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    labels = np.asarray(scenes.labels_flat)

    def stats(name: str, values: np.ndarray, unit: str) -> dict:
        return {
            "quantity": name,
            "unit": unit,
            "min": values.min(),
            "median": float(np.median(values)),
            "mean": values.mean(),
            "max": values.max(),
        }

    section.table(
        [
            stats("digits per scene", per_scene, "count"),
            stats("box side (longer)", sides, "px"),
            stats("box area / image area", boxes_area(boxes) / (height * width), "fraction"),
        ],
        caption=f"Statistics over {len(scenes):,} test scenes ({len(labels):,} digits)",
    )
    counts = np.bincount(labels, minlength=10)
    section.table(
        [[str(c), int(counts[c]), 100.0 * counts[c] / max(1, len(labels))] for c in range(10)],
        columns=["class", "digits", "% of digits"],
        caption="Digits per class",
    )
    histogram = np.bincount(per_scene, minlength=config.max_digits + 1)
    section.figure(
        bar_chart(
            {str(k): int(histogram[k]) for k in range(config.min_digits, len(histogram))},
            title="Digits per scene",
            xlabel="digits in the scene",
            ylabel="scenes",
        ),
        "How many digits a test scene holds.",
        name="digits_per_scene",
    )
    section.record(
        scatter_test_scenes=len(scenes),
        scatter_digits=len(labels),
        digits_per_scene_mean=float(per_scene.mean()),
        box_side_median_px=float(np.median(sides)),
    )


def boxes_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``(n, 4)`` XYXY boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _faces_part(ctx: TourContext, section: Section) -> None:
    if ctx.faces_root is not None:
        root, how = Path(ctx.faces_root), "given with --faces-root"
    elif AUTO_FACES_ROOT.is_dir():
        root, how = AUTO_FACES_ROOT, f"found automatically at {AUTO_FACES_ROOT}"
    else:
        section.paragraph(
            "Faces: no faces folder was given and none was found at "
            f"{AUTO_FACES_ROOT} (relative to {Path.cwd()}); pass faces_root (a folder of "
            "images with 68-point .pts files, e.g. 300-W) to see faces with their landmarks."
        )
        section.record(faces=0, faces_root=None)
        return

    with ctx.step("faces"):
        records = load_pts_folder(root)
    resolved = root.resolve()
    subsets: dict[str, int] = {}
    for record in records:
        subsets[record.subset] = subsets.get(record.subset, 0) + 1
    section.paragraph(
        f"Faces: {len(records):,} annotated faces from {resolved} ({how}), "
        f"{records[0].num_points} landmarks each, drawn in green at their positions in our "
        "pixel frame."
    )
    rng = np.random.default_rng(ctx.seed)
    picked = sorted(rng.choice(len(records), size=min(SHOWN_FACES, len(records)), replace=False))
    images = [read_face_image(records[i]) for i in picked]
    fig = faces_with_landmarks(
        images,
        [records[i].points for i in picked],
        ncols=4,
        titles=[records[i].name for i in picked],
        panel_in=1.7,  # photos compress poorly: keep the embedded PNG a few hundred kB
    )
    section.figure(fig, "Random faces with their annotated landmarks.", name="faces")

    rows = [{"subset": name, "faces": count} for name, count in sorted(subsets.items())]
    sizes = sorted({f"{im.shape[2]}x{im.shape[1]}" for im in images})
    if records[0].num_points == 68:
        # Outer eye corners (points 36 and 45) are the usual NME normaliser.
        iod = [float((r.points[45] - r.points[36]).norm()) for r in records]
        section.facts(
            {
                "image sizes (shown faces)": ", ".join(sizes),
                "inter-ocular distance, median (px)": float(np.median(iod)),
            }
        )
    section.table(rows, caption="Faces per subset")
    section.record(faces=len(records), faces_root=str(resolved))
