"""Writing landmarks found on photos: iBUG ``.pts`` files, one JSON or CSV file, overlays.

Coordinates in JSON and CSV are in the project's frame: (0, 0) is the top-left corner of the
top-left pixel, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5). ``.pts`` files
use their format's 1-based pixel centres (:func:`~wherewhat.data.face_formats.write_pts`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wherewhat.data.face_formats import write_pts
from wherewhat.data.face_overlay import draw_landmarks
from wherewhat.errors import UserError
from wherewhat.io import write_atomic
from wherewhat.landmarking.predictor import Face

__all__ = [
    "PhotoResult",
    "pts_paths",
    "write_pts_files",
    "write_json",
    "write_csv",
    "write_overlay",
]

OUTPUT_FORMATS = ("pts", "json", "csv")


@dataclass
class PhotoResult:
    """The faces found on one photo; ``name`` is its path relative to the input folder."""

    path: Path
    name: str
    faces: list[Face]


def pts_paths(result: PhotoResult, folder: Path | None) -> list[Path]:
    """Where each face's ``.pts`` goes: beside the photo (``folder`` None) or under ``folder``,
    ``<stem>.pts`` for one face, ``<stem>_<k>.pts`` for several."""
    base = (
        result.path.with_suffix("")
        if folder is None
        else folder / Path(result.name).with_suffix("")
    )
    if len(result.faces) == 1:
        return [base.with_name(base.name + ".pts")]
    return [base.with_name(f"{base.name}_{k}.pts") for k in range(len(result.faces))]


def write_pts_files(result: PhotoResult, folder: Path | None, overwrite: bool) -> list[Path]:
    """One ``.pts`` per face; an existing file (e.g. a ground-truth annotation) is kept unless
    ``overwrite``."""
    paths = pts_paths(result, folder)
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(
            f"{existing[0]} exists (an annotation?) and is kept",
            hint="write elsewhere with --out DIR, or pass --overwrite",
        )
    for path, face in zip(paths, result.faces, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pts(path, torch.from_numpy(face.points))
    return paths


def _face_record(face: Face) -> dict:
    return {
        "box": [round(float(v), 2) for v in face.box],
        "score": round(float(face.score), 4),
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in face.points],
    }


def write_json(results: Sequence[PhotoResult], path: Path) -> None:
    document = {
        "frame": "pixels; (0, 0) is the top-left corner of the image; pixel centres at +0.5",
        "photos": [
            {"image": str(r.path), "faces": [_face_record(f) for f in r.faces]} for r in results
        ],
    }
    write_atomic(path, json.dumps(document, indent=1) + "\n")


def write_csv(results: Sequence[PhotoResult], path: Path) -> None:
    """One row per face: image, face, score, box, then x0, y0, ..., x67, y67; a photo without
    a face gets one row with an empty face."""
    points = max((len(f.points) for r in results for f in r.faces), default=68)
    header = ["image", "face", "score", "box_x1", "box_y1", "box_x2", "box_y2"]
    header += [f"{axis}{k}" for k in range(points) for axis in ("x", "y")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for result in results:
            if not result.faces:
                writer.writerow([str(result.path), "", "", "", "", "", ""])
            for k, face in enumerate(result.faces):
                values = [f"{float(v):.2f}" for v in face.box]
                values += [f"{float(v):.2f}" for v in face.points.reshape(-1)]
                writer.writerow([str(result.path), k, f"{face.score:.4f}", *values])


def write_overlay(result: PhotoResult, folder: Path, image: np.ndarray) -> Path:
    """``folder/<name>_landmarks.png``: the photo (its decoded ``(H, W, 3)`` pixels) with each
    face's box and points."""
    target = folder / f"{Path(result.name).with_suffix('')}_landmarks.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_landmarks(Image.fromarray(image), [(f.points, f.box) for f in result.faces])
    drawn.save(target)
    return target
