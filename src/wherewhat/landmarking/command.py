"""``wherewhat landmarks PATH...``: landmarks for every face on a set of photos.

Photos are the files given and every image under the folders given (recursively). Faces come
from ``--faces``: ``opencv`` (the bundled cascade, the default), ``whole`` (each photo is one
face crop), ``pts`` (the tight box of a same-stem ``.pts`` file: ground-truth boxes) or a
``--boxes FILE`` (lines ``<image path relative to the folder> x1 y1 x2 y2``, landmark boxes).
Results: ``.pts`` files beside the photos or under ``--out DIR``, or one ``--format json|csv``
file at ``--out``; ``--overlay DIR`` draws them. A summary line ends the run: photos, faces,
photos without a face, and faces per second (crop + model, decode excluded).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wherewhat.data.face_formats import read_pts
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.landmarking.images import IMAGE_SUFFIXES, rgb_array
from wherewhat.landmarking.outputs import (
    OUTPUT_FORMATS,
    PhotoResult,
    write_csv,
    write_json,
    write_overlay,
    write_pts_files,
)
from wherewhat.landmarking.predictor import LandmarkPredictor

__all__ = ["LandmarkRun", "photos_under", "run_landmarks", "FACE_SOURCES"]

FACE_SOURCES = ("opencv", "whole", "pts")


def photos_under(paths: list[str]) -> list[tuple[Path, str]]:
    """``(photo, name)`` for every photo given or found under a folder given (sorted); ``name``
    is the path relative to its folder (the file name for photos given directly)."""
    photos: list[tuple[Path, str]] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataFormatError(path, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            photos += [(p, p.relative_to(path).as_posix()) for p in found]
        elif path.is_file():
            photos.append((path, path.name))
        else:
            raise DataFormatError(path, "no such file or folder")
    return photos


def _given_boxes(boxes_file: str, paths: list[str]) -> dict[Path, np.ndarray]:
    from wherewhat.data.face_predict import read_boxes_file

    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if len(folders) != 1 or len(paths) != 1:
        raise ConfigError("--boxes FILE goes with one folder PATH (its lines are relative to it)")
    boxes: dict[Path, list[np.ndarray]] = {}
    for face in read_boxes_file(boxes_file, folders[0]):
        boxes.setdefault(face.image_path.resolve(), []).append(face.box.numpy())
    return {path: np.stack(found) for path, found in boxes.items()}


def _pts_box(photo: Path) -> np.ndarray | None:
    pts = photo.with_suffix(".pts")
    if not pts.is_file():
        return None
    points = read_pts(pts)
    return torch.cat([points.min(0).values, points.max(0).values]).numpy()[None]


@dataclass
class LandmarkRun:
    results: list[PhotoResult] = field(default_factory=list)
    seconds_landmarks: float = 0.0  # crop + model, over all faces
    seconds_total: float = 0.0
    written: list[Path] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return sum(len(r.faces) for r in self.results)

    @property
    def without_face(self) -> list[PhotoResult]:
        return [r for r in self.results if not r.faces]

    def summary(self) -> str:
        rate = self.faces / self.seconds_landmarks if self.seconds_landmarks > 0 else float("nan")
        text = (
            f"{len(self.results)} photos, {self.faces} faces, {len(self.without_face)} photos "
            f"without a face; {rate:.0f} faces/s (detector, crops and model; decode excluded), "
            f"{self.seconds_total:.1f} s in all"
        )
        if self.without_face:
            names = ", ".join(r.name for r in self.without_face[:5])
            text += f"\nwithout a face: {names}" + (" ..." if len(self.without_face) > 5 else "")
        return text


def run_landmarks(
    paths: list[str],
    predictor: LandmarkPredictor,
    faces: str = "opencv",
    boxes_file: str | None = None,
    output_format: str = "pts",
    out: str | None = None,
    overlay: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> LandmarkRun:
    """Run the predictor on every photo of ``paths`` and write the results (module docstring)."""
    if faces not in FACE_SOURCES:
        raise ConfigError(f"--faces {faces!r}: expected one of {FACE_SOURCES}")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--format {output_format!r}: expected one of {OUTPUT_FORMATS}")
    if output_format != "pts" and out is None:
        raise ConfigError(f"--format {output_format} needs --out FILE")
    start = time.perf_counter()
    photos = photos_under(paths)
    given = _given_boxes(boxes_file, paths) if boxes_file else None
    run = LandmarkRun()
    for photo, name in _progress(photos, progress):
        image = rgb_array(photo)
        began = time.perf_counter()
        if given is not None:
            boxes = given.get(photo.resolve())
            found = [] if boxes is None else predictor(image, boxes=boxes, box_kind="landmarks")
        elif faces == "pts":
            box = _pts_box(photo)
            found = [] if box is None else predictor(image, boxes=box, box_kind="landmarks")
        else:
            found = predictor(image)
        run.seconds_landmarks += time.perf_counter() - began
        result = PhotoResult(photo, name, found)
        run.results.append(result)
        if output_format == "pts" and found:
            run.written += write_pts_files(result, None if out is None else Path(out), overwrite)
        if overlay is not None:
            run.written.append(write_overlay(result, Path(overlay), image))
    if output_format == "json":
        write_json(run.results, Path(out))
        run.written.append(Path(out))
    elif output_format == "csv":
        write_csv(run.results, Path(out))
        run.written.append(Path(out))
    run.seconds_total = time.perf_counter() - start
    return run


def _progress(photos: list[tuple[Path, str]], show: bool) -> Any:
    if not show or not sys.stderr.isatty():
        return photos
    from rich.progress import track

    return track(photos, description="landmarks", transient=True, console=None)
