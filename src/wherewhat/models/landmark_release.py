"""Trained landmark models (face crop -> landmarks) as release files: weights only, loadable
without pickle.

:func:`write_release` stores a model (a face crop -> 68 landmarks network) as ``<name>.pt``,
a dict of tensors and plain values (its spec, see :mod:`wherewhat.models.spec`, its state
dict, whether WorldComp2D's refiner runs) that ``torch.load(..., weights_only=True)`` reads,
and ``<name>.json``, what it is: the fingerprints of the training runs that made it, when they
were trained, the validation NME and speed measured by the benchmark, the command. Both files
are written atomically. :func:`load_release` builds the network back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wherewhat.errors import ConfigError
from wherewhat.io import atomic_torch_save, write_atomic
from wherewhat.models.spec import build_module, module_spec

__all__ = ["RELEASE_FORMAT", "load_release", "write_release"]

RELEASE_FORMAT = "wherewhat-landmark-model-1"


def write_release(
    folder: str | Path,
    name: str,
    model: nn.Module,
    info: dict[str, Any],
    storage_dtype: torch.dtype = torch.float32,
) -> tuple[Path, Path]:
    """Write ``model`` as ``folder/<name>.pt`` (weights only) and ``folder/<name>.json``
    (``info`` plus the format and file names); returns both paths. ``storage_dtype``
    ``torch.float16`` halves the file; loading casts the weights back to the model's dtype."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.pt"
    state = {
        k: (v.to(storage_dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": RELEASE_FORMAT,
        "spec": module_spec(model),
        "state_dict": state,
        "use_refiner": bool(getattr(model, "use_refiner", False)),
    }
    atomic_torch_save(payload, weights)
    meta = folder / f"{name}.json"
    record = {"format": RELEASE_FORMAT, "name": name, "weights": weights.name, **info}
    write_atomic(meta, json.dumps(record, indent=2, default=str) + "\n")
    return weights, meta


def load_release(path: str | Path) -> nn.Module:
    """The network of a release file (:func:`write_release`), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: release file not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != RELEASE_FORMAT:
        raise ConfigError(f"{path}: not a wherewhat landmark release (format {RELEASE_FORMAT!r})")
    class_path = str(payload["spec"].get("class_path", ""))
    if not class_path.startswith("wherewhat."):  # build only our own networks
        raise ConfigError(f"{path}: model class {class_path!r} is not a wherewhat network")
    model = build_module(payload["spec"], nn.Module)
    model.load_state_dict(payload["state_dict"])
    if hasattr(model, "use_refiner"):  # WorldComp2D: whether its refiner runs
        model.use_refiner = bool(payload["use_refiner"])
    return model.eval()
