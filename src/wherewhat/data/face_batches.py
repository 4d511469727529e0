"""Fast face training data: decode once, fold the augmentation into one sampling grid per batch.

The per-face path (:class:`~wherewhat.data.face_crops.FaceLandmarkDataset`) decodes a photo and
warps a full ``S x S`` crop for every face and step, only for the model to cut a few 27 x 27
views from it. Here:

1. :class:`FaceCanvasCache` decodes every photo ONCE and keeps, per face, a uint8 *canvas*: the
   face's nominal (unaugmented) crop at crop resolution with a margin around it, all faces in one
   ``(N, C, M, M)`` array (``M = S + 2 * margin``; the margin covers the augmented crops: scale
   up to +5 % and rotation up to 10 deg need ``M >= 1.22 S``). The canvas is warped like the
   per-face crop (same antialiasing for shrunk faces), so it is the crop the per-face path would
   make, only larger.
2. :class:`FaceCanvasItems` draws each face's augmentation exactly as ``FaceLandmarkDataset``
   does (same ``(seed, epoch, index)`` draws: scale, rotation, flip) but returns only matrices:
   ``affine`` (original -> augmented crop, as the per-face path) and ``crop_from_canvas``
   (canvas px -> augmented crop px), the landmarks in the augmented crop and the face's canvas.
3. :func:`sample_crop_views` cuts all views of a batch (the encoder's native + context views,
   the localizer's fixations) with ONE ``grid_sample`` on the canvases, through the composed
   matrices: the ``S x S`` crop is never built. It reproduces the per-face path's padding: the
   model samples its *normalised* crop with zeros outside it, so a sample point outside the
   crop reads the mean colour, and within half a pixel of the crop's edge it blends the edge
   pixel with that zero. :func:`crops_from_canvas` builds the augmented crops themselves (one
   ``grid_sample``) for models that need a whole crop (the refiner, the baselines).

Equivalence (tested): when ``crop_from_canvas`` maps pixel centres to pixel centres (integer
shift, optionally mirrored) the views equal the per-face path's (crop, then views) to float
precision. With rotation or scale the per-face path interpolates twice (canvas -> crop ->
view) and this path once, so they differ by the second interpolation's blur only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from wherewhat.data.face_crops import FaceLandmarkDataset, face_crop_affine, warp_to_crop
from wherewhat.data.faces import FaceRecord, read_face_image
from wherewhat.geometry import apply_affine, invert_affine, pixel_to_normalized
from wherewhat.geometry.affine import warp_affine

__all__ = [
    "default_margin",
    "FaceCanvasCache",
    "FaceCanvasItems",
    "sample_crop_views",
    "crops_from_canvas",
    "canvas_batch",
]


def default_margin(
    crop_size: int,
    scale_jitter: float = 0.05,
    max_rotation_deg: float = 10.0,
    shift_jitter: float = 0.0,
    side_factor: float = 1.25,
) -> int:
    """Canvas margin (px per side) that holds every augmented crop of side ``crop_size``
    (a shift moves the crop by up to ``shift_jitter`` x the box side, ``crop_size /
    side_factor``, per axis)."""
    angle = math.radians(abs(max_rotation_deg))
    half = 0.5 * crop_size * (1.0 + scale_jitter) * (math.cos(angle) + math.sin(angle))
    shift = shift_jitter * crop_size / side_factor
    return max(0, math.ceil(half + shift - crop_size / 2.0) + 1)


def _shift(dx: float, dy: float) -> Tensor:
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[0, 2], matrix[1, 2] = dx, dy
    return matrix


class FaceCanvasCache:
    """Every face's nominal crop with a margin, decoded once: ``canvases`` ``(N, C, M, M)`` uint8.

    Attributes:
        canvases: uint8 canvases; canvas pixel (x, y) = nominal crop pixel (x - margin,
            y - margin).
        canvas_affines: ``(N, 3, 3)`` float64, original px -> canvas px.
        crop_size, margin, side_factor, crop_from: the geometry.
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        crop_size: int = 256,
        side_factor: float = 1.25,
        crop_from: str = "landmarks",
        margin: int | None = None,
    ):
        self.crop_size = crop_size
        self.side_factor = side_factor
        self.crop_from = crop_from
        self.margin = default_margin(crop_size) if margin is None else int(margin)
        size = crop_size + 2 * self.margin
        self.canvas_size = size
        canvases, affines = [], []
        for record in records:
            source = record.points if crop_from == "landmarks" else record.box
            nominal = face_crop_affine(source, crop_size, side_factor)
            affine = _shift(self.margin, self.margin) @ nominal
            # Same linear part as the nominal crop: the same antialiasing as the per-face path.
            canvas = warp_to_crop(read_face_image(record), affine, size)
            canvases.append((canvas * 255.0).round().clamp(0, 255).to(torch.uint8))
            affines.append(affine)
        self.canvases = torch.stack(canvases)
        self.canvas_affines = torch.stack(affines)

    def __len__(self) -> int:
        return len(self.canvases)

    @property
    def nbytes(self) -> int:
        return self.canvases.numel()


class FaceCanvasItems(Dataset):
    """Augmentation matrices + canvas per face; keys ``i`` or ``(i, epoch)``.

    Draws are :class:`FaceLandmarkDataset`'s (``faces``' settings and seed), so the same key
    gives the same geometry as the per-face path. Item: ``canvas`` ``(C, M, M)`` uint8,
    ``crop_from_canvas`` ``(3, 3)`` float32, ``affine`` ``(3, 3)`` float32 original -> crop,
    ``points`` ``(K, 2)`` crop px (relabelled after a flip), ``original_points`` ``(K, 2)``,
    ``index``, ``flipped``, ``crop_size`` (S, so that
    :func:`~wherewhat.data.face_crops.batch_images_and_points` can build the crops for models
    that need whole crops, e.g. the baselines).
    """

    def __init__(self, faces: FaceLandmarkDataset, cache: FaceCanvasCache):
        if len(cache) != len(faces):
            raise ValueError(f"cache has {len(cache)} faces, dataset {len(faces)}")
        if cache.crop_size != faces.out_size:
            raise ValueError(f"cache crop {cache.crop_size} != dataset crop {faces.out_size}")
        self.faces = faces
        self.cache = cache

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def records(self) -> list[FaceRecord]:
        return self.faces.records

    def geometry(self, index: int, epoch: int | None = None) -> tuple[Tensor, Tensor, bool]:
        """(original -> crop, canvas -> crop, flipped) of face ``index`` (float64 matrices)."""
        faces = self.faces
        if epoch is not None:
            faces.set_epoch(epoch)
        affine, flip = faces.crop_affine(index)
        crop_from_canvas = affine @ invert_affine(self.cache.canvas_affines[index])
        return affine, crop_from_canvas, flip

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        affine, crop_from_canvas, flip = self.geometry(index, epoch)
        record = self.faces.records[index]
        points = apply_affine(record.points.double(), affine)
        original = record.points
        if flip:
            perm = list(self.faces.permutation)
            points, original = points[perm], original[perm]
        return {
            "canvas": self.cache.canvases[index],
            "crop_from_canvas": crop_from_canvas.float(),
            "affine": affine.float(),
            "points": points.float(),
            "original_points": original.float(),
            "index": torch.tensor(index, dtype=torch.int64),
            "flipped": torch.tensor(flip),
            "crop_size": torch.tensor(self.faces.out_size, dtype=torch.int64),
        }


def canvas_batch(batch: object) -> tuple[Tensor, Tensor] | None:
    """``(canvas, crop_from_canvas)`` of a :class:`FaceCanvasItems` batch, else ``None``."""
    if isinstance(batch, dict) and "canvas" in batch and "crop_from_canvas" in batch:
        return batch["canvas"], batch["crop_from_canvas"]
    return None


def _as_float(canvas: Tensor) -> Tensor:
    return canvas.float().div_(255.0) if canvas.dtype == torch.uint8 else canvas.float()


def _view_offsets(sides: Sequence[float], n: int, dtype, device) -> Tensor:
    steps = (torch.arange(n, dtype=dtype, device=device) + 0.5) / n - 0.5
    side = torch.stack([steps * float(s) for s in sides])[:, None, :]
    return torch.stack([side.expand(-1, n, n), side.transpose(1, 2).expand(-1, n, n)], dim=-1)


def sample_crop_views(
    canvas: Tensor,
    crop_from_canvas: Tensor,
    centres: Tensor,
    sides: Sequence[float],
    out_size: int,
    crop_size: int,
    mean: Tensor,
    std: Tensor,
) -> Tensor:
    """Views of the *normalised augmented crops*, sampled from the canvases in one call.

    Args:
        canvas: ``(B, C, M, M)`` uint8 (or float in [0, 1]) canvases.
        crop_from_canvas: ``(B, 3, 3)`` canvas px -> augmented crop px.
        centres: ``(B, N, 2)`` view centres in crop px.
        sides, out_size: view sides (crop px) and samples per side, as
            :func:`~wherewhat.methods.worldcomp2d.parts.extract_views`.
        crop_size: S; samples outside the ``S x S`` crop read 0 (the normalised mean), as the
            per-face path's zero padding of the normalised crop.
        mean, std: the model's input normalisation, broadcastable to ``(1, C, 1, 1)``.
    Returns:
        ``(B, N, V * C, n, n)`` as ``model.observe(model.normalize(crop), centres)``.
    """
    image = _as_float(canvas)
    batch, channels, height, width = image.shape
    num_points, num_views = centres.shape[1], len(sides)
    dtype = image.dtype
    offsets = _view_offsets(sides, out_size, dtype, image.device)
    points = centres.to(dtype)[:, :, None, None, None, :] + offsets  # (B, N, V, n, n, 2) crop px
    # Zero padding of the normalised crop, emulated: clamp to the outer pixel centres and
    # scale by the bilinear weight the edge pixel gets against the zero outside.
    low, high = 0.5, crop_size - 0.5
    weight = ((points + 0.5).clamp(0, 1) * (crop_size + 0.5 - points).clamp(0, 1)).prod(-1)
    clamped = points.clamp(low, high)
    to_canvas = invert_affine(crop_from_canvas.double()).to(dtype)  # (B, 3, 3)
    flat = clamped.reshape(batch, -1, 2)
    in_canvas = flat @ to_canvas[:, :2, :2].transpose(1, 2) + to_canvas[:, None, :2, 2]
    grid = pixel_to_normalized(in_canvas, (height, width)).reshape(
        batch, num_points * num_views * out_size, out_size, 2
    )
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = (sampled - mean.reshape(1, -1, 1, 1).to(dtype)) / std.reshape(1, -1, 1, 1).to(dtype)
    sampled = sampled.reshape(batch, channels, num_points, num_views, out_size, out_size)
    sampled = sampled * weight[:, None]
    return sampled.permute(0, 2, 3, 1, 4, 5).reshape(
        batch, num_points, num_views * channels, out_size, out_size
    )


def crops_from_canvas(canvas: Tensor, crop_from_canvas: Tensor, crop_size: int) -> Tensor:
    """The augmented crops ``(B, C, S, S)`` in [0, 1] (one ``grid_sample``), for models that need
    the whole crop."""
    image = _as_float(canvas)
    return warp_affine(image, crop_from_canvas.to(image.dtype), (crop_size, crop_size))
