"""Trained detectors and SSDIRs of the benchmark, kept on disk so that a later command reuses
them (a seed's detector serves arms run in another command; a stored SSDIR is re-evaluated
without training).

Each file is ``<root>/<kind>-<name>-<seed>-<fingerprint>.pt``, holding the weights and what
training measured (:class:`TrainingRecord`). The fingerprint covers every setting that changes
the trained weights, so a file is only reused by a run that would have trained it the same way.
Files are written atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wherewhat.io import atomic_torch_save, json_fingerprint
from wherewhat.methods.ssdir.settings import SSDIRBenchSettings
from wherewhat.training.fit import FitRecord

__all__ = ["ModelStore", "TrainingRecord"]

# Settings that shape a detector's weights; an SSDIR's also depend on its own arguments.
_DETECTOR_FIELDS = (
    "scenes", "n_train", "n_test", "val_fraction", "batch_size", "detector_epochs",
    "detector_max_steps", "validate", "detector_args", "data_args",
)  # fmt: skip
_SSDIR_FIELDS = ("ssdir_epochs", "ssdir_max_steps", "early_stopping_patience")


@dataclass(frozen=True)
class TrainingRecord:
    """What one training measured: wall and CPU seconds, optimizer steps, the monitored value
    of the kept checkpoint (None without validation) and after every epoch (``val_curve``),
    and ``(step, probe accuracy)`` on a subset of the scenes after every epoch
    (``probe_curve``, SSDIR only)."""

    seconds: float
    cpu_seconds: float
    steps: int
    best: float | None
    val_curve: tuple[float, ...] = ()
    probe_curve: tuple[tuple[int, float], ...] = ()

    @classmethod
    def of(
        cls,
        fit: FitRecord,
        val_curve: Sequence[float] = (),
        probe_curve: Sequence[tuple[int, float]] = (),
    ) -> TrainingRecord:
        return cls(
            fit.seconds, fit.cpu_seconds, fit.steps, fit.best, tuple(val_curve),
            tuple((int(step), float(acc)) for step, acc in probe_curve),
        )  # fmt: skip


class ModelStore:
    """Weights and training records under ``root`` (no root: nothing is kept or found)."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root)

    def _path(self, kind: str, name: str, seed: int, identity: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        return self.root / f"{kind}-{name}-{seed}-{json_fingerprint(identity, 12)}.pt"

    @staticmethod
    def detector_identity(s: SSDIRBenchSettings, variant: str) -> dict[str, Any]:
        values = s.to_json()
        identity = {"variant": variant, **{k: values[k] for k in _DETECTOR_FIELDS}}
        if s.precision != "32-true":  # named only when not the default: older files stay valid
            identity["precision"] = s.precision
        return identity

    @staticmethod
    def ssdir_identity(s: SSDIRBenchSettings, arm: str, dedup: str) -> dict[str, Any]:
        values = s.to_json()
        return {
            **ModelStore.detector_identity(s, s.arm_detector(arm)),
            **{k: values[k] for k in _SSDIR_FIELDS},
            "ssdir_args": s.arm_ssdir_args(arm),
            "dedup": dedup,
        }

    def load(
        self, kind: str, name: str, seed: int, identity: dict[str, Any], model: nn.Module
    ) -> TrainingRecord | None:
        """Fill ``model`` with the stored weights and return their record, or None when
        nothing is stored for this identity."""
        path = self._path(kind, name, seed, identity)
        if path is None or not path.is_file():
            return None
        stored = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(stored["state_dict"])
            training = dict(stored["training"])
            training["val_curve"] = tuple(training.get("val_curve") or ())
            training["probe_curve"] = tuple(
                (int(step), float(acc)) for step, acc in training.get("probe_curve") or ()
            )
            return TrainingRecord(**training)
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"{path}: not a stored {kind} of this benchmark ({err})") from err

    def save(
        self,
        kind: str,
        name: str,
        seed: int,
        identity: dict[str, Any],
        model: nn.Module,
        record: TrainingRecord,
    ) -> Path | None:
        path = self._path(kind, name, seed, identity)
        if path is not None:
            atomic_torch_save(
                {"state_dict": model.state_dict(), "training": dataclasses.asdict(record),
                 "identity": identity},
                path,
            )  # fmt: skip
        return path
