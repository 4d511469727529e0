"""Face-landmark datasets in their standard on-disk formats, as lists of :class:`FaceRecord`.

- :func:`load_pts_folder`: any folder tree of images with same-stem iBUG ``.pts`` files
  (300-W, AFW, HELEN, LFPW, iBUG, Menpo, and ``../shared/data/faces68``).
- :func:`load_wflw`: a WFLW annotation list (98 points, box, six attribute flags).
- :func:`load_cofw`: a COFW ``.mat`` file (29 points with occlusion flags, images inside),
  both the MATLAB v5 files and the v7.3 (HDF5) ones.

Every loader returns records sorted by name, with points in our pixel frame (pixel (i, j) has its
centre at (j + 0.5, i + 0.5)), and raises :class:`DataFormatError` naming the file (and line)
for anything it cannot read; nothing is skipped without being counted and logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from PIL import Image
from scipy.io import loadmat
from torch import Tensor

from wherewhat.data.face_formats import parse_decimal, read_pts
from wherewhat.errors import ConfigError, DataFormatError

__all__ = [
    "FaceRecord",
    "IMAGE_SUFFIXES",
    "WFLW_ATTRIBUTES",
    "load_pts_folder",
    "load_wflw",
    "load_cofw",
    "split_by_name",
    "read_face_image",
    "photo_group",
    "check_image_files",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make_up", "occlusion", "blur")
_WFLW_POINTS = 98
_LISTED = 10  # how many offending files an error message names before "... and N more"

OnMissing = Literal["error", "warn"]


@dataclass(eq=False)
class FaceRecord:
    """One annotated face.

    Attributes:
        image_path: the image file (for COFW: the ``.mat`` file; the pixels are in ``image``).
        points: ``(K, 2)`` float32 landmarks in our pixel frame.
        box: ``(4,)`` float32 XYXY face box shipped with the dataset, or ``None``.
        subset: where the face comes from, e.g. ``"afw"``, ``"list_98pt_rect_attr_test"``.
        name: unique, stable id (relative path without suffix, or file + index); sort key.
        group: faces cut from the same photo share a group; :func:`split_by_name` keeps a group
            on one side of the split.
        occluded: ``(K,)`` bool occlusion flags (COFW) or ``None``.
        attributes: WFLW flags (``WFLW_ATTRIBUTES`` -> bool) or ``None``.
        image: pixels held in memory, ``(H, W)`` or ``(H, W, 3)`` uint8 (COFW), else ``None``.
    """

    image_path: Path
    points: Tensor
    box: Tensor | None
    subset: str
    name: str
    group: str
    occluded: Tensor | None = None
    attributes: dict[str, bool] | None = None
    image: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


def _listing(paths: list, limit: int = _LISTED) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f", ... and {len(paths) - limit} more" if len(paths) > limit else "")


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ("error", "warn"):
        raise ConfigError(f"on_missing must be 'error' or 'warn', got {on_missing!r}")


def _report_missing(source: Path, problems: list[str], on_missing: OnMissing) -> None:
    """Raise (default) or log the unpaired / missing files, always with their count."""
    if not problems:
        return
    message = "; ".join(problems)
    if on_missing == "error":
        raise DataFormatError(source, message + " (pass on_missing='warn' to skip them)")
    logger.warning("%s: skipped: %s", source, message)


# --------------------------------------------------------------------------------------------
# iBUG .pts folders


_FACE_INDEX_SUFFIX = re.compile(r"_[0-9]{1,2}$")


def photo_group(name: str) -> str:
    """The photo a 300-W-style face file was cut from: ``afw/4538917191_3`` -> ``afw/4538917191``.

    300-W names one file per face as ``<photo>_<face index>``; AFW has up to 15 faces per
    photo. Only a 1-2 digit suffix counts as a face index, so LFPW's ``image_0001`` stays whole.
    """
    return _FACE_INDEX_SUFFIX.sub("", name)


def load_pts_folder(
    root: str | Path,
    expected_points: int | None = None,
    *,
    on_missing: OnMissing = "error",
) -> list[FaceRecord]:
    """Every image (``.jpg``/``.jpeg``/``.png``, any case) under ``root`` with its same-stem ``.pts``.

    The search is recursive, so the 300-W / AFW / HELEN / LFPW / iBUG layouts all work, as
    does ``faces68/{afw,helen_train}``. ``subset`` is the first folder below ``root``.

    Args:
        root: folder to search.
        expected_points: if given, every file must hold exactly this many points; otherwise all
            files must agree with each other.
        on_missing: a ``.pts`` without image or an image without ``.pts`` raises (``"error"``,
            default) or is skipped with a logged, counted warning (``"warn"``).

    Returns:
        records sorted by name (the path relative to ``root`` without suffix).
    """
    _check_on_missing(on_missing)
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "expected a folder of images with .pts files; not a folder")

    images: dict[Path, list[Path]] = {}
    annotations: dict[Path, list[Path]] = {}
    ignored: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != ".pts":
            ignored.append(path)
            continue
        target = annotations if suffix == ".pts" else images
        target.setdefault(path.with_suffix(""), []).append(path)

    if not images and not annotations:
        raise DataFormatError(
            root,
            "empty: found no images (.jpg/.jpeg/.png) and no .pts files (searched recursively)",
        )
    if ignored:
        logger.warning(
            "%s: ignored %d files that are neither images (%s) nor .pts: %s",
            root,
            len(ignored),
            "/".join(IMAGE_SUFFIXES),
            _listing(ignored),
        )
    ambiguous = [
        p for group in (*images.values(), *annotations.values()) if len(group) > 1 for p in group
    ]
    if ambiguous:
        raise DataFormatError(
            root,
            f"{len(ambiguous)} files share a stem with another file of the same kind, so "
            f"the image/.pts pairing is ambiguous: {_listing(ambiguous)}",
        )

    lonely_pts = sorted(annotations[k][0] for k in annotations.keys() - images.keys())
    lonely_images = sorted(images[k][0] for k in images.keys() - annotations.keys())
    problems = []
    if lonely_pts:
        problems.append(
            f"{len(lonely_pts)} .pts files have no image with the same stem "
            f"(.jpg/.jpeg/.png): {_listing(lonely_pts)}"
        )
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} images have no .pts file with the same stem: "
            f"{_listing(lonely_images)}"
        )
    _report_missing(root, problems, on_missing)

    paired = sorted(
        images.keys() & annotations.keys(), key=lambda k: k.relative_to(root).as_posix()
    )
    if not paired:
        raise DataFormatError(root, "found no image with a same-stem .pts file")

    records = []
    first: tuple[Path, int] | None = None
    for key in paired:
        pts_path = annotations[key][0]
        points = read_pts(pts_path)
        count = points.shape[0]
        if expected_points is not None and count != expected_points:
            raise DataFormatError(
                pts_path,
                f"expected {expected_points} points, found {count}",
                hint="fix or remove this file; or set data.init_args.expected_points to the "
                "folder's landmark count (null accepts any one scheme)",
            )
        if first is None:
            first = (pts_path, count)
        elif count != first[1]:
            raise DataFormatError(
                pts_path,
                f"has {count} points but {first[0]} has {first[1]}: a folder must use "
                "one landmark scheme (pass expected_points to say which)",
            )
        relative = key.relative_to(root)
        name = relative.as_posix()
        records.append(
            FaceRecord(
                image_path=images[key][0],
                points=points,
                box=None,
                subset=relative.parts[0] if len(relative.parts) > 1 else root.name,
                name=name,
                group=photo_group(name),
            )
        )
    return records


# --------------------------------------------------------------------------------------------
# WFLW


def load_wflw(
    annotation_file: str | Path,
    image_root: str | Path,
    *,
    on_missing: OnMissing = "error",
) -> list[FaceRecord]:
    """Read a WFLW annotation list, e.g. ``list_98pt_rect_attr_train.txt``.

    Each line: 196 numbers (98 x, y pairs), 4 box numbers ``x_min y_min x_max y_max``, 6 flags
    (pose, expression, illumination, make-up, occlusion, blur) and the image path relative to
    ``image_root`` (``WFLW_images``). Blank lines are ignored.

    Coordinate frame: WFLW gives 0-based pixel coordinates (the first pixel's centre is at
    (0, 0), the convention of the OpenCV/NumPy tooling its annotations are used with), so
    points *and* box corners get +0.5 to land in our frame, where that centre is (0.5, 0.5).
    The box corners are treated as positions in the same frame as the points, not as
    inclusive pixel indices.

    WFLW has several faces per photo: ``name`` is ``"<image path>@<line>"`` and ``group`` is the
    image path. Missing images raise (or, with ``on_missing="warn"``, are skipped and counted).
    """
    _check_on_missing(on_missing)
    annotation_file, image_root = Path(annotation_file), Path(image_root)
    try:
        text = annotation_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(annotation_file, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataFormatError(annotation_file, f"cannot read: {exc.strerror or exc}") from exc

    n_fields = 2 * _WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1
    records = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(maxsplit=n_fields - 1)
        if len(fields) != n_fields:
            raise DataFormatError(
                annotation_file,
                f"expected {n_fields} fields (196 landmark coordinates, 4 box "
                f"values, 6 attribute flags, image path), found {len(fields)}",
                line=line_no,
            )
        numbers = []
        for column, token in enumerate(fields[: 2 * _WFLW_POINTS + 4], start=1):
            value = parse_decimal(token)
            if value is None:
                raise DataFormatError(
                    annotation_file,
                    f"field {column}: expected a finite number, found {token!r}",
                    line=line_no,
                )
            numbers.append(value)
        flags = fields[2 * _WFLW_POINTS + 4 : -1]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataFormatError(
                annotation_file,
                f"expected six attribute flags 0/1, found {' '.join(flags)}",
                line=line_no,
            )
        values = torch.tensor(numbers, dtype=torch.float64) + 0.5
        box = values[2 * _WFLW_POINTS :]
        if not (box[2] > box[0] and box[3] > box[1]):
            raise DataFormatError(
                annotation_file,
                f"box {fields[196:200]} is empty: expected x_min < x_max and y_min < y_max",
                line=line_no,
            )
        relative = fields[-1]
        records.append(
            FaceRecord(
                image_path=image_root / relative,
                points=values[: 2 * _WFLW_POINTS].reshape(_WFLW_POINTS, 2).float(),
                box=box.float(),
                subset=annotation_file.stem,
                name=f"{relative}@{line_no}",
                group=relative,
                attributes={k: f == "1" for k, f in zip(WFLW_ATTRIBUTES, flags, strict=True)},
            )
        )
    if not records:
        raise DataFormatError(annotation_file, "empty: expected one WFLW annotation per line")

    missing = sorted({r.image_path for r in records if not r.image_path.is_file()})
    if missing:
        _report_missing(
            annotation_file,
            [f"{len(missing)} images listed here are not under {image_root}: {_listing(missing)}"],
            on_missing,
        )
        absent = set(missing)
        records = [r for r in records if r.image_path not in absent]
        if not records:
            raise DataFormatError(
                annotation_file, f"none of the listed images is under {image_root}"
            )
    return sorted(records, key=lambda r: r.name)


# --------------------------------------------------------------------------------------------
# COFW

_COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def _cofw_split(path: Path, keys) -> tuple[str, str, str]:
    for images_key, phis_key, boxes_key in _COFW_KEYS.values():
        if images_key in keys and phis_key in keys:
            return images_key, phis_key, boxes_key
    raise DataFormatError(
        path,
        "not a COFW file: expected the variables IsTr + phisTr (train) or IsT + phisT "
        f"(test), found {sorted(k for k in keys if not k.startswith(('__', '#')))}",
    )


def _read_cofw_hdf5(path: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """MATLAB v7.3: HDF5, arrays stored column-major (so transposed), cells as references."""
    with h5py.File(path, "r") as handle:
        images_key, phis_key, boxes_key = _cofw_split(path, set(handle.keys()))
        cell = handle[images_key]
        if (
            not isinstance(cell, h5py.Dataset)
            or h5py.check_dtype(ref=cell.dtype) is not h5py.Reference
        ):
            raise DataFormatError(path, f"{images_key}: expected a cell array of images")
        images = [np.asarray(handle[ref]).T for ref in np.asarray(cell).reshape(-1)]
        phis = np.asarray(handle[phis_key]).T
        boxes = np.asarray(handle[boxes_key]).T if boxes_key in handle else None
    return images, phis, boxes


def _read_cofw_v5(path: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    mat = loadmat(path)
    images_key, phis_key, boxes_key = _cofw_split(path, set(mat.keys()))
    cell = mat[images_key]
    if cell.dtype != object:
        raise DataFormatError(path, f"{images_key}: expected a cell array of images")
    images = [np.asarray(image) for image in cell.reshape(-1)]
    return images, np.asarray(mat[phis_key]), mat.get(boxes_key)


def _as_uint8_image(image: np.ndarray, path: Path, index: int) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or image.size == 0:
        raise DataFormatError(
            path, f"face {index}: expected an H x W or H x W x 3 image, found shape {image.shape}"
        )
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if (
        not np.issubdtype(image.dtype, np.number)
        or not np.isfinite(image).all()
        or (image.min() < 0 or image.max() > 255 or (image != np.round(image)).any())
    ):
        raise DataFormatError(
            path, f"face {index}: expected 8-bit pixel values, found {image.dtype}"
        )
    return np.ascontiguousarray(image.astype(np.uint8))


def load_cofw(mat_path: str | Path) -> list[FaceRecord]:
    """Read a COFW ``.mat`` file (``COFW_train*.mat`` or ``COFW_test*.mat``), images included.

    Train files hold ``IsTr`` (cell of images), ``phisTr`` (N x 87: 29 x, 29 y, 29 occlusion
    flags) and ``bboxesTr`` (N x 4: x, y, w, h); test files the same with ``IsT``, ``phisT``,
    ``bboxesT``. MATLAB v5 files are read with SciPy, v7.3 files (the colour ones) with h5py.

    Coordinate frame: COFW was annotated in MATLAB, whose pixel (1, 1) has its centre at (1, 1),
    the same 1-based convention as ``.pts``: points and the box's top-left corner get -0.5.
    Occlusion flags are kept in ``occluded``; the images (grey or RGB uint8) in ``image``.
    """
    path = Path(mat_path)
    if not path.is_file():
        raise DataFormatError(path, "cannot read: no such file (expected a COFW .mat file)")
    try:
        reader = _read_cofw_hdf5 if h5py.is_hdf5(path) else _read_cofw_v5
        images, phis, boxes = reader(path)
    except DataFormatError:
        raise
    except Exception as exc:  # scipy/h5py raise many types for a damaged file
        raise DataFormatError(path, f"cannot read as a MATLAB .mat file ({exc})") from exc

    phis = np.asarray(phis)
    if phis.ndim != 2 or phis.shape[1] % 3 or phis.shape[1] == 0:
        raise DataFormatError(
            path, f"expected phis of shape (N, 3K) (x, y, occlusion per point), found {phis.shape}"
        )
    count, n_points = phis.shape[0], phis.shape[1] // 3
    if len(images) != count:
        raise DataFormatError(path, f"{count} shapes in phis but {len(images)} images")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (count, 4):
            raise DataFormatError(
                path, f"expected bboxes of shape ({count}, 4), found {boxes.shape}"
            )
    if not np.isfinite(phis).all():
        bad = np.flatnonzero(~np.isfinite(phis).all(axis=1))
        raise DataFormatError(path, f"non-finite landmark values in faces {bad[:_LISTED].tolist()}")
    flags = phis[:, 2 * n_points :]
    if not np.isin(flags, (0, 1)).all():
        raise DataFormatError(path, "occlusion flags (last third of phis) must be 0 or 1")

    points = np.stack([phis[:, :n_points], phis[:, n_points : 2 * n_points]], axis=-1) - 0.5
    records = []
    for index in range(count):
        box = None
        if boxes is not None:
            x, y, w, h = boxes[index]
            if not (np.isfinite(boxes[index]).all() and w > 0 and h > 0):
                raise DataFormatError(
                    path,
                    f"face {index}: box {boxes[index].tolist()} is not a "
                    "finite box with positive width and height",
                )
            box = torch.tensor([x - 0.5, y - 0.5, x - 0.5 + w, y - 0.5 + h], dtype=torch.float32)
        name = f"{path.stem}#{index:05d}"
        records.append(
            FaceRecord(
                image_path=path,
                points=torch.from_numpy(points[index]).float(),
                box=box,
                subset=path.stem,
                name=name,
                group=name,
                occluded=torch.from_numpy(flags[index] == 1),
                image=_as_uint8_image(images[index], path, index),
            )
        )
    if not records:
        raise DataFormatError(path, "empty: the file holds no faces")
    return records


# --------------------------------------------------------------------------------------------
# Splits and pixels


def split_by_name(
    records: list[FaceRecord], val_fraction: float, seed: int
) -> tuple[list[FaceRecord], list[FaceRecord]]:
    """Deterministic train / validation split that depends only on names and ``seed``.

    Whole groups (faces of one photo, see :func:`photo_group`) go to one side, so no photo is
    in both. The groups are sorted, shuffled with ``seed`` and ``round(val_fraction * groups)``
    of them (at least one when ``val_fraction > 0``) form the validation side. The input order
    does not matter; both lists come back sorted by name.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = sorted({record.group for record in records})
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and n_val == 0 and len(groups) > 1:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    ordered = sorted(records, key=lambda r: r.name)
    train = [r for r in ordered if r.group not in val_groups]
    val = [r for r in ordered if r.group in val_groups]
    return train, val


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image, judged cheaply (header, and for JPEG the end marker),
    or ``None``. Decoding the pixels is left to the loader."""
    try:
        with Image.open(path) as image:
            image.verify()  # PNG: every chunk's checksum; JPEG, others: the header
            kind = image.format
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, ... on bad files
        return f"not a readable image ({type(exc).__name__}: {exc})"
    if kind == "JPEG":
        size = path.stat().st_size
        with path.open("rb") as handle:  # a JPEG ends with the EOI marker FF D9
            handle.seek(max(0, size - 4096))
            if b"\xff\xd9" not in handle.read():
                return "a JPEG without its end marker (FF D9): the file is cut short"
    return None


def check_image_files(records: list[FaceRecord], source: str | Path) -> None:
    """Raise :class:`DataFormatError` naming every image of ``records`` whose header does not
    parse or that is cut short (cheap: no pixels decoded); in-memory images are skipped. Run at
    start-up, so a bad file stops the run before any loader worker starts."""
    bad = []
    for record in records:
        if record.image is None:
            problem = _image_problem(Path(record.image_path))
            if problem is not None:
                bad.append((record.image_path, problem))
    if not bad:
        return
    first_path, first_problem = bad[0]
    others = (
        "" if len(bad) == 1 else f" ({len(bad) - 1} more bad: {_listing([p for p, _ in bad[1:]])})"
    )
    raise DataFormatError(
        first_path,
        f"{first_problem}{others}",
        hint=f"replace or remove the bad images (and their .pts files) in {source}",
    )


def read_face_image(record: FaceRecord) -> Tensor:
    """The record's pixels as a ``(3, H, W)`` uint8 RGB tensor (grey is replicated).

    Files are decoded with PIL as stored (no EXIF rotation: the annotations refer to the stored
    pixels). An unreadable, truncated or corrupt file raises :class:`DataFormatError`.
    """
    if record.image is not None:
        array = record.image
    else:
        try:
            with Image.open(record.image_path) as image:
                array = np.asarray(image.convert("RGB"))
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, ... on bad files
            raise DataFormatError(record.image_path, f"cannot decode the image ({exc})") from exc
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    # torch.tensor copies: PIL's arrays are read-only and in-memory images must stay untouched.
    return torch.tensor(array).permute(2, 0, 1).contiguous()
