"""What the landmark benchmark learns about WorldComp2D beyond its headline row.

- :func:`run_ablations`: each variant of
  :data:`~wherewhat.methods.worldcomp2d.settings.ABLATIONS` (i.i.d. instead of walking
  fixation jitter; four contrastive pairs per face instead of one) trained on the same faces
  under the same stage budgets, scored on the validation split without the refiner, next to
  the benchmarked model's ``worldcomp2d_no_refiner``.
- :func:`encoder_curve`: how the encoder's training length shows in landmarks: a short banked
  localizer probe fitted on each snapshot the encoder stage saved (and on the final encoder),
  validation NME against encoder epochs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.methods.worldcomp2d.settings import LandmarkBenchSettings, run_args
from wherewhat.methods.worldcomp2d.store import TrainedStore
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.methods.worldcomp2d.training_runs import (
    EXPECTED_WARNINGS,
    ValidationFaces,
    train_worldcomp2d,
)
from wherewhat.training.fit import fit

__all__ = ["encoder_curve", "run_ablations"]

Log = Callable[[str], None]


def run_ablations(
    settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """Train (or load) every ablation of ``settings``; returns (name -> validation NME without
    the refiner, name -> its training records, name -> its network without the refiner)."""
    nmes: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for name in settings.ablations:
        task, data, records = train_worldcomp2d(settings, store, log, ablation=name)
        model = task.export_model()
        model.use_refiner = False
        nmes[name] = ValidationFaces.of(data).nme(model)
        details[name] = {
            "training": {stage: record.to_dict() for stage, record in records.items()},
        }
        models[name] = model
        log(f"ablation {name}: NME {100 * nmes[name]:.2f} %")
    return nmes, details, models


def _probe_localizer(
    encoder_state: dict[str, torch.Tensor], settings: LandmarkBenchSettings, faces: ValidationFaces
) -> float:
    """Validation NME of a localizer trained for ``probe_epochs`` on a code bank of the encoder
    ``encoder_state`` (``probe_bank`` augmentations per face)."""
    model_args, data_args = run_args(settings, "localizer")
    model_args.update(code_bank=settings.probe_bank, init_from=None)
    task = WorldComp2DTask(**model_args)
    task.model.encoder.load_state_dict(encoder_state)
    task.loaded_parts = ("encoder",)  # loaded here, not through init_from
    data = FaceLandmarkDataModule(**data_args)
    pl.seed_everything(settings.seed, verbose=False)
    fit(
        task, data, max_epochs=settings.probe_epochs, progress=settings.progress_bar,
        expected_warnings=EXPECTED_WARNINGS,
    )  # fmt: skip
    return faces.nme(task.model)


def encoder_curve(
    settings: LandmarkBenchSettings, store: TrainedStore, faces: ValidationFaces, log: Log
) -> list[dict[str, float]]:
    """``{"encoder_epoch", "encoder_fraction", "nme"}`` rows: the probe on every saved encoder
    snapshot and on the final encoder."""
    sources: list[tuple[float, dict[str, Any]]] = []
    for fraction in settings.encoder_snapshots:
        path = store.encoder_snapshot(fraction)
        if path.is_file():
            sources.append((fraction, torch.load(path, map_location="cpu", weights_only=True)))
        else:
            log(f"encoder curve: no snapshot {path} (the encoder ran too few epochs?)")
    checkpoint_path, meta = store.paths("encoder")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    final_epochs = int(json.loads(meta.read_text())["record"]["epochs"])
    prefix = "model.encoder."
    final = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items()
             if k.startswith(prefix)}  # fmt: skip
    sources.append((1.0, {"encoder": final, "epoch": final_epochs}))
    rows = []
    for fraction, snapshot in sources:
        value = _probe_localizer(snapshot["encoder"], settings, faces)
        rows.append(
            {"encoder_epoch": int(snapshot["epoch"]), "encoder_fraction": fraction, "nme": value}
        )
        log(f"encoder curve: epoch {snapshot['epoch']}: probe NME {100 * value:.2f} %")
    return rows
