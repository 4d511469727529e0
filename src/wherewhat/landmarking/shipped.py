"""The landmark model that ships inside the package (no download, ever).

``wherewhat/landmarking/models/<name>.pt`` holds the weights (``torch.load(...,
weights_only=True)``), ``<name>.json`` its model card data (training data, validation NME,
speed, the command that reproduced it, the crop settings, the detector calibrations and the NME
of a few validation faces). No ONNX file ships (it would hold the weights again, in fp32): the
predictor exports the network for ONNX Runtime in memory when it loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wherewhat.errors import ConfigError

__all__ = ["SHIPPED_MODELS", "DEFAULT_MODEL", "shipped_weights", "shipped_card"]

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "worldcomp2d"


def shipped_weights(name: str = DEFAULT_MODEL) -> Path:
    """The weights file of a shipped model; a clear error when this install has none."""
    path = SHIPPED_MODELS / f"{name}.pt"
    if not path.is_file():
        available = sorted(p.stem for p in SHIPPED_MODELS.glob("*.pt"))
        raise ConfigError(
            f"no shipped landmark model {name!r} in {SHIPPED_MODELS} (available: "
            f"{available or 'none'})",
            hint="pass --model PATH.pt: a release file written by benchmarks/worldcomp2d.py",
        )
    return path


def shipped_card(name: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The model card data stored beside the weights."""
    return json.loads(shipped_weights(name).with_suffix(".json").read_text())
