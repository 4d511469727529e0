"""Landmarks for a folder of photos: a prediction data module and a writer callback.

``wherewhat predict --config configs/worldcomp2d/predict.yaml --ckpt_path RUN/checkpoints/last.ckpt``
reads every image under ``data.root`` with its face box(es), crops each face as in training
(square, ``side_factor`` x the box's longer side, centred on the box, resized to
``crop_size``), runs the checkpoint's model (any task whose ``predict_step`` returns ``points``
in original pixels: WorldComp2D and both baselines) and :class:`LandmarkPredictionWriter`
writes, per face, an iBUG ``.pts`` file in the photo's own pixel frame and, per photo, a PNG
with the box and the landmarks drawn on it.

Where the boxes come from (:func:`find_faces`):

- ``boxes_file``: a text file, one face per line: ``<image path relative to root> x1 y1 x2 y2``
  (XYXY in the photo's pixels, our frame: (0, 0) is the top-left corner of the top-left pixel);
  ``#`` starts a comment line; a photo may have several lines (faces);
- otherwise: every image with a same-stem ``.pts`` file; the face box is the tight box of those
  landmarks, which is how the models' training crops were cut (``crop_from: landmarks``).
  With a face detector's box instead, pass it in a boxes file and consider ``side_factor``:
  detector boxes are usually larger than landmark boxes.

Batches (default collate): ``image`` ``(B, 3, S, S)`` in [0, 1], ``affine`` ``(B, 3, 3)``
original -> crop, ``box`` ``(B, 4)``, ``index`` ``(B,)``, ``face`` ``(B,)`` (which face of its
photo), ``faces_in_image`` ``(B,)``, and lists ``image_path`` and ``name`` (photo path relative
to ``root`` without suffix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.data.face_crops import face_crop_affine, warp_to_crop
from wherewhat.data.face_formats import parse_decimal, write_pts
from wherewhat.data.face_overlay import draw_landmarks
from wherewhat.data.faces import FaceRecord, load_pts_folder
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.geometry import points_to_box

__all__ = [
    "FaceToPredict",
    "find_faces",
    "read_boxes_file",
    "FacePredictDataset",
    "FacePredictDataModule",
    "LandmarkPredictionWriter",
    "draw_landmarks",
]


@dataclass(frozen=True)
class FaceToPredict:
    """One face to find landmarks on.

    Attributes:
        image_path: the photo.
        name: the photo's path relative to the root, without suffix (``afw/1234_1``).
        box: ``(4,)`` float32 XYXY face box in the photo's pixels.
        face: index of this face among the photo's faces; faces_in_image: how many it has.
    """

    image_path: Path
    name: str
    box: Tensor
    face: int
    faces_in_image: int


def _check_box(box: Tensor, where: Path, line: int | None = None) -> None:
    if not (torch.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]):
        raise DataFormatError(
            where,
            f"box {box.tolist()} is not a finite XYXY box with x1 < x2 and y1 < y2",
            line=line,
        )


def read_boxes_file(path: str | Path, root: str | Path) -> list[FaceToPredict]:
    """Faces listed in a boxes file (see the module docstring), in file order."""
    path, root = Path(path), Path(root)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(path, f"cannot read the boxes file ({error})") from error
    entries: list[tuple[Path, str, Tensor]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(maxsplit=4)
        values = [parse_decimal(token) for token in fields[1:]]
        if len(fields) != 5 or any(value is None for value in values):
            raise DataFormatError(
                path, f"expected '<image path> x1 y1 x2 y2', found {line!r}", line=number
            )
        box = torch.tensor(values, dtype=torch.float32)
        _check_box(box, path, number)
        image = root / fields[0]
        if not image.is_file():
            raise DataFormatError(path, f"image {image} not found", line=number)
        entries.append((image, Path(fields[0]).with_suffix("").as_posix(), box))
    if not entries:
        raise DataFormatError(path, "no faces listed (expected lines '<image> x1 y1 x2 y2')")
    counts: dict[Path, int] = {}
    for image, _, _ in entries:
        counts[image] = counts.get(image, 0) + 1
    seen: dict[Path, int] = {}
    faces = []
    for image, name, box in entries:
        face = seen.get(image, 0)
        seen[image] = face + 1
        faces.append(FaceToPredict(image, name, box, face, counts[image]))
    return faces


def find_faces(
    root: str | Path,
    boxes_file: str | Path | None = None,
    on_missing: Literal["error", "warn"] = "error",
) -> list[FaceToPredict]:
    """The faces to predict under ``root``: from ``boxes_file`` or from same-stem ``.pts`` files.

    Without a boxes file an image with no ``.pts`` raises (``on_missing="warn"``: it is skipped,
    counted and logged), as in :func:`~wherewhat.data.faces.load_pts_folder`.
    """
    root = Path(root)
    if boxes_file is not None:
        return read_boxes_file(boxes_file, root)
    records: list[FaceRecord] = load_pts_folder(root, on_missing=on_missing)
    faces = []
    for record in records:
        box = points_to_box(record.points.double()).float()
        _check_box(box, record.image_path.with_suffix(".pts"))
        faces.append(FaceToPredict(record.image_path, record.name, box, 0, 1))
    return faces


class FacePredictDataset(Dataset):
    """Face crops of :class:`FaceToPredict` entries (items: see the module docstring)."""

    def __init__(
        self, faces: Sequence[FaceToPredict], crop_size: int = 256, side_factor: float = 1.25
    ):
        if not faces:
            raise ConfigError("FacePredictDataset needs at least one face")
        self.faces = list(faces)
        self.crop_size = crop_size
        self.side_factor = side_factor

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict[str, Any]:
        face = self.faces[index]
        affine = face_crop_affine(face.box, self.crop_size, self.side_factor)
        try:
            with Image.open(face.image_path) as image:
                pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        except Exception as error:  # PIL raises OSError, ValueError, ... on bad files
            raise DataFormatError(face.image_path, f"cannot decode the image ({error})") from error
        return {
            "image": warp_to_crop(pixels, affine, self.crop_size),
            "affine": affine.float(),
            "box": face.box,
            "index": torch.tensor(index),
            "face": torch.tensor(face.face),
            "faces_in_image": torch.tensor(face.faces_in_image),
            "image_path": str(face.image_path),
            "name": face.name,
        }


class FacePredictDataModule(pl.LightningDataModule):
    """Photos under ``root`` with face boxes, for ``wherewhat predict``.

    Args:
        root: folder of photos (searched recursively).
        boxes_file: optional boxes file (see the module docstring); default: ``.pts`` files.
        crop_size, side_factor: the crops; must match the model's training crops.
        batch_size, num_workers: the loader.
        on_missing: ``.pts`` mode only: ``"error"`` (default) or ``"warn"`` for photos without
            a ``.pts`` file.
    """

    def __init__(
        self,
        root: str,
        boxes_file: str | None = None,
        crop_size: int = 256,
        side_factor: float = 1.25,
        batch_size: int = 16,
        num_workers: int = 0,
        on_missing: Literal["error", "warn"] = "error",
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.root = root
        self.boxes_file = boxes_file
        self.crop_size = crop_size
        self.side_factor = side_factor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_missing = on_missing
        self.dataset: FacePredictDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            faces = find_faces(self.root, self.boxes_file, self.on_missing)
            self.dataset = FacePredictDataset(faces, self.crop_size, self.side_factor)

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        return DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )


class LandmarkPredictionWriter(BasePredictionWriter):
    """Writes ``<name>.pts`` per face (``<name>_<face>.pts`` for photos with several faces)
    and ``<name>_landmarks.png`` per photo, under ``output_dir``.

    Args:
        output_dir: where to write (sub-folders mirror the photos'); default
            ``<trainer.default_root_dir>/predictions``, i.e. the run directory's.
        overlays: also write the PNG overlays.
        overwrite: replace existing files; by default an existing file raises (so an
            ``output_dir`` that holds the input annotations is never overwritten).

    Needs ``predict_step`` outputs with ``points`` ``(B, K, 2)`` in original pixels and the
    batches of :class:`FacePredictDataModule`. A photo's overlay is written once all its faces
    have been predicted (one process; with several, each writes the faces it saw).
    """

    def __init__(
        self, output_dir: str | None = None, overlays: bool = True, overwrite: bool = False
    ):
        super().__init__(write_interval="batch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.overlays = overlays
        self.overwrite = overwrite
        self.written_pts: list[Path] = []
        self.written_overlays: list[Path] = []
        # photo -> (name, [(face, points, box)]) until all its faces have been predicted
        self._pending: dict[str, tuple[str, list[tuple[int, Tensor, Tensor]]]] = {}

    def _directory(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predictions"
        return self.output_dir

    def _target(self, path: Path) -> Path:
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists; choose a new output_dir or set overwrite: true")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, dict) or "points" not in prediction:
            raise ValueError(
                f"{type(pl_module).__name__}.predict_step must return a dict with 'points' "
                "(B, K, 2) in original pixels (batches need 'affine')"
            )
        needed = {"name", "image_path", "face", "faces_in_image", "box"}
        if not isinstance(batch, dict) or not needed <= set(batch):
            raise ValueError(f"expected FacePredictDataModule batches with keys {sorted(needed)}")
        directory = self._directory(trainer)
        points = prediction["points"].detach().float().cpu()
        for i, name in enumerate(batch["name"]):
            face, count = int(batch["face"][i]), int(batch["faces_in_image"][i])
            stem = name if count == 1 else f"{name}_{face}"
            target = self._target(directory / f"{stem}.pts")
            write_pts(target, points[i])
            self.written_pts.append(target)
            if self.overlays:
                self._collect(directory, batch["image_path"][i], name, face, count,
                              points[i], batch["box"][i].cpu())  # fmt: skip

    def _collect(
        self, directory: Path, image_path: str, name: str, face: int, count: int,
        points: Tensor, box: Tensor,
    ) -> None:  # fmt: skip
        _, faces = self._pending.setdefault(image_path, (name, []))
        faces.append((face, points, box))
        if len(faces) == count:
            del self._pending[image_path]
            self._write_overlay(directory, image_path, name, faces)

    def _write_overlay(
        self, directory: Path, image_path: str, name: str, faces: list[tuple[int, Tensor, Tensor]]
    ) -> None:
        target = self._target(directory / f"{name}_landmarks.png")
        with Image.open(image_path) as image:
            overlay = draw_landmarks(
                image, [(p, b) for _, p, b in sorted(faces, key=lambda f: f[0])]
            )
        overlay.save(target)
        self.written_overlays.append(target)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:  # photos whose other faces went to another process
            names = ", ".join(name for name, _ in list(self._pending.values())[:5])
            rank_zero_warn(f"overlays drawn with only some of their faces: {names}")
            for image_path, (name, faces) in list(self._pending.items()):
                self._write_overlay(self._directory(trainer), image_path, name, faces)
            self._pending.clear()
        rank_zero_info(
            f"wherewhat: wrote {len(self.written_pts)} .pts files and "
            f"{len(self.written_overlays)} overlays to {self.output_dir}"
        )
