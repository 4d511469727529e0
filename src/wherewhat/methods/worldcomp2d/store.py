"""The landmark benchmark's folder of trained runs, so that models trained in separate processes
are evaluated together later.

Per training run (``worldcomp2d-{encoder,localizer,refiner}``, ``heatmap_baseline``,
``pfld_baseline``, ablation runs ``ablation-<name>-<stage>``): ``<stem>.ckpt`` (a weights-only
Lightning checkpoint) and ``<stem>.json`` (the settings that decided the training, their
fingerprint, when it was trained, the run's record and the split), the JSON written last, both
atomically; the encoder's snapshots are ``worldcomp2d-encoder-at<fraction>.pt``. A saved run is reused only when
its fingerprint matches the current settings; otherwise :meth:`TrainedStore.saved` names the
file and the differences.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wherewhat.errors import ConfigError
from wherewhat.io import json_fingerprint
from wherewhat.methods.worldcomp2d.differences import setting_differences
from wherewhat.methods.worldcomp2d.settings import ABLATIONS, STAGES, runs_of

__all__ = ["TrainedStore"]


@dataclass
class TrainedStore:
    """The folder of trained runs (see the module docstring)."""

    folder: Path

    def paths(self, run: str) -> tuple[Path, Path]:
        """(checkpoint, JSON) of training run ``run``."""
        stem = f"worldcomp2d-{run}" if run in STAGES else run
        return self.folder / f"{stem}.ckpt", self.folder / f"{stem}.json"

    def encoder_snapshot(self, fraction: float) -> Path:
        """The encoder's weights after the fraction ``fraction`` of its epochs."""
        return self.folder / f"worldcomp2d-encoder-at{fraction:g}.pt"

    def saved(self, run: str, chosen: Mapping[str, Any]) -> dict[str, Any] | None:
        """The saved entry of ``run`` trained with ``chosen`` settings, ``None`` if there is
        none; ``ConfigError`` naming the file and the differences if it had other settings."""
        checkpoint, meta = self.paths(run)
        if not meta.is_file():
            return None
        entry = json.loads(meta.read_text())
        if entry.get("fingerprint") != json_fingerprint(chosen):
            differences = setting_differences(entry.get("settings"), chosen)
            raise ConfigError(
                f"{meta}: saved {run!r} was trained with other settings: "
                + "; ".join(differences or ["(fingerprint only)"])
                + ". Pass --retrain (retrain=True) to train it again and replace it, or use "
                "another --trained-dir; models trained with different settings are never mixed"
            )
        if not checkpoint.is_file():
            raise ConfigError(f"{meta}: its weights {checkpoint} are missing; pass --retrain")
        return entry

    def forget(self, model: str) -> None:
        """Drop ``model``'s saved runs (their JSON, which marks a run as done); ``model`` may
        be an ablation, ``worldcomp2d_<name>``."""
        name = model.removeprefix("worldcomp2d_")
        runs = [f"ablation-{name}-{stage}" for stage in STAGES] if name in ABLATIONS else []
        for run in runs or runs_of(model):
            self.paths(run)[1].unlink(missing_ok=True)
