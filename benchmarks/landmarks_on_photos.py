"""Landmarks on photos: the face detector, its box calibration and the shipped model.

On the landmark benchmark's photo-disjoint split of the faces (configs/worldcomp2d/default.yaml:
root, val_fraction, split_seed), with the landmark model of the benchmark's release
(``--model``, default artifacts/landmarks/worldcomp2d_box_noise.pt, written by
benchmarks/worldcomp2d.py: its WorldComp2D with the localizer that learnt from crops placed as
imprecisely as the detector places them):

1. OpenCV's bundled cascades (frontal; profile, both ways, where no frontal face is found) run
   with their defaults on every training photo; detections matched to the annotated faces (raw
   IoU >= 0.25) fit the detector-box -> landmark-box calibration of each cascade.
2. On every validation photo: was the face found (calibrated IoU >= 0.5), NME of the detector
   path and of the ground-truth-box path (on the same faces), and photos per second from decoded
   pixels to landmarks (detector + crop + model; ONNX Runtime and OpenCV on 1 thread).
3. fp16 storage is kept only if the ground-truth-box NME moves by < 0.01 points.
4. The release's JSON gets the crop settings and the calibrations (so ``wherewhat landmarks
   --model`` can use it); ``--ship`` writes the model into the package
   (src/wherewhat/landmarking/models/): weights, model card JSON (with the calibrations and
   the NME of a few validation faces, which the tests check).

    .venv/bin/python benchmarks/landmarks_on_photos.py --ship

Writes benchmarks/results/landmarks_on_photos.json and .md. Needs the [faces] extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from wherewhat.bench.machine import machine_info
from wherewhat.bench.tables import write_results
from wherewhat.data.faces import load_pts_folder, split_by_name
from wherewhat.io import write_atomic
from wherewhat.landmarking.detectors import PROFILE_KIND, OpenCVFaceDetector
from wherewhat.landmarking.images import rgb_array
from wherewhat.landmarking.photo_bench import (
    evaluate_photos,
    fit_calibrations,
    mean_box_shape,
    truth_box_nme,
)
from wherewhat.landmarking.predictor import LandmarkPredictor
from wherewhat.landmarking.shipped import SHIPPED_MODELS
from wherewhat.models.landmark_release import load_release, write_release
from wherewhat.training.config_files import load_layered_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"found_rate": 0.95, "nme_gap_points": 0.5, "photos_per_s": 100.0}
CHECK_FACES = 5
FLOOR_MARGIN = 0.25  # as the landmark benchmark: a path must beat its floor by this fraction


def _split(config: dict, faces_root: str | None) -> tuple[list, list, dict]:
    data = config["data"]["init_args"]
    root = Path(faces_root or data["root"])
    root = root if root.is_absolute() else (ROOT / root).resolve()
    records = load_pts_folder(root, 68)
    train, val = split_by_name(records, data["val_fraction"], data["split_seed"])
    crop = {"crop_size": int(data["crop_size"]), "side_factor": float(data["side_factor"])}
    return train, val, {"root": str(root), **crop}


def _fp16_nme_change(model: torch.nn.Module, predictor: LandmarkPredictor, val: list) -> float:
    """Mean |NME(fp16 weights) - NME(fp32)| in NME points over the validation faces."""
    with tempfile.TemporaryDirectory() as folder:
        halved = load_release(write_release(folder, "half", model, {}, torch.float16)[0])
    half = LandmarkPredictor(halved, crop_size=predictor.crop_size,
                             side_factor=predictor.side_factor, backend="torch", detector=None)  # fmt: skip
    full = LandmarkPredictor(model, crop_size=predictor.crop_size,
                             side_factor=predictor.side_factor, backend="torch", detector=None)  # fmt: skip
    changes = []
    for record in val:
        image = rgb_array(record.image_path)  # decoded once for both
        changes.append(truth_box_nme(full, record, image) - truth_box_nme(half, record, image))
    return 100 * abs(float(np.mean(changes)))


def _check_faces(records: list, root: Path) -> list[dict]:
    """``{"pts", "nme"}`` per face: NME of the shipped model (ONNX) from its landmark box."""
    shipped = LandmarkPredictor.shipped(detector=None, backend="onnx", threads=1)
    return [
        {"pts": record.image_path.with_suffix(".pts").relative_to(root).as_posix(),
         "nme": truth_box_nme(shipped, record)}
        for record in records
    ]  # fmt: skip


def _markdown(result: dict) -> str:
    s, detector = result["validation"], result["detector"]
    lines = [
        "# Landmarks on photos",
        "",
        f"Model: `{result['model']}`; detector: OpenCV Haar cascades (faces from "
        f"{detector['min_face']} of the shorter side, searched at {detector['detect_side']} px, "
        f"profiles {'on' if detector['profiles'] else 'off'}); {s['faces']} validation photos, "
        f"{result['train_faces']} training faces for the calibrations.",
        "",
        "| path | faces | NME (%) |",
        "|---|---:|---:|",
        f"| floor: mean training shape in the ground-truth boxes | {s['faces']} | "
        f"{100 * s['floor_truth_boxes']:.2f} |",
        f"| ground-truth landmark boxes | {s['faces']} | {100 * s['nme_truth_boxes']:.2f} |",
    ]
    if s["nme_detector_boxes"] is not None:
        lines += [
            f"| floor: mean training shape in the calibrated detector boxes | {s['found']} | "
            f"{100 * s['floor_detector_boxes']:.2f} |",
            f"| ground-truth boxes, faces the detector found | {s['found']} | "
            f"{100 * s['nme_truth_boxes_on_found']:.2f} |",
            f"| detector boxes, calibrated | {s['found']} | {100 * s['nme_detector_boxes']:.2f} |",
        ]
    lines += [
        "",
        f"A path counts when its NME is at least {FLOOR_MARGIN:.0%} below its floor: "
        + ", ".join(
            f"{path} {'yes' if ok else 'NO'}" for path, ok in result["clears_floor"].items()
        )
        + ".",
    ]
    lines += [
        "",
        f"Found: {s['found']} of {s['faces']} ({100 * s['found_rate']:.1f} %). Detector path: "
        f"{s['photos_per_s']:.0f} photos/s (1 thread, OpenCV + ONNX Runtime, decode excluded): "
        f"the detector {s['detector_ms_per_photo']:.1f} ms per photo, crops and model "
        f"{s['landmarks_ms_per_photo']:.1f} ms. "
        f"fp16 storage NME change: {result['fp16_nme_change_points']:.4f} points.",
        "",
        f"Calibrated detector box against the landmark box (relative to its side): centre "
        f"offset median {s['box_offset_median']:.3f}, 90th percentile {s['box_offset_p90']:.3f}; "
        f"side ratio 10th-90th percentile {s['box_scale_p10']:.2f}-{s['box_scale_p90']:.2f}.",
        "",
        "| calibration | faces | centre shift x (w) | centre shift y (h) | scale |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, c in result["calibrations"].items():
        lines.append(
            f"| {kind} | {c['faces']} | {c['shift_x']:+.3f} | {c['shift_y']:+.3f} | {c['scale']:.3f} |"
        )
    lines += [
        "",
        "| target | value | met |",
        "|---|---:|:---:|",
    ]
    for name, check in result["targets"].items():
        lines.append(
            f"| {name} {check['rule']} | {check['value']} | {'yes' if check['met'] else 'NO'} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=str(ROOT / "artifacts" / "landmarks" / "worldcomp2d_box_noise.pt"),
        help="a release file of benchmarks/worldcomp2d.py (default: its box_noise variant, "
        "whose localizer learnt from detector-like crops)",
    )
    parser.add_argument("--faces-root", default=None)
    parser.add_argument("--ship", action="store_true", help="write the model into the package")
    parser.add_argument("--results-name", default="landmarks_on_photos")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    config = load_layered_config(ROOT / "configs" / "worldcomp2d" / "default.yaml")
    train, val, data = _split(config, args.faces_root)
    release_info = json.loads(Path(args.model).with_suffix(".json").read_text())
    model = load_release(args.model)
    detector = OpenCVFaceDetector(threads=1)
    print(f"fitting the calibrations on {len(train)} training faces ...", flush=True)
    calibrations = fit_calibrations(detector, train)
    if detector.box_kind not in calibrations:
        raise SystemExit(f"the frontal cascade matched too few training faces: {calibrations}")
    if PROFILE_KIND not in calibrations:
        print("the profile cascade matched too few training faces: frontal faces only")
        detector = OpenCVFaceDetector(threads=1, profiles=False)
    predictor = LandmarkPredictor(
        model, crop_size=data["crop_size"], side_factor=data["side_factor"], backend="onnx",
        threads=1, detector=detector, calibrations=calibrations,
    )  # fmt: skip
    print(f"evaluating on {len(val)} validation photos ...", flush=True)
    evaluation = evaluate_photos(predictor, val, mean_box_shape(train)).summary()
    fp16_change = _fp16_nme_change(model, predictor, val)
    checks = {
        "found_rate": {"rule": ">= 0.95", "value": round(evaluation["found_rate"], 4),
                       "met": evaluation["found_rate"] >= TARGETS["found_rate"]},
        "nme_gap_points": {"rule": "<= 0.5", "value": None if evaluation["nme_gap_points"] is None
                           else round(evaluation["nme_gap_points"], 3),
                           "met": evaluation["nme_gap_points"] is not None
                           and evaluation["nme_gap_points"] <= TARGETS["nme_gap_points"]},
        "photos_per_s": {"rule": ">= 100", "value": round(evaluation["photos_per_s"], 1),
                         "met": evaluation["photos_per_s"] >= TARGETS["photos_per_s"]},
    }  # fmt: skip
    clears_floor = {
        path: evaluation[f"nme_{path}_boxes"] is not None
        and evaluation[f"nme_{path}_boxes"]
        <= (1 - FLOOR_MARGIN) * evaluation[f"floor_{path}_boxes"]
        for path in ("truth", "detector")
    }
    for path, ok in clears_floor.items():
        if not ok:
            print(
                f"!!! the {path}-box path does not clear its mean-shape floor by {FLOOR_MARGIN:.0%}"
            )
    command = "python benchmarks/landmarks_on_photos.py " + " ".join(argv or sys.argv[1:])
    result = {
        "clears_floor": clears_floor,
        "model": args.model,
        "data": data,
        "train_faces": len(train),
        "detector": {
            "min_face": detector.min_face,
            "detect_side": detector.detect_side,
            "min_neighbors": detector.min_neighbors,
            "profiles": detector.profiles,
        },
        "calibrations": {kind: c.to_dict() for kind, c in calibrations.items()},
        "validation": evaluation,
        "fp16_nme_change_points": fp16_change,
        "targets": checks,
        "threads": 1,
        "machine": machine_info(),
        "command": command,
    }
    # The release file learns its crop settings and the detector calibration, so that
    # `wherewhat landmarks --model <release>.pt` finds faces with it.
    release_json = Path(args.model).with_suffix(".json")
    updated = {**release_info, "crop": {"crop_size": data["crop_size"],
               "side_factor": data["side_factor"]},
               "calibrations": result["calibrations"]}  # fmt: skip
    write_atomic(release_json, json.dumps(updated, indent=2) + "\n")
    paths = write_results(args.results_name, result, _markdown(result), RESULTS)
    print(_markdown(result))
    print("wrote", *paths)
    if args.ship:
        fp16 = fp16_change < 0.01
        card = {
            **{k: v for k, v in release_info.items() if k not in ("format", "name", "weights")},
            "trained_on": "300-W AFW + HELEN train faces (68 points; research-use annotations)",
            "crop": {"crop_size": data["crop_size"], "side_factor": data["side_factor"]},
            "calibrations": result["calibrations"],
            "photos": evaluation,
            "storage": "float16" if fp16 else "float32",
            "shipped_by": command,
        }
        weights, _ = write_release(SHIPPED_MODELS, "worldcomp2d", model, card,
                                   torch.float16 if fp16 else torch.float32)  # fmt: skip
        # No ONNX file ships: it would hold the weights again, in fp32 (10.5 MB); the predictor
        # exports the network in memory when it loads (a few seconds, once per process).
        # A few validation faces' NME with the shipped files, kept in the card: the test suite
        # recomputes them, so a change in the crops, the export or the weights shows.
        shipped_json = weights.with_suffix(".json")
        written = json.loads(shipped_json.read_text())
        written["check_faces"] = _check_faces(val[:CHECK_FACES], Path(data["root"]))
        write_atomic(shipped_json, json.dumps(written, indent=2) + "\n")
        sizes = {p.name: p.stat().st_size for p in SHIPPED_MODELS.iterdir()}
        print("shipped:", sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
