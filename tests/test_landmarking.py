"""Landmarks on photos: calibration, crops placed as in training, both backends, the detector
interface with a stub, the OpenCV detector when installed, and the ``wherewhat landmarks``
command's outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.cli import main
from wherewhat.data.face_formats import read_pts, write_pts
from wherewhat.errors import ConfigError
from wherewhat.landmarking import BoxCalibration, DetectedFace, LandmarkPredictor
from wherewhat.landmarking.images import rgb_array
from wherewhat.models.landmark_baselines import PFLDRegressor
from wherewhat.models.landmark_release import write_release

CROP = 64


def _mean_shape_model() -> PFLDRegressor:
    """A network that always answers its mean shape: a 68-point grid filling the crop's
    central 1 / 1.25, i.e. exactly a training face's tight landmark box."""
    model = PFLDRegressor(width_mult=0.25, crop_size=CROP).eval()
    side = CROP / 1.25
    start = (CROP - side) / 2
    grid = torch.stack(
        torch.meshgrid(torch.linspace(0, 1, 17), torch.linspace(0, 1, 4), indexing="xy"), -1
    ).reshape(-1, 2)[:68]
    model.set_mean_shape((start + side * grid)[None])
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    return model


def _tight_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def test_calibration_recovers_a_known_mapping_despite_outliers():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (200, 2))
    side = rng.uniform(40, 200, (200, 1))
    detector = np.concatenate([xy, xy + side], axis=1)
    truth = BoxCalibration(shift_x=0.02, shift_y=0.12, scale=0.85)
    landmark = truth.landmark_boxes(detector)
    landmark[:30] = rng.uniform(0, 500, (30, 4)).clip(min=0) + [0, 0, 600, 600]  # bad matches
    fitted = BoxCalibration.fit(detector, landmark)
    assert fitted.faces == 200
    np.testing.assert_allclose(
        [fitted.shift_x, fitted.shift_y, fitted.scale], [0.02, 0.12, 0.85], atol=0.02
    )


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_crop_goes_where_training_crops_went(backend):
    """Given a tight landmark box, a mean-shape model puts its points exactly in that box."""
    predictor = LandmarkPredictor(
        _mean_shape_model(), crop_size=CROP, backend=backend, detector=None
    )
    image = np.zeros((120, 200, 3), dtype=np.uint8)
    boxes = np.array([[30, 20, 90, 70], [120, 50, 180, 110]], dtype=np.float32)
    faces = predictor(image, boxes=boxes, box_kind="landmarks", scores=[0.9, 0.5])
    assert [f.score for f in faces] == [0.9, 0.5]
    for face, box in zip(faces, boxes, strict=True):
        assert face.points.shape == (68, 2)
        found = _tight_box(face.points)
        centre, side = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max()
        np.testing.assert_allclose((found[:2] + found[2:]) / 2, centre, atol=1e-3)
        np.testing.assert_allclose((found[2:] - found[:2]).max(), side, rtol=1e-4)


def test_detector_interface_with_a_stub_and_its_calibration():
    class Stub:
        box_kind = "stub"

        def __init__(self):
            self.seen = []

        def __call__(self, image):
            self.seen.append(image.shape)
            return [DetectedFace(np.array([10, 10, 60, 60], np.float32), 0.7)]

    stub = Stub()
    shifted = BoxCalibration(shift_x=0.0, shift_y=0.2, scale=0.8)
    predictor = LandmarkPredictor(
        _mean_shape_model(), crop_size=CROP, backend="torch", detector=stub,
        calibrations={"stub": shifted},
    )  # fmt: skip
    (face,) = predictor(Image.new("RGB", (100, 80)))
    assert stub.seen == [(80, 100, 3)] and face.score == 0.7
    np.testing.assert_array_equal(face.box, [10, 10, 60, 60])  # the box as found
    found = _tight_box(face.points)  # the shape sits in the calibrated box
    np.testing.assert_allclose((found[:2] + found[2:]) / 2, [35, 45], atol=1e-3)
    np.testing.assert_allclose((found[2:] - found[:2]).max(), 40, rtol=1e-4)
    uncalibrated = LandmarkPredictor(_mean_shape_model(), crop_size=CROP, backend="torch",
                                     detector=stub)  # fmt: skip
    with pytest.raises(ConfigError, match="no calibration for 'stub' boxes"):
        uncalibrated(np.zeros((80, 100, 3), np.uint8))


def test_mirrored_boxes_are_calibrated_as_mirror_images():
    """A box found on the mirrored photo and mapped back is the mirror image of a box the
    calibration describes: fitted on such boxes, the calibration is the unmirrored one, and
    applied to them it mirrors its horizontal shift."""
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 300, (50, 2))
    detector = np.concatenate([xy, xy + rng.uniform(40, 100, (50, 1))], axis=1)
    truth = BoxCalibration(shift_x=0.1, shift_y=0.05, scale=0.9)
    width = 500.0

    def mirror(boxes):
        return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)

    landmark = truth.landmark_boxes(detector)
    mirrored = np.ones(50, bool)
    fitted = BoxCalibration.fit(mirror(detector), mirror(landmark), mirrored)
    np.testing.assert_allclose([fitted.shift_x, fitted.shift_y, fitted.scale], [0.1, 0.05, 0.9],
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(
        truth.landmark_boxes(mirror(detector), mirrored), mirror(landmark), atol=1e-3
    )
    shifted = truth.landmark_boxes(detector[:2], np.array([True, False]))
    centre_x = (detector[:2, 0] + detector[:2, 2]) / 2
    side = detector[:2, 2] - detector[:2, 0]
    np.testing.assert_allclose((shifted[:, 0] + shifted[:, 2]) / 2, centre_x + [-0.1, 0.1] * side,
                               atol=1e-3)  # fmt: skip


def test_each_face_gets_the_calibration_of_its_own_kind():
    class TwoKinds:
        box_kind = "front"

        def __call__(self, image):
            box = np.array([20, 20, 60, 60], np.float32)
            return [DetectedFace(box), DetectedFace(box + 60, 0.6, "side", mirrored=True)]

    calibrations = {"front": BoxCalibration(scale=0.5),
                    "side": BoxCalibration(shift_x=0.25, scale=1.0)}  # fmt: skip
    predictor = LandmarkPredictor(_mean_shape_model(), crop_size=CROP, backend="torch",
                                  detector=TwoKinds(), calibrations=calibrations)  # fmt: skip
    front, side = predictor(np.zeros((150, 150, 3), np.uint8))
    np.testing.assert_allclose(front.landmark_box, [30, 30, 50, 50], atol=1e-4)
    np.testing.assert_allclose(side.landmark_box, [70, 80, 110, 120], atol=1e-4)  # shift -0.25 w
    for face in (front, side):
        found = _tight_box(face.points)
        np.testing.assert_allclose(found[[0, 2]], face.landmark_box[[0, 2]], atol=1e-3)


def test_images_of_every_kind_become_rgb_arrays(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    for image in (tmp_path / "a.png", Image.fromarray(pixels), pixels, tensor, tensor / 255.0):
        np.testing.assert_array_equal(rgb_array(image), pixels)
    assert rgb_array(pixels[:, :, 0]).shape == (5, 7, 3)


def test_opencv_detector_finds_nothing_on_a_blank_image():
    pytest.importorskip("cv2")
    from wherewhat.landmarking import OpenCVFaceDetector

    detector = OpenCVFaceDetector()
    assert detector(np.full((120, 160, 3), 128, np.uint8)) == []
    assert detector.box_kind == "opencv_haar"


class _FixedCascade:
    """Stands in for a cascade: the same ``(x, y, w, h)`` boxes on any image it is shown."""

    def __init__(self, boxes):
        self.boxes, self.shown = np.array(boxes, np.int32).reshape(-1, 4), []

    def detectMultiScale2(self, grey, **options):
        self.shown.append(grey.copy())
        return self.boxes, np.full(len(self.boxes), 7, np.int32)


def test_opencv_detector_tries_profiles_both_ways_only_without_a_frontal_face():
    pytest.importorskip("cv2")
    from wherewhat.landmarking import OpenCVFaceDetector
    from wherewhat.landmarking.detectors import PROFILE_KIND

    detector = OpenCVFaceDetector(detect_side=100)
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :10] = 255  # marks the left edge, to tell the mirrored view apart
    detector._frontal, detector._profile = _FixedCascade([]), _FixedCascade([[10, 20, 20, 20]])
    faces = detector(image)
    plain, mirrored = detector._profile.shown
    assert plain.shape == (50, 100) and plain[:, 0].max() > 0 and mirrored[:, -1].max() > 0
    assert [(f.kind, f.mirrored) for f in faces] == [(PROFILE_KIND, False), (PROFILE_KIND, True)]
    np.testing.assert_allclose(faces[0].box, [20, 40, 60, 80])  # back in photo pixels (x2)
    np.testing.assert_allclose(faces[1].box, [140, 40, 180, 80])  # and back from the mirror
    assert faces[0].score == pytest.approx(7 / 10)

    detector._frontal = _FixedCascade([[30, 5, 40, 40]])
    detector._profile.shown.clear()
    (face,) = detector(image)
    assert face.kind == "opencv_haar" and detector._profile.shown == []  # frontal: no profiles


def test_profile_faces_only_with_a_profile_calibration():
    pytest.importorskip("cv2")
    from wherewhat.landmarking.detectors import PROFILE_KIND

    def predictor(calibrations):
        return LandmarkPredictor(_mean_shape_model(), crop_size=CROP, backend="torch",
                                 detector="opencv", calibrations=calibrations)  # fmt: skip

    assert not predictor({}).detector.profiles
    assert predictor({PROFILE_KIND: BoxCalibration()}).detector.profiles
    with pytest.raises(ConfigError, match="min_face"):
        LandmarkPredictor(_mean_shape_model(), crop_size=CROP, backend="torch",
                          detector="opencv", detector_options={"min_face": 2})  # fmt: skip


@pytest.fixture
def release(tmp_path):
    weights, meta = write_release(tmp_path / "release", "mean", _mean_shape_model(), {})
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "crop": {"crop_size": CROP, "side_factor": 1.25}}))
    return weights


def test_landmarks_command_writes_pts_json_csv_and_overlays(tmp_path, release, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(photos / "a.jpg")
    Image.new("RGB", (60, 60)).save(photos / "sub" / "b.png")
    Image.new("RGB", (50, 50)).save(photos / "none.png")  # no .pts: no face
    truth = torch.tensor([[20.0, 10.0], [70.0, 60.0], [40.0, 30.0]])
    write_pts(photos / "a.pts", truth)
    write_pts(photos / "sub" / "b.pts", truth / 2)
    args = [
        "landmarks",
        str(photos),
        "--faces",
        "pts",
        "--model",
        str(release),
        "--backend",
        "torch",
    ]

    main([*args, "--out", str(tmp_path / "pts"), "--overlay", str(tmp_path / "drawn")])
    summary = capsys.readouterr().out
    assert "3 photos, 2 faces, 1 photos without a face" in summary and "none.png" in summary
    predicted = read_pts(tmp_path / "pts" / "a.pts").numpy()
    np.testing.assert_allclose(_tight_box(predicted)[[0, 2]], [20, 70], atol=1e-3)  # x spans
    assert (tmp_path / "pts" / "sub" / "b.pts").is_file()
    assert (tmp_path / "drawn" / "sub" / "b_landmarks.png").is_file()

    with pytest.raises(SystemExit) as stop:  # beside the photos: the annotation is kept
        main(args)
    assert stop.value.code == 2 and "a.pts exists" in capsys.readouterr().err

    main([*args, "--format", "json", "--out", str(tmp_path / "all.json")])
    document = json.loads((tmp_path / "all.json").read_text())
    assert [len(p["faces"]) for p in document["photos"]] == [1, 0, 1]
    np.testing.assert_allclose(document["photos"][0]["faces"][0]["points"], predicted, atol=0.01)
    main([*args, "--format", "csv", "--out", str(tmp_path / "all.csv")])
    rows = list(csv.reader((tmp_path / "all.csv").open()))
    assert len(rows[0]) == 7 + 136 and len(rows) == 1 + 3


def test_tour_page_runs_the_shipped_model_on_a_bundled_photo(tmp_path, monkeypatch, release):
    import wherewhat.landmarking.shipped as shipped
    from wherewhat.methods.worldcomp2d.tour import sample_face_photo, shipped_model_on_photo
    from wherewhat.report.html import Section

    assert sample_face_photo().is_file()  # matplotlib ships it
    monkeypatch.setattr(shipped, "SHIPPED_MODELS", tmp_path / "none")
    section = Section("WorldComp2D")
    shipped_model_on_photo(section)
    assert section.figures == []  # no model: said, not crashed

    info = json.loads(release.with_suffix(".json").read_text())
    info["calibrations"] = {"opencv_haar": BoxCalibration(scale=0.9).to_dict()}
    release.with_suffix(".json").write_text(json.dumps(info))
    release.rename(release.with_name("worldcomp2d.pt"))
    release.with_suffix(".json").rename(release.with_name("worldcomp2d.json"))
    monkeypatch.setattr(shipped, "SHIPPED_MODELS", release.parent)
    section = Section("WorldComp2D")
    shipped_model_on_photo(section)
    ((name, png),) = section.figures
    assert name == "worldcomp2d-shipped-photo" and png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("box", "tolerance"),
    [
        ([300.0, 200.0, 345.0, 240.0], 1e-5),  # crop scale > 0.5: no antialias pre-filter
        ([300.0, 200.0, 420.0, 330.0], 0.01),  # pre-filtered: the window's filter edges differ
        ([-40.0, 500.0, 200.0, 700.0], 0.01),  # partly outside the photo
    ],
)
def test_crops_from_the_covered_window_match_crops_from_the_whole_photo(box, tolerance):
    from wherewhat.data.face_crops import face_crop_affine, warp_to_crop

    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 60, 80), size=(600, 800),
                                             mode="bicubic", align_corners=False)  # fmt: skip
    image = (smooth[0].clamp(0, 1) * 255).round().to(torch.uint8)
    predictor = LandmarkPredictor(_mean_shape_model(), crop_size=CROP, backend="torch",
                                  detector=None)  # fmt: skip
    crops, affines = predictor.crops(image.permute(1, 2, 0).numpy(), np.array([box], np.float32))
    whole = warp_to_crop(image, face_crop_affine(torch.tensor(box), CROP, 1.25), CROP)
    assert (crops[0] - whole).abs().mean() < tolerance
