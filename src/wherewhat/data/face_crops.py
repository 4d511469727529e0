"""Face crops with their exact affine, mirror flips with landmark permutations, and a Dataset.

A crop is always described by the 3x3 matrix that maps *original* pixels to *crop* pixels
(see :mod:`wherewhat.geometry.affine`). Whatever a model predicts on the crop goes back to
original pixels with :func:`uncrop_points`, so metrics are computed where the annotations live.
Augmentations (scale, rotation, flip) only change that matrix, so image and points stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from wherewhat.data.faces import FaceRecord, read_face_image
from wherewhat.errors import ConfigError
from wherewhat.geometry import (
    apply_affine,
    hflip_affine,
    invert_affine,
    points_to_box,
    similarity_crop_affine,
    warp_affine,
)

__all__ = [
    "FLIP_PERMUTATION_68",
    "FLIP_PERMUTATION_98",
    "FLIP_PERMUTATION_29",
    "flip_permutation",
    "face_crop_affine",
    "warp_to_crop",
    "face_crop",
    "uncrop_points",
    "hflip_face",
    "FaceLandmarkDataset",
    "batch_images_and_points",
    "prediction_record",
]


# --------------------------------------------------------------------------------------------
# Mirror permutations. After a horizontal flip, the point that sits where landmark k belongs is
# the old landmark perm[k] (e.g. the old right-eye corner becomes the new left-eye corner).


def _mirror_permutation(
    num_points: int, segments: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> tuple[int, ...]:
    """Build a permutation from segments ``(indices, mirrored indices)``, checked to be complete."""
    perm = [-1] * num_points
    for source, mirrored in segments:
        for a, b in zip(source, mirrored, strict=True):
            if perm[a] not in (-1, b) or perm[b] not in (-1, a):
                raise AssertionError(f"landmark {a} or {b} paired twice")
            perm[a], perm[b] = b, a
    if -1 in perm:
        raise AssertionError(
            f"landmarks without a mirror: {[i for i, p in enumerate(perm) if p < 0]}"
        )
    return tuple(perm)


# 68 points (Multi-PIE / 300-W): jaw 0-16, brows 17-21 | 22-26, nose bridge 27-30, nostrils
# 31-35, eyes 36-41 | 42-47 (outer corner, two upper, inner corner, two lower), outer lip 48-59
# (corner 48, clockwise), inner lip 60-67 (corner 60, clockwise).
FLIP_PERMUTATION_68 = _mirror_permutation(
    68,
    [
        (range(0, 17), range(16, -1, -1)),
        (range(17, 22), range(26, 21, -1)),
        (range(27, 31), range(27, 31)),
        (range(31, 36), range(35, 30, -1)),
        ((36, 37, 38, 39, 40, 41), (45, 44, 43, 42, 47, 46)),
        (range(48, 55), range(54, 47, -1)),
        (range(55, 60), range(59, 54, -1)),
        (range(60, 65), range(64, 59, -1)),
        (range(65, 68), range(67, 64, -1)),
    ],
)

# 98 points (WFLW): contour 0-32, brows 33-41 | 42-50 (upper edge 33-37 outer->inner, lower
# edge 38-41 inner->outer; the other brow upper 42-46 inner->outer, lower 47-50 outer->inner),
# nose bridge 51-54, nostrils 55-59, eyes 60-67 | 68-75 (from the outer / inner corner,
# clockwise), outer lip 76-87, inner lip 88-95, pupils 96 | 97.
FLIP_PERMUTATION_98 = _mirror_permutation(
    98,
    [
        (range(0, 33), range(32, -1, -1)),
        (range(33, 38), range(46, 41, -1)),
        (range(38, 42), range(50, 46, -1)),
        (range(51, 55), range(51, 55)),
        (range(55, 60), range(59, 54, -1)),
        (range(60, 68), (72, 71, 70, 69, 68, 75, 74, 73)),
        (range(76, 83), range(82, 75, -1)),
        (range(83, 88), range(87, 82, -1)),
        (range(88, 93), range(92, 87, -1)),
        (range(93, 96), range(95, 92, -1)),
        ((96,), (97,)),
    ],
)

# 29 points (COFW, the LFPW subset of Burgos-Artizzu et al. 2013), pairs listed side by side:
# brow outer 0|1, brow inner 2|3, brow top 4|6, brow bottom 5|7, eye outer 8|9, eye inner
# 10|11, eye top 12|14, eye bottom 13|15, pupil 16|17, nose wing 18|19; on the midline: nose
# tip 20, below the nose 21; mouth corners 22|23; lips 24-27 and chin 28 on the midline.
FLIP_PERMUTATION_29 = _mirror_permutation(
    29,
    [
        ((0, 2, 4, 5, 8, 10, 12, 13, 16, 18, 22), (1, 3, 6, 7, 9, 11, 14, 15, 17, 19, 23)),
        ((20, 21, 24, 25, 26, 27, 28), (20, 21, 24, 25, 26, 27, 28)),
    ],
)

_FLIP_PERMUTATIONS = {68: FLIP_PERMUTATION_68, 98: FLIP_PERMUTATION_98, 29: FLIP_PERMUTATION_29}


def flip_permutation(num_points: int) -> tuple[int, ...]:
    """The mirror permutation of the 68-point (300-W), 98-point (WFLW) or 29-point (COFW) scheme."""
    try:
        return _FLIP_PERMUTATIONS[num_points]
    except KeyError:
        raise ConfigError(
            f"no mirror permutation known for {num_points} landmarks (known: 68, 98, 29); "
            "pass one explicitly"
        ) from None


# --------------------------------------------------------------------------------------------
# Crops


def face_crop_affine(
    points_or_box: Tensor,
    out_size: int,
    side_factor: float = 1.25,
    angle_deg: float = 0.0,
    box: Tensor | None = None,
) -> Tensor:
    """Original -> crop matrix ``(3, 3)`` float64 of a square face crop.

    The crop is centred on ``box`` if given, else on ``points_or_box`` (an XYXY box ``(4,)`` or
    landmarks ``(K, 2)``, whose tight box is used); its side is ``side_factor`` times the longer
    side of that box, rotated by ``angle_deg`` (content turns counter-clockwise on screen).
    """
    source = box if box is not None else points_or_box
    source = torch.as_tensor(source, dtype=torch.float64)
    if source.ndim == 2 and source.shape[-1] == 2 and source.shape[0] > 0:
        source = points_to_box(source)
    elif source.shape != (4,):
        raise ValueError(
            f"expected landmarks (K, 2) or an XYXY box (4,), got {tuple(source.shape)}"
        )
    if not torch.isfinite(source).all():
        raise ValueError(f"crop box {source.tolist()} is not finite")
    size = (source[2:] - source[:2]).max()
    if size <= 0:
        raise ValueError(f"crop box {source.tolist()} has no extent")
    center = (source[:2] + source[2:]) / 2
    return similarity_crop_affine(center, side_factor * size, out_size, angle_deg)


def warp_to_crop(image: Tensor, affine: Tensor, out_size: int, *, antialias: bool = True) -> Tensor:
    """Resample ``image`` ``(C, H, W)`` (uint8 or float) into the ``out_size`` crop of ``affine``.

    Returns ``(C, out_size, out_size)`` float32 (uint8 is scaled to [0, 1]); outside the image
    is 0. When the crop shrinks the face more than 2x, the image is first reduced with an
    antialiasing filter (and ``affine`` composed with that exact rescale), so small crops of
    large photos do not alias.
    """
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    affine = affine.to(torch.float64)
    scale = math.sqrt(abs(float(torch.linalg.det(affine[:2, :2]))))
    height, width = image.shape[-2:]
    batch = image.unsqueeze(0)
    if antialias and scale < 0.5:
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        batch = F.interpolate(
            batch, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        # interpolate(align_corners=False) maps continuous coordinates by exactly new/old.
        rescale = torch.diag(
            torch.tensor([new_w / width, new_h / height, 1.0], dtype=torch.float64)
        )
        affine = affine @ invert_affine(rescale)
    return warp_affine(batch, affine.unsqueeze(0), (out_size, out_size))[0]


def face_crop(
    image: Tensor,
    points_or_box: Tensor,
    out_size: int,
    side_factor: float = 1.25,
    angle_deg: float = 0.0,
    box: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Square face crop and its original -> crop matrix.

    Args:
        image: ``(C, H, W)`` uint8 or float image.
        points_or_box: landmarks ``(K, 2)`` or an XYXY box ``(4,)``; the crop is centred on its
            box (or on ``box`` when given), side = ``side_factor`` x the box's longer side.
        out_size: side of the square output, in pixels.
        angle_deg: rotation of the content (counter-clockwise on screen).

    Returns:
        ``crop`` ``(C, out_size, out_size)`` float32, and ``affine`` ``(3, 3)`` float32 mapping
        original pixels to crop pixels (``apply_affine(points, affine)``).
    """
    affine = face_crop_affine(points_or_box, out_size, side_factor, angle_deg, box)
    return warp_to_crop(image, affine, out_size), affine.float()


def uncrop_points(points: Tensor, affine: Tensor) -> Tensor:
    """Crop-frame points ``(..., K, 2)`` -> original pixels, given original -> crop ``(..., 3, 3)``.

    The inverse is taken in float64 so a float32 round trip stays within ~1e-5 px.
    """
    original = apply_affine(points.double(), invert_affine(affine.double()))
    return original.to(points.dtype)


def hflip_face(
    image: Tensor, points: Tensor, permutation: Sequence[int] | None = None
) -> tuple[Tensor, Tensor]:
    """Mirror ``image`` ``(C, H, W)`` and ``points`` ``(K, 2)`` left-right, relabelling the points.

    x -> W - x maps pixel centres onto pixel centres; ``permutation`` (default: the scheme's,
    from ``K``) swaps left and right landmarks so that index k keeps its meaning.
    """
    perm = flip_permutation(points.shape[-2]) if permutation is None else permutation
    width = image.shape[-1]
    flipped = apply_affine(points, hflip_affine(width, dtype=torch.float64))
    return image.flip(-1), flipped[..., list(perm), :]


# --------------------------------------------------------------------------------------------
# Dataset


class FaceLandmarkDataset(Dataset):
    """Square face crops with landmarks in the crop frame and the affine back to the original.

    Item ``i`` is a dict:
        ``image``  ``(3, S, S)`` float32 in [0, 1];
        ``points`` ``(K, 2)`` float32 landmarks in crop pixels;
        ``affine`` ``(3, 3)`` float32 original -> crop (``uncrop_points`` inverts it);
        ``index``  int64 scalar, ``i``; ``flipped`` bool scalar.

    The crop is centred on the landmark box (``crop_from="landmarks"``, the WorldComp2D
    protocol) or on the dataset's face box (``"box"``), side ``side_factor`` x its longer side.
    With ``augment=True`` each item also gets, through the affine only: a side scale in
    ``1 +- scale_jitter``, a centre shift of up to ``+-shift_jitter`` x the box's longer side
    per axis (a face detector's box is never placed exactly; default 0), with probability
    ``rotation_prob`` a rotation in ``+-max_rotation_deg``, and with probability ``flip_prob`` a
    mirror flip whose landmarks are relabelled by the scheme's permutation (so after a flip,
    ``points[k]`` is the original landmark ``perm[k]``; ``uncrop_points`` gives original pixels
    in that relabelled order).
    Draws depend only on ``(seed, epoch, i)``: call :meth:`set_epoch` for new draws each epoch.
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        out_size: int = 256,
        side_factor: float = 1.25,
        augment: bool = False,
        seed: int = 0,
        *,
        scale_jitter: float = 0.05,
        max_rotation_deg: float = 10.0,
        rotation_prob: float = 0.6,
        flip_prob: float = 0.5,
        permutation: Sequence[int] | None = None,
        crop_from: str = "landmarks",
        shift_jitter: float = 0.0,
    ):
        if not records:
            raise ConfigError("FaceLandmarkDataset needs at least one record")
        counts = {record.num_points for record in records}
        if len(counts) != 1:
            raise ConfigError(f"records mix landmark schemes with {sorted(counts)} points")
        if out_size < 1 or side_factor <= 0:
            raise ConfigError(
                f"need out_size >= 1 and side_factor > 0, got {out_size}, {side_factor}"
            )
        if not 0 <= scale_jitter < 1:
            raise ConfigError(f"scale_jitter must be in [0, 1), got {scale_jitter}")
        if not 0 <= shift_jitter < 1:
            raise ConfigError(f"shift_jitter must be in [0, 1), got {shift_jitter}")
        if crop_from not in ("landmarks", "box"):
            raise ConfigError(f"crop_from must be 'landmarks' or 'box', got {crop_from!r}")
        if crop_from == "box" and any(record.box is None for record in records):
            raise ConfigError("crop_from='box' but some records have no face box")
        self.num_points = counts.pop()
        self.permutation: tuple[int, ...] | None = None
        if augment and flip_prob > 0:
            self.permutation = (
                tuple(permutation) if permutation is not None else flip_permutation(self.num_points)
            )
            if sorted(self.permutation) != list(range(self.num_points)):
                raise ConfigError(f"permutation is not a permutation of 0..{self.num_points - 1}")
        self.records = list(records)
        self.out_size = out_size
        self.side_factor = side_factor
        self.augment = augment
        self.seed = seed
        self.scale_jitter = scale_jitter
        self.shift_jitter = shift_jitter
        self.max_rotation_deg = max_rotation_deg
        self.rotation_prob = rotation_prob
        self.flip_prob = flip_prob
        self.crop_from = crop_from
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (they are fixed per (seed, epoch, index))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _draw(self, index: int) -> tuple[float, float, bool, tuple[float, float]]:
        """(side scale, angle in degrees, flip, centre shift as fractions of the box's longer
        side) for this item; identity when not augmenting."""
        if not self.augment:
            return 1.0, 0.0, False, (0.0, 0.0)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        # Draw every value unconditionally so that changing one probability keeps the others;
        # later additions draw after the earlier ones, which keeps the earlier draws.
        scale = rng.uniform(1.0 - self.scale_jitter, 1.0 + self.scale_jitter)
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        rotate = rng.random() < self.rotation_prob
        flip = rng.random() < self.flip_prob
        shift = rng.uniform(-self.shift_jitter, self.shift_jitter, size=2)
        return float(scale), float(angle) if rotate else 0.0, bool(flip), (shift[0], shift[1])

    def crop_affine(self, index: int) -> tuple[Tensor, bool]:
        """Original -> crop ``(3, 3)`` float64 of item ``index`` with its augmentation (for the
        current epoch), and whether it is flipped."""
        record = self.records[index]
        scale, angle, flip, (dx, dy) = self._draw(index)
        source = record.points if self.crop_from == "landmarks" else record.box
        box = torch.as_tensor(source, dtype=torch.float64)
        box = points_to_box(box) if box.ndim == 2 else box
        side = (box[2:] - box[:2]).max()
        box = box + side * torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
        affine = face_crop_affine(box, self.out_size, self.side_factor * scale, angle)
        if flip:
            affine = hflip_affine(self.out_size, dtype=torch.float64) @ affine
        return affine, flip

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        record = self.records[index]
        affine, flip = self.crop_affine(index)
        image = warp_to_crop(read_face_image(record), affine, self.out_size)
        points = apply_affine(record.points.double(), affine)
        if flip:
            points = points[list(self.permutation)]
        return {
            "image": image,
            "points": points.float(),
            "affine": affine.float(),
            "index": torch.tensor(index, dtype=torch.int64),
            "flipped": torch.tensor(flip),
        }


def batch_images_and_points(batch: object, batch_idx: int) -> tuple[Tensor, Tensor]:
    """Images ``(B, C, S, S)`` and crop points ``(B, K, 2)`` of a collated
    :class:`FaceLandmarkDataset` batch; a clear error naming the batch otherwise.

    A fast-path batch (:class:`~wherewhat.data.face_batches.FaceCanvasItems`: ``canvas``,
    ``crop_from_canvas``, ``crop_size``) gets its augmented crops built here with one
    ``grid_sample`` (no photo is decoded), so models that need whole crops train on either path.
    """
    if isinstance(batch, dict) and "image" not in batch and "canvas" in batch:
        from wherewhat.data.face_batches import crops_from_canvas  # face_batches imports us

        size = int(batch["crop_size"].reshape(-1)[0])
        batch = {
            **batch,
            "image": crops_from_canvas(batch["canvas"], batch["crop_from_canvas"], size),
        }
    if not isinstance(batch, dict) or not {"image", "points"} <= set(batch):
        raise ValueError(f"batch {batch_idx}: expected a dict with 'image' and 'points'")
    images, points = batch["image"], batch["points"]
    if images.ndim != 4 or points.ndim != 3 or len(images) != len(points):
        raise ValueError(
            f"batch {batch_idx}: expected image (B, C, H, W) and points (B, K, 2), got "
            f"{tuple(images.shape)} and {tuple(points.shape)}"
        )
    return images, points


def prediction_record(crop_points: Tensor, batch: object) -> dict[str, Tensor]:
    """What a landmark task's ``predict_step`` returns for ``crop_points`` ``(B, K, 2)``
    predicted on ``batch`` (a :class:`FaceLandmarkDataset` batch, or bare crops):
    ``{"crop_points", "points" (original pixels, when the batch has "affine"), "index"}``."""
    out = {"crop_points": crop_points}
    if isinstance(batch, dict) and "affine" in batch:
        out["points"] = uncrop_points(crop_points, batch["affine"])
    if isinstance(batch, dict) and "index" in batch:
        out["index"] = batch["index"]
    return out
