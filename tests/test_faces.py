"""Face data: the .pts format, folder / WFLW / COFW loaders, splits, crops, flips, the Dataset."""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wherewhat.data.face_crops import (
    FLIP_PERMUTATION_29,
    FLIP_PERMUTATION_68,
    FLIP_PERMUTATION_98,
    FaceLandmarkDataset,
    face_crop,
    face_crop_affine,
    hflip_face,
    uncrop_points,
)
from wherewhat.data.face_formats import parse_pts, read_pts, write_pts
from wherewhat.data.faces import (
    WFLW_ATTRIBUTES,
    FaceRecord,
    load_cofw,
    load_pts_folder,
    load_wflw,
    read_face_image,
    split_by_name,
)
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.geometry import apply_affine, pixel_to_normalized, points_to_box

FACES68 = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces68"


@lru_cache(maxsize=1)
def _faces68() -> tuple[FaceRecord, ...]:
    if not FACES68.is_dir():
        pytest.skip(f"real faces not found at {FACES68}")
    return tuple(load_pts_folder(FACES68, expected_points=68))


def _valid_pts_text(points: np.ndarray) -> str:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n"


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``image`` (C, H, W) at pixel-frame ``points`` (K, 2) -> (C, K)."""
    grid = pixel_to_normalized(points.float(), image.shape[-2:]).view(1, 1, -1, 2)
    out = F.grid_sample(image[None].float(), grid, mode="bilinear", align_corners=False)
    return out[0, :, 0]


# --------------------------------------------------------------------------------------------
# .pts format


def test_shared_faces68_all_parse_inside_their_images():
    records = _faces68()
    assert len(records) == 1207
    assert {r.subset for r in records} == {"afw", "helen_train"}
    assert sum(r.subset == "afw" for r in records) == 337
    assert [r.name for r in records] == sorted(r.name for r in records)
    for record in records:
        assert record.points.shape == (68, 2) and record.points.dtype == torch.float32
        with Image.open(record.image_path) as image:
            width, height = image.size
        assert (width, height) == (320, 320)
        assert (record.points >= 0).all() and (record.points[:, 0] <= width).all()
        assert (record.points[:, 1] <= height).all()


def test_pts_offset_and_round_trip(tmp_path):
    path = tmp_path / "one.pts"
    path.write_text("version: 1\nn_points: 2\n{\n1 1\n320.5 10.25\n}\n")
    assert torch.equal(read_pts(path), torch.tensor([[0.5, 0.5], [320.0, 9.75]]))
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(-50, 2000, size=(98, 2))).float()
    write_pts(tmp_path / "rt.pts", points)
    assert (tmp_path / "rt.pts").read_text().startswith("version: 1\nn_points: 98\n{\n")
    assert torch.allclose(read_pts(tmp_path / "rt.pts"), points, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        write_pts(tmp_path / "bad.pts", torch.tensor([[1.0, float("nan")]]))


def test_pts_tolerates_what_the_format_allows(tmp_path):
    text = (
        "\ufeff// exported by a tool\r\nversion:1\r\n\r\nn_points:\t2\r\n{\r\n"
        "  1.5\t2e1 \r\n-3 .5\r\n}\r\n\r\n# trailing comment\r\n"
    )
    path = tmp_path / "ok.pts"
    path.write_bytes(text.encode("utf-8"))
    assert torch.allclose(read_pts(path), torch.tensor([[1.0, 19.5], [-3.5, 0.0]]))


MALFORMED = [
    ("", None, "empty"),
    ("version: 2\nn_points: 1\n{\n1 1\n}\n", 1, "version: 1"),
    ("n_points: 1\n{\n1 1\n}\n", 1, "version"),
    ("version: 1\nn_points: x\n{\n1 1\n}\n", 2, "positive integer"),
    ("version: 1\nn_points: 0\n{\n}\n", 2, "positive integer"),
    ("version: 1\nn_points: 2\n1 1\n2 2\n}\n", 3, "'{'"),
    ("version: 1\nn_points: 3\n{\n1 1\n2 2\n}\n", 6, "after 2 points"),
    ("version: 1\nn_points: 1\n{\n1 1\n2 2\n}\n", 5, "'}'"),
    ("version: 1\nn_points: 2\n{\n1 1\n2 two\n}\n", 5, "not a finite"),
    ("version: 1\nn_points: 2\n{\n1 1\n2 nan\n}\n", 5, "not a finite"),
    ("version: 1\nn_points: 1\n{\n1 1e999\n}\n", 4, "not a finite"),
    ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", 4, "3 fields"),
    ("version: 1\nn_points: 2\n{\n1 1\n\n2 2\n}\n", 5, "a blank line"),
    ("version: 1\nn_points: 2\n{\n1 1\n2 2\n", 5, "found end of file"),
    ("version: 1\nn_points: 2\n{\n1 1\n", 4, "ends after 1"),
    ("version: 1\nn_points: 1\n{\n1 1\n}\nextra\n", 6, "after the closing"),
    ("version: 1\nn_points: 1\n{\n1_0 1\n}\n", 4, "not a finite"),
]


@pytest.mark.parametrize(("text", "line", "phrase"), MALFORMED)
def test_pts_malformations_name_file_line_and_expectation(tmp_path, text, line, phrase):
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(DataFormatError) as info:
        read_pts(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}:" if line else f"{path}:")
    assert phrase in str(info.value)


def test_pts_bad_encoding_and_unreadable(tmp_path):
    path = tmp_path / "latin.pts"
    path.write_bytes(b"version: 1\nn_points: 1\n{\n1 \xe9\n}\n")
    with pytest.raises(DataFormatError, match=r"latin\.pts:4: not a text file"):
        read_pts(path)
    with pytest.raises(DataFormatError, match="cannot read"):
        read_pts(tmp_path / "absent.pts")
    with pytest.raises(DataFormatError, match="cannot read"):
        read_pts(tmp_path)


_VALID = _valid_pts_text(np.random.default_rng(1).uniform(0, 300, size=(5, 2))).encode()
_GARBAGE = st.sampled_from(
    [
        "nan",
        "inf",
        "x",
        "1.2.3",
        "{",
        "}",
        "version: 1",
        "n_points: 5",
        "",
        "  ",
        "\t",
        "1e999",
        "-",
        "1 2 3",
        "\x00",
        "é",
        "//c",
        "0x10",
    ]
)


@st.composite
def _mutated_pts(draw) -> bytes:
    lines = _VALID.decode().split("\n")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["delete", "duplicate", "insert", "replace", "count", "truncate", "bytes", "swap"]
            )
        )
        at = draw(st.integers(0, max(len(lines) - 1, 0)))
        if kind == "delete" and lines:
            del lines[at]
        elif kind == "duplicate" and lines:
            lines.insert(at, lines[at])
        elif kind == "insert":
            lines.insert(at, draw(_GARBAGE))
        elif kind == "replace" and lines:
            tokens = lines[at].split(" ")
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(_GARBAGE)
            lines[at] = " ".join(tokens)
        elif kind == "count":
            lines[1] = f"n_points: {draw(st.integers(-2, 9))}"
        elif kind == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        raw = "\n".join(lines).encode()
        if kind == "truncate":
            return raw[: draw(st.integers(0, len(raw)))]
        elif kind == "bytes":
            position = draw(st.integers(0, len(raw)))
            raw = raw[:position] + draw(st.binary(min_size=1, max_size=4)) + raw[position:]
            return raw
    return "\n".join(lines).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_mutated_pts())
def test_pts_fuzzing_never_crashes_or_miscounts(raw):
    path = Path("fuzzed/face.pts")
    try:
        points = parse_pts(raw, path)
    except DataFormatError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and exc.path == path
        assert exc.line is not None or "empty" in message
        if exc.line is not None:
            assert message.startswith(f"{path}:{exc.line}:") and exc.line >= 1
        return
    declared = re.search(rb"n_points:[ \t]*([0-9]+)", raw)
    assert declared is not None and points.shape == (int(declared.group(1)), 2)
    assert torch.isfinite(points).all()


# --------------------------------------------------------------------------------------------
# Folder loader


def _make_pts_tree(root: Path, names: list[str], n_points: int = 5, suffix: str = ".jpg") -> None:
    rng = np.random.default_rng(2)
    for name in names:
        image = root / f"{name}{suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            image, format="PNG" if suffix == ".png" else "JPEG"
        )
        (root / f"{name}.pts").write_text(_valid_pts_text(rng.uniform(1, 8, (n_points, 2))))


def test_pts_folder_layouts_order_and_groups(tmp_path):
    _make_pts_tree(
        tmp_path, ["lfpw/trainset/image_0002", "lfpw/trainset/image_0001"], suffix=".png"
    )
    _make_pts_tree(tmp_path, ["afw/123_2", "afw/123_1", "ibug/image_003_1"])
    _make_pts_tree(tmp_path, ["helen/9_1"], suffix=".JPG")
    (tmp_path / "notes.txt").write_text("ignored: neither image nor .pts")
    records = load_pts_folder(tmp_path, expected_points=5)
    names = [r.name for r in records]
    assert names == sorted(names) and len(names) == 6
    assert names[0] == "afw/123_1" and records[0].subset == "afw"
    assert {r.group for r in records if r.subset == "afw"} == {"afw/123"}
    assert {r.group for r in records if r.subset == "lfpw"} == {
        "lfpw/trainset/image_0001",
        "lfpw/trainset/image_0002",
    }
    assert [r.group for r in records if r.subset == "ibug"] == ["ibug/image_003"]
    assert any(r.image_path.suffix == ".JPG" for r in records)
    with pytest.raises(DataFormatError, match="expected 6 points, found 5"):
        load_pts_folder(tmp_path, expected_points=6)


def test_pts_folder_missing_pairs_error_or_warn(tmp_path, caplog):
    _make_pts_tree(tmp_path, ["a", "b", "c"])
    (tmp_path / "a.jpg").unlink()
    (tmp_path / "c.pts").unlink()
    with pytest.raises(DataFormatError) as info:
        load_pts_folder(tmp_path)
    message = str(info.value)
    assert "1 .pts files have no image" in message and "a.pts" in message
    assert "1 images have no .pts" in message and "c.jpg" in message
    with caplog.at_level(logging.WARNING, logger="wherewhat.data.faces"):
        records = load_pts_folder(tmp_path, on_missing="warn")
    assert [r.name for r in records] == ["b"]
    assert "a.pts" in caplog.text and "c.jpg" in caplog.text and "skipped" in caplog.text
    with pytest.raises(ConfigError):
        load_pts_folder(tmp_path, on_missing="ignore")


def test_pts_folder_empty_ambiguous_and_mixed(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty"):
        load_pts_folder(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="not a folder"):
        load_pts_folder(tmp_path / "absent")
    _make_pts_tree(tmp_path / "dup", ["x"])
    _save_png(tmp_path / "dup" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataFormatError, match="ambiguous"):
        load_pts_folder(tmp_path / "dup")
    _make_pts_tree(tmp_path / "mixed", ["p"], n_points=5)
    _make_pts_tree(tmp_path / "mixed", ["q"], n_points=6)
    with pytest.raises(DataFormatError, match="one landmark scheme"):
        load_pts_folder(tmp_path / "mixed")
    _make_pts_tree(tmp_path / "broken", ["r"])
    (tmp_path / "broken" / "r.pts").write_text("version: 1\nn_points: 5\n{\n1 1\n}\n")
    with pytest.raises(DataFormatError, match=r"r\.pts:5:"):
        load_pts_folder(tmp_path / "broken")


def test_split_by_name_is_deterministic_and_keeps_photos_together():
    records = list(_faces68())
    train, val = split_by_name(records, 0.2, seed=3)
    again_train, again_val = split_by_name(list(reversed(records)), 0.2, seed=3)
    assert [r.name for r in train] == [r.name for r in again_train]
    assert [r.name for r in val] == [r.name for r in again_val]
    assert len(train) + len(val) == len(records)
    assert not {r.name for r in train} & {r.name for r in val}
    assert not {r.group for r in train} & {r.group for r in val}
    groups = len({r.group for r in records})
    assert len({r.group for r in val}) == round(0.2 * groups)
    _, other_val = split_by_name(records, 0.2, seed=4)
    assert {r.name for r in other_val} != {r.name for r in val}
    assert split_by_name(records, 0.0, seed=0)[1] == []
    with pytest.raises(ConfigError):
        split_by_name(records, 1.0, seed=0)


# --------------------------------------------------------------------------------------------
# WFLW and COFW


def _wflw_line(points: np.ndarray, box, flags, relative: str) -> str:
    numbers = " ".join(f"{v:.6f}" for v in points.reshape(-1))
    return f"{numbers} {' '.join(map(str, box))} {' '.join(map(str, flags))} {relative}"


def test_wflw_fixture(tmp_path, caplog):
    rng = np.random.default_rng(5)
    faces = [rng.uniform(10, 90, (98, 2)) for _ in range(3)]
    images = tmp_path / "WFLW_images"
    _save_png(images / "51--Dresses" / "a.jpg", np.zeros((100, 100, 3), np.uint8))
    _save_png(images / "2--Demo" / "b.jpg", np.zeros((100, 100, 3), np.uint8))
    lines = [
        _wflw_line(faces[0], (5, 6, 95, 96), (1, 0, 0, 0, 1, 0), "51--Dresses/a.jpg"),
        _wflw_line(faces[1], (1, 2, 50, 60), (0, 0, 0, 0, 0, 1), "2--Demo/b.jpg"),
        _wflw_line(faces[2], (3, 3, 40, 40), (0, 1, 0, 0, 0, 0), "51--Dresses/a.jpg"),
    ]
    annotation = tmp_path / "list_98pt_rect_attr_test.txt"
    annotation.write_text("\n".join(lines) + "\n\n")
    records = load_wflw(annotation, images)
    assert [r.name for r in records] == [
        "2--Demo/b.jpg@2",
        "51--Dresses/a.jpg@1",
        "51--Dresses/a.jpg@3",
    ]
    first = records[1]
    assert first.points.shape == (98, 2) and first.subset == "list_98pt_rect_attr_test"
    assert torch.allclose(first.points, torch.from_numpy(faces[0]).float() + 0.5, atol=1e-5)
    assert torch.equal(first.box, torch.tensor([5.5, 6.5, 95.5, 96.5]))
    assert first.attributes == dict(
        zip(WFLW_ATTRIBUTES, [True, False, False, False, True, False], strict=True)
    )
    assert records[1].group == records[2].group == "51--Dresses/a.jpg"

    annotation.write_text(lines[0] + "\n" + lines[1].replace(" 0 0 0 0 0 1 ", " 0 0 0 0 0 2 "))
    with pytest.raises(DataFormatError, match=r":2: expected six attribute flags"):
        load_wflw(annotation, images)
    annotation.write_text(lines[0] + "\n" + lines[1].split(" ", 1)[1])
    with pytest.raises(DataFormatError, match=r":2: expected 207 fields"):
        load_wflw(annotation, images)
    annotation.write_text(lines[0].replace("51--Dresses/a.jpg", "9--Gone/c.jpg"))
    with pytest.raises(DataFormatError, match=r"1 images .* not under .*c\.jpg"):
        load_wflw(annotation, images)
    annotation.write_text(lines[0].replace("51--Dresses/a.jpg", "9--Gone/c.jpg") + "\n" + lines[1])
    with caplog.at_level(logging.WARNING, logger="wherewhat.data.faces"):
        assert [r.name for r in load_wflw(annotation, images, on_missing="warn")] == [
            "2--Demo/b.jpg@2"
        ]
    assert "c.jpg" in caplog.text


def _cofw_content(rng):
    """Two faces: one grey 40x60 (H x W) image, one RGB 50x30, with marked pixels."""
    grey = rng.integers(0, 200, (40, 60), dtype=np.uint8)
    grey[7, 51] = 255  # row 7, column 51
    rgb = rng.integers(0, 200, (50, 30, 3), dtype=np.uint8)
    rgb[44, 3] = (255, 0, 9)
    phis = np.concatenate(
        [rng.uniform(2, 28, (2, 29)), rng.uniform(2, 38, (2, 29)), rng.integers(0, 2, (2, 29))],
        axis=1,
    )
    boxes = np.array([[3.0, 4.0, 20.0, 30.0], [1.0, 2.0, 25.0, 35.0]])
    return [grey, rgb], phis, boxes


def _write_cofw_v5(path, images, phis, boxes):
    from scipy.io import savemat

    cell = np.empty((len(images), 1), dtype=object)
    for i, image in enumerate(images):
        cell[i, 0] = image
    savemat(path, {"IsTr": cell, "phisTr": phis, "bboxesTr": boxes})


def _write_cofw_v73(path, images, phis, boxes):
    """Mimic MATLAB v7.3: 512-byte header block, column-major (transposed) arrays, cell refs."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        cell = handle.create_dataset("IsT", (1, len(images)), dtype=h5py.ref_dtype)
        for i, image in enumerate(images):
            data = refs.create_dataset(f"img{i}", data=image.T)
            data.attrs["MATLAB_class"] = np.bytes_("uint8")
            cell[0, i] = data.ref
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        handle.create_dataset("phisT", data=phis.T).attrs["MATLAB_class"] = np.bytes_("double")
        handle.create_dataset("bboxesT", data=boxes.T).attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def test_cofw_fixtures_both_mat_flavours(tmp_path):
    images, phis, boxes = _cofw_content(np.random.default_rng(6))
    _write_cofw_v5(tmp_path / "COFW_train.mat", images, phis, boxes)
    _write_cofw_v73(tmp_path / "COFW_test_color.mat", images, phis, boxes)
    v5 = load_cofw(tmp_path / "COFW_train.mat")
    v73 = load_cofw(tmp_path / "COFW_test_color.mat")
    for records in (v5, v73):
        assert len(records) == 2 and records[0].points.shape == (29, 2)
        for index, record in enumerate(records):
            expected = np.stack([phis[index, :29], phis[index, 29:58]], axis=-1) - 0.5
            assert torch.allclose(record.points, torch.from_numpy(expected).float())
            assert torch.equal(record.occluded, torch.from_numpy(phis[index, 58:] == 1))
            x, y, w, h = boxes[index]
            assert torch.allclose(
                record.box, torch.tensor([x - 0.5, y - 0.5, x - 0.5 + w, y - 0.5 + h]).float()
            )
        pixels = [read_face_image(record) for record in records]
        assert pixels[0].shape == (3, 40, 60) and pixels[1].shape == (3, 50, 30)
        assert pixels[0][:, 7, 51].tolist() == [255, 255, 255]
        assert pixels[1][:, 44, 3].tolist() == [255, 0, 9]
    assert v5[0].subset == "COFW_train" and v5[1].name == "COFW_train#00001"


def test_cofw_bad_files(tmp_path):
    images, phis, boxes = _cofw_content(np.random.default_rng(7))
    _write_cofw_v5(tmp_path / "short.mat", images[:1], phis, boxes)
    with pytest.raises(DataFormatError, match="2 shapes in phis but 1 images"):
        load_cofw(tmp_path / "short.mat")
    bad = phis.copy()
    bad[1, 60] = 0.5
    _write_cofw_v5(tmp_path / "flags.mat", images, bad, boxes)
    with pytest.raises(DataFormatError, match="occlusion flags"):
        load_cofw(tmp_path / "flags.mat")
    from scipy.io import savemat

    savemat(tmp_path / "other.mat", {"X": np.zeros(3)})
    with pytest.raises(DataFormatError, match="not a COFW file"):
        load_cofw(tmp_path / "other.mat")
    (tmp_path / "junk.mat").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(DataFormatError, match=r"junk\.mat"):
        load_cofw(tmp_path / "junk.mat")
    with pytest.raises(DataFormatError, match="no such file"):
        load_cofw(tmp_path / "absent.mat")


def test_corrupt_image_is_a_data_format_error(tmp_path):
    path = tmp_path / "face.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:200])  # truncated
    record = FaceRecord(path, torch.rand(68, 2) * 60, None, "t", "face", "face")
    with pytest.raises(DataFormatError, match=r"face\.jpg: cannot decode"):
        read_face_image(record)
    (tmp_path / "face.png").write_bytes(b"not a png at all")
    record.image_path = tmp_path / "face.png"
    dataset = FaceLandmarkDataset([record], out_size=32)
    with pytest.raises(DataFormatError, match=r"face\.png"):
        dataset[0]


# --------------------------------------------------------------------------------------------
# Crops


@pytest.mark.parametrize("angle", [0.0, 17.0, -90.0, 180.0])
@pytest.mark.parametrize("side_factor", [1.0, 1.25, 2.3])
def test_crop_uncrop_points_round_trip(angle, side_factor):
    record = _faces68()[11]
    image = read_face_image(record)
    crop, affine = face_crop(image, record.points, 256, side_factor, angle)
    assert crop.shape == (3, 256, 256) and crop.dtype == torch.float32 and affine.shape == (3, 3)
    in_crop = apply_affine(record.points, affine)
    assert torch.allclose(uncrop_points(in_crop, affine), record.points, atol=1e-4, rtol=0)
    # crop points back to the original and into the crop again
    grid = torch.rand(50, 2, generator=torch.Generator().manual_seed(1)) * 256
    assert torch.allclose(apply_affine(uncrop_points(grid, affine), affine), grid, atol=1e-4)
    # the landmark box is centred and spans 1 / side_factor of the crop (unrotated case)
    if angle == 0.0:
        box = points_to_box(in_crop)
        assert torch.allclose((box[:2] + box[2:]) / 2, torch.tensor([128.0, 128.0]), atol=1e-3)
        assert math.isclose(float((box[2:] - box[:2]).max()), 256 / side_factor, rel_tol=1e-5)


def test_crop_from_box_and_batched_uncrop():
    box = torch.tensor([10.0, 20.0, 50.0, 40.0])
    affine = face_crop_affine(box, 100, side_factor=1.0)
    corners = apply_affine(torch.tensor([[10.0, 30.0], [50.0, 30.0]], dtype=torch.float64), affine)
    assert torch.allclose(corners, torch.tensor([[0.0, 50.0], [100.0, 50.0]], dtype=torch.float64))
    affines = torch.stack([affine.float(), face_crop_affine(box, 64, 1.5, 30.0).float()])
    points = torch.rand(2, 7, 2) * 64
    back = uncrop_points(points, affines)
    assert torch.allclose(apply_affine(back, affines), points, atol=1e-4)


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0])
def test_marked_pixel_lands_where_the_affine_says(angle):
    image = torch.zeros(1, 90, 120)
    image[0, 40, 70] = 1.0  # centre at (70.5, 40.5)
    box = torch.tensor([30.0, 20.0, 94.0, 84.0])  # side 64 -> scale 1, centre on a pixel corner
    crop, affine = face_crop(image, box, 64, side_factor=1.0, angle_deg=angle)
    x, y = apply_affine(torch.tensor([[70.5, 40.5]]), affine)[0].tolist()
    assert math.isclose(x % 1, 0.5, abs_tol=1e-4) and math.isclose(y % 1, 0.5, abs_tol=1e-4)
    assert float(crop[0, int(y), int(x)]) == pytest.approx(1.0, abs=1e-4)
    assert float(crop.sum()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("angle", "size"), [(23.0, 200), (-61.0, 40)])
def test_blob_centre_follows_the_affine(angle, size):
    """A smooth blob's intensity centroid in the crop sits at the mapped centre; the small crop
    (40 px of a ~400 px region) goes through the antialiasing pre-reduction."""
    height, width = 600, 700
    centre = torch.tensor([403.3, 287.9])
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    sigma = 12.0
    image = torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))[None]
    box = torch.tensor([250.0, 150.0, 560.0, 430.0])
    crop, affine = face_crop(image, box, size, side_factor=1.3, angle_deg=angle)
    expected = apply_affine(centre[None], affine)[0]
    cy, cx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    weights = crop[0] / crop[0].sum()
    found = torch.stack([(weights * cx).sum(), (weights * cy).sum()])
    assert torch.allclose(found, expected, atol=0.05 * max(1.0, 200 / size))


# --------------------------------------------------------------------------------------------
# Flips


@pytest.mark.parametrize("perm", [FLIP_PERMUTATION_68, FLIP_PERMUTATION_98, FLIP_PERMUTATION_29])
def test_flip_permutations_are_involutions(perm):
    assert sorted(perm) == list(range(len(perm)))
    assert all(perm[perm[k]] == k for k in range(len(perm)))
    fixed = [k for k in range(len(perm)) if perm[k] == k]
    assert 0 < len(fixed) < len(perm) // 2


def test_flip_68_on_real_faces_mirrors_left_and_right():
    records = _faces68()
    record = records[0]
    image = read_face_image(record)
    flipped_image, flipped = hflip_face(image, record.points)
    # twice is the identity
    image2, points2 = hflip_face(flipped_image, flipped)
    assert torch.equal(image2, image) and torch.allclose(points2, record.points)
    # image and points move together: pixel value under landmark k of the flipped face equals
    # the value under landmark perm[k] of the original
    perm = list(FLIP_PERMUTATION_68)
    assert torch.allclose(
        _sample(flipped_image, flipped), _sample(image, record.points[perm]), atol=1e-3
    )
    # the flipped left eye is where a left eye is, on every face: similarity-align each flipped
    # shape to the mean shape; each landmark's median distance must match the unflipped faces'
    # (a wrong pair, even 40/41 <-> 46/47, raises it 3x at that landmark)
    shapes = torch.stack([r.points for r in records])
    flips = torch.stack([hflip_face(torch.zeros(1, 1, 320), r.points)[1] for r in records])
    mean = _align(shapes, shapes[0]).mean(0)
    mean = _align(shapes, mean).mean(0)
    spread = (_align(shapes, mean) - mean).norm(dim=-1).median(dim=0).values
    flipped_spread = (_align(flips, mean) - mean).norm(dim=-1).median(dim=0).values
    assert (flipped_spread < 1.3 * spread).all()
    assert (flips[:, 36:42, 0].mean(1) < flips[:, 42:48, 0].mean(1)).float().mean() > 0.99
    # a mirror without relabelling cannot be aligned (rotations only, no reflections)
    mirrored_only = 320 - shapes[..., :1], shapes[..., 1:]
    mirrored_only = torch.cat(mirrored_only, dim=-1)
    assert (
        (_align(mirrored_only, mean) - mean).norm(dim=-1).median(dim=0).values > 3 * spread
    ).any()


def _align(shapes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Similarity-align shapes ``(B, K, 2)`` to ``reference`` ``(K, 2)`` (unit size, centred),
    with proper rotations only."""
    centred = shapes - shapes.mean(1, keepdim=True)
    centred = centred / centred.norm(dim=(1, 2), keepdim=True)
    ref = reference - reference.mean(0)
    ref = ref / ref.norm()
    u, _, vt = torch.linalg.svd(centred.transpose(1, 2) @ ref)
    sign = torch.ones(len(shapes), 2)
    sign[:, 1] = torch.sign(torch.linalg.det(u @ vt))
    rotation = u @ torch.diag_embed(sign) @ vt
    return centred @ rotation


# Where the 98- and 29-point landmarks sit on a 68-point face: lists of 68-point indices whose
# mean approximates the point (weights to shift lower brow points towards the eyes).
def _scheme_98_from_68():
    table = {}
    for i in range(17):
        table[2 * i] = [(i, 1.0)]
    for i in range(16):
        table[2 * i + 1] = [(i, 0.5), (i + 1, 0.5)]
    for a, b in zip(range(33, 38), range(17, 22), strict=True):
        table[a] = [(b, 1.0)]
    for a, b in zip(range(42, 47), range(22, 27), strict=True):
        table[a] = [(b, 1.0)]
    for a, (b, e) in zip(range(38, 42), [(21, 39), (20, 38), (19, 37), (18, 36)], strict=True):
        table[a] = [(b, 0.8), (e, 0.2)]
    for a, (b, e) in zip(range(47, 51), [(25, 45), (24, 44), (23, 43), (22, 42)], strict=True):
        table[a] = [(b, 0.8), (e, 0.2)]
    for a, b in zip(range(51, 60), range(27, 36), strict=True):
        table[a] = [(b, 1.0)]
    for a, b in zip((60, 61, 63, 64, 65, 67), range(36, 42), strict=True):
        table[a] = [(b, 1.0)]
    for a, b in zip((68, 69, 71, 72, 73, 75), range(42, 48), strict=True):
        table[a] = [(b, 1.0)]
    table[62] = [(37, 0.5), (38, 0.5)]
    table[66] = [(40, 0.5), (41, 0.5)]
    table[70] = [(43, 0.5), (44, 0.5)]
    table[74] = [(46, 0.5), (47, 0.5)]
    for a, b in zip(range(76, 96), range(48, 68), strict=True):
        table[a] = [(b, 1.0)]
    table[96] = [(k, 1 / 6) for k in range(36, 42)]
    table[97] = [(k, 1 / 6) for k in range(42, 48)]
    return [table[k] for k in range(98)]


def _scheme_29_from_68():
    eye = lambda ks: [(k, 1 / len(ks)) for k in ks]  # noqa: E731
    return [
        [(17, 1.0)],
        [(26, 1.0)],
        [(21, 1.0)],
        [(22, 1.0)],
        [(19, 1.0)],
        [(19, 0.8), (38, 0.2)],
        [(24, 1.0)],
        [(24, 0.8), (43, 0.2)],
        [(36, 1.0)],
        [(45, 1.0)],
        [(39, 1.0)],
        [(42, 1.0)],
        eye([37, 38]),
        eye([40, 41]),
        eye([43, 44]),
        eye([46, 47]),
        eye(range(36, 42)),
        eye(range(42, 48)),
        [(31, 1.0)],
        [(35, 1.0)],
        [(30, 1.0)],
        [(33, 1.0)],
        [(48, 1.0)],
        [(54, 1.0)],
        [(51, 1.0)],
        [(62, 1.0)],
        [(66, 1.0)],
        [(57, 1.0)],
        [(8, 1.0)],
    ]


def _synthesise(points68: torch.Tensor, table) -> torch.Tensor:
    return torch.stack([sum(w * points68[k] for k, w in entry) for entry in table])


@pytest.mark.parametrize(
    ("perm", "table"),
    [(FLIP_PERMUTATION_98, _scheme_98_from_68()), (FLIP_PERMUTATION_29, _scheme_29_from_68())],
)
def test_flip_98_and_29_agree_with_68_on_real_faces(perm, table):
    """Building a WFLW / COFW face from a real 68-point face and flipping it must give the same
    points as flipping the 68-point face first (the schemes' mirror pairs agree)."""
    for record in _faces68()[:50]:
        dummy = torch.zeros(1, 1, 320)
        _, flipped68 = hflip_face(dummy, record.points)
        _, flipped = hflip_face(dummy, _synthesise(record.points, table), perm)
        assert torch.allclose(flipped, _synthesise(flipped68, table), atol=1e-3)


# --------------------------------------------------------------------------------------------
# Dataset


def test_dataset_items_without_augmentation():
    records = list(_faces68()[:3])
    dataset = FaceLandmarkDataset(records, out_size=128, side_factor=1.25)
    item = dataset[1]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["points"].shape == (68, 2) and int(item["index"]) == 1 and not item["flipped"]
    assert torch.allclose(
        uncrop_points(item["points"], item["affine"]), records[1].points, atol=1e-4
    )
    expected, _ = face_crop(read_face_image(records[1]), records[1].points, 128, 1.25)
    assert torch.allclose(item["image"], expected)
    batch = torch.utils.data.default_collate([dataset[0], dataset[2]])
    assert batch["image"].shape == (2, 3, 128, 128) and batch["affine"].shape == (2, 3, 3)


def _smooth_record() -> tuple[FaceRecord, np.ndarray]:
    """A 68-point record on a smooth, in-memory image whose value we know everywhere."""
    height, width = 240, 260
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    value = 127.5 + 100 * np.sin(xs / 23.0) * np.cos(ys / 31.0)
    image = np.repeat(np.round(value).astype(np.uint8)[..., None], 3, axis=2)
    points = _faces68()[5].points * 0.5 + torch.tensor([50.0, 40.0])
    return FaceRecord(Path("mem"), points, None, "t", "m", "m", image=image), image


def test_augmented_dataset_keeps_image_and_points_aligned():
    record, image = _smooth_record()
    dataset = FaceLandmarkDataset(
        [record] * 12,
        out_size=96,
        augment=True,
        seed=9,
        max_rotation_deg=30.0,
        rotation_prob=0.7,
        flip_prob=0.5,
    )
    perm = list(FLIP_PERMUTATION_68)
    reference = _sample(torch.from_numpy(image).permute(2, 0, 1).float() / 255, record.points)[0]
    flips, angles = 0, set()
    for index in range(len(dataset)):
        item = dataset[index]
        flipped = bool(item["flipped"])
        flips += flipped
        order = perm if flipped else list(range(68))
        assert torch.allclose(
            uncrop_points(item["points"], item["affine"]), record.points[order], atol=1e-3
        )
        # the crop's pixel under point k shows the original pixel under its landmark
        values = _sample(item["image"], item["points"])[0]
        assert (values - reference[order]).abs().max() < 0.03
        angles.add(round(float(torch.atan2(item["affine"][1, 0], item["affine"][0, 0])), 4))
    assert 0 < flips < len(dataset) and len(angles) > 3
    # the draws depend on (seed, epoch, index) only
    again = FaceLandmarkDataset(
        [record] * 12,
        out_size=96,
        augment=True,
        seed=9,
        max_rotation_deg=30.0,
        rotation_prob=0.7,
        flip_prob=0.5,
    )
    assert torch.equal(again[4]["affine"], dataset[4]["affine"])
    dataset.set_epoch(1)
    assert not torch.equal(again[4]["affine"], dataset[4]["affine"])


def test_dataset_configuration_errors():
    record, _ = _smooth_record()
    odd = FaceRecord(Path("mem"), torch.rand(7, 2) * 9, None, "t", "o", "o", image=np.zeros((9, 9)))
    with pytest.raises(ConfigError, match="no mirror permutation"):
        FaceLandmarkDataset([odd], augment=True)
    assert FaceLandmarkDataset([odd], out_size=8)[0]["points"].shape == (7, 2)
    with pytest.raises(ConfigError, match="mix"):
        FaceLandmarkDataset([record, odd])
    with pytest.raises(ConfigError, match="no face box"):
        FaceLandmarkDataset([record], crop_from="box")
    with pytest.raises(ConfigError):
        FaceLandmarkDataset([])


def test_batch_images_and_points_names_the_bad_batch():
    from wherewhat.data.face_crops import batch_images_and_points

    images, points = torch.zeros(2, 3, 8, 8), torch.zeros(2, 68, 2)
    got = batch_images_and_points({"image": images, "points": points, "index": None}, 0)
    assert got[0] is images and got[1] is points
    with pytest.raises(ValueError, match="batch 3: expected a dict with 'image' and 'points'"):
        batch_images_and_points((images, points), 3)
    with pytest.raises(ValueError, match=r"batch 4: .* got \(2, 3, 8, 8\) and \(1, 68, 2\)"):
        batch_images_and_points({"image": images, "points": points[:1]}, 4)


def test_prediction_record_maps_crop_points_to_original_pixels():
    from wherewhat.data.face_crops import prediction_record

    # original -> crop: scale by 2, then shift by (10, -4)
    affine = torch.tensor([[[2.0, 0.0, 10.0], [0.0, 2.0, -4.0], [0.0, 0.0, 1.0]]])
    crop_points = torch.tensor([[[10.0, 0.0], [30.0, 16.0]]])
    record = prediction_record(crop_points, {"affine": affine, "index": torch.tensor([7])})
    torch.testing.assert_close(record["points"], torch.tensor([[[0.0, 2.0], [10.0, 10.0]]]))
    assert record["crop_points"] is crop_points and record["index"].tolist() == [7]
    assert set(prediction_record(crop_points, torch.zeros(1, 3, 8, 8))) == {"crop_points"}
