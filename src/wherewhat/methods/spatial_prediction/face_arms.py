"""The landmark probe of the Spatial Prediction benchmark: SimCLR (+ SP) pre-trained on 68-point
face crops without labels, then a ridge regression from frozen features to the landmarks, NME on
faces of held-out photos; the untrained backbone of each seed is probed too (its floor)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import seed_everything
from torch import Tensor

from wherewhat.data.face_crops import FaceLandmarkDataset
from wherewhat.data.faces import load_pts_folder, split_by_name
from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.methods.spatial_prediction.arms import Log, build_task
from wherewhat.methods.spatial_prediction.bases import SSLMethod
from wherewhat.methods.spatial_prediction.probes import encode_images, landmark_probe
from wherewhat.methods.spatial_prediction.records import FaceArmResult
from wherewhat.methods.spatial_prediction.settings import BenchSettings, arm_name
from wherewhat.training.fit import fit

__all__ = ["FaceCrops", "face_crop_arrays", "run_face_arm", "run_face_arms"]


@dataclass
class FaceCrops:
    """Face crops split by photo: images ``(N, S, S, 3)`` uint8, points ``(N, 68, 2)`` in crop
    pixels."""

    train_images: np.ndarray
    test_images: np.ndarray
    train_points: Tensor
    test_points: Tensor


def face_crop_arrays(s: BenchSettings) -> FaceCrops:
    """Face crops of ``s.faces_root`` (at most ``s.max_faces``), split by photo name."""
    records = load_pts_folder(s.faces_root, 68)
    if s.max_faces is not None and s.max_faces < len(records):
        chosen = np.random.default_rng(s.face_split_seed).permutation(len(records))
        records = [records[i] for i in sorted(chosen[: s.max_faces].tolist())]
    train, test = split_by_name(records, s.face_val_fraction, s.face_split_seed)
    splits = []
    for subset in (train, test):
        faces = FaceLandmarkDataset(subset, out_size=s.face_size, side_factor=s.face_side_factor)
        items = [faces[i] for i in range(len(faces))]
        images = torch.stack([item["image"] for item in items])
        pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        splits.append((pixels.numpy(), torch.stack([item["points"] for item in items])))
    (train_images, train_points), (test_images, test_points) = splits
    return FaceCrops(train_images, test_images, train_points, test_points)


@dataclass
class _FaceProbe:
    nme_pooled: float
    nme_map: float
    nme_mean_shape: float
    alpha_pooled: float
    n_train: int
    n_test: int


def _face_probe(model: SSLMethod, faces: FaceCrops) -> _FaceProbe:
    """Landmark probe from pooled features and from the flattened last feature map."""
    train = torch.from_numpy(faces.train_images).permute(0, 3, 1, 2)
    test = torch.from_numpy(faces.test_images).permute(0, 3, 1, 2)
    results = {}
    for kind, feature_map in (("pooled", False), ("map", True)):
        train_f = encode_images(model.backbone, train, feature_map=feature_map)
        test_f = encode_images(model.backbone, test, feature_map=feature_map)
        results[kind] = landmark_probe(train_f, faces.train_points, test_f, faces.test_points)
    pooled, flat = results["pooled"], results["map"]
    return _FaceProbe(
        nme_pooled=pooled["nme"],
        nme_map=flat["nme"],
        nme_mean_shape=flat["nme_mean_shape"],
        alpha_pooled=pooled["alpha"],
        n_train=int(flat["n_train"]),
        n_test=int(flat["n_test"]),
    )


def run_face_arm(
    sp_lambda: float, seed: int, faces: FaceCrops, npz_path: Path, s: BenchSettings, log: Log
) -> FaceArmResult:
    """SimCLR (+SP) pre-training on face crops (no labels), then the landmark probe; the
    untrained backbone of the same seed is probed too (``random_init``)."""
    name = arm_name("simclr", sp_lambda, s.sp_lambda)
    seed_everything(seed, verbose=False)
    task = build_task("simclr", sp_lambda, s, knn_every_n_epochs=0, global_size=s.face_size)
    untrained = _face_probe(task.model, faces)
    data = SelfSupervisedDataModule(
        npz_path=str(npz_path), batch_size=s.face_batch_size, num_workers=s.num_workers, seed=seed
    )
    record = fit(task, data, max_epochs=s.face_epochs, progress=s.progress_bar)
    probe = _face_probe(task.model, faces)
    arm = FaceArmResult(
        arm=name,
        sp_lambda=sp_lambda,
        seed=seed,
        landmark_nme=probe.nme_pooled,
        landmark_nme_map=probe.nme_map,
        landmark_nme_mean_shape=probe.nme_mean_shape,
        landmark_nme_random_init=untrained.nme_pooled,
        landmark_nme_map_random_init=untrained.nme_map,
        alpha=probe.alpha_pooled,
        n_train_faces=probe.n_train,
        n_test_faces=probe.n_test,
        train_minutes=record.seconds / 60,
        history=[dict(h) for h in task.history],
    )
    log(
        f"faces {name} seed {seed}: NME pooled {arm.landmark_nme:.4f} (random init "
        f"{arm.landmark_nme_random_init:.4f}, mean shape {arm.landmark_nme_mean_shape:.4f}),"
        f" map {arm.landmark_nme_map:.4f}, {arm.train_minutes:.1f} min"
    )
    return arm


def run_face_arms(s: BenchSettings, work_dir: Path, log: Log) -> list[FaceArmResult]:
    """Every face arm: SimCLR and SimCLR + SP for each face seed."""
    faces = face_crop_arrays(s)
    npz = work_dir / "faces.npz"
    np.savez(
        npz, x_train=faces.train_images, x_test=faces.test_images,
        y_train=np.zeros(len(faces.train_images), np.int64),
        y_test=np.zeros(len(faces.test_images), np.int64),
    )  # fmt: skip
    log(f"faces: {len(faces.train_images)} train / {len(faces.test_images)} test")
    return [
        run_face_arm(lam, seed, faces, npz, s, log)
        for seed in s.face_seeds
        for lam in (0.0, s.sp_lambda)
    ]
