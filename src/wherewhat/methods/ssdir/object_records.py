"""SSDIR's per-object records on disk: box, score, z_what, depth per inferred object, per scene.

``wherewhat predict`` with :class:`SSDIRRecordsWriter` as a callback writes them next to the
run's ``predictions.pt``::

    wherewhat predict --config configs/ssdir/default.yaml --ckpt_path .../last.ckpt \\
        --trainer.callbacks+=wherewhat.methods.ssdir.object_records.SSDIRRecordsWriter \\
        --trainer.callbacks.path=ssdir_records.json

As a library: :func:`write_records` / :func:`read_records` on the output of
``SSDIR.encode`` (one dict of tensors per scene).

Two formats, chosen by the file suffix:

- ``.json``: ``{"format": "wherewhat.ssdir.records/1", "box_format": ..., "scenes": [{"scene":
  i, "objects": [{"box": [x1, y1, x2, y2], "score": s, "label": k, "z_what": [...], "depth": d,
  "anchor_index": a}, ...]}, ...]}``; float32 values are written exactly (a float32 is a double
  exactly, and JSON keeps doubles to the last bit), so reading gives the same tensors back.
- ``.pt``: ``{"format": ..., "box_format": ..., "scenes": [{"scene": i, "boxes": (n, 4), ...}]}``
  with the tensors as they are (``torch.load(..., weights_only=True)`` reads it).

Files are written atomically (temporary file + rename): a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from wherewhat.io import atomic_torch_save, write_atomic

__all__ = [
    "RECORDS_FORMAT",
    "BOX_FORMAT",
    "SSDIRRecordsWriter",
    "records_to_json",
    "records_from_json",
    "write_records",
    "read_records",
]

RECORDS_FORMAT = "wherewhat.ssdir.records/1"
BOX_FORMAT = "xyxy pixels; origin at the top-left corner of the top-left pixel"
# Record key -> (JSON name of one object's value, dtype when read back).
_FIELDS: dict[str, tuple[str, torch.dtype]] = {
    "boxes": ("box", torch.float32),
    "scores": ("score", torch.float32),
    "labels": ("label", torch.int64),
    "z_what": ("z_what", torch.float32),
    "depth": ("depth", torch.float32),
    "anchor_index": ("anchor_index", torch.int64),
}
REQUIRED = ("boxes", "scores", "z_what", "depth")


def _checked(records: Sequence[Mapping[str, Tensor]], scene_ids: Sequence[int] | None):
    """Records with every tensor on the CPU and consistent lengths, plus the scene ids."""
    if scene_ids is None:
        scene_ids = range(len(records))
    scene_ids = [int(i) for i in scene_ids]
    if len(scene_ids) != len(records):
        raise ValueError(f"{len(records)} records but {len(scene_ids)} scene ids")
    checked = []
    for position, record in enumerate(records):
        where = f"record {position} (scene {scene_ids[position]})"
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"{where}: missing {missing}; expected SSDIR.encode's keys")
        n = len(record["boxes"])
        out = {}
        for key, value in record.items():
            if key not in _FIELDS:
                continue
            value = torch.as_tensor(value).detach().cpu()
            if len(value) != n:
                raise ValueError(f"{where}: {n} boxes but {len(value)} entries in '{key}'")
            out[key] = value
        if out["boxes"].ndim != 2 or out["boxes"].shape[1] != 4:
            raise ValueError(f"{where}: boxes must be (n, 4), got {tuple(out['boxes'].shape)}")
        checked.append(out)
    return checked, scene_ids


def records_to_json(
    records: Sequence[Mapping[str, Tensor]], scene_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """The JSON document (a dict) of per-scene records; ``scene_ids`` default 0, 1, ..."""
    checked, scene_ids = _checked(records, scene_ids)
    keys = [k for k in _FIELDS if checked and all(k in r for r in checked)] or list(REQUIRED)
    z_what_size = next((r["z_what"].shape[-1] for r in checked if r["z_what"].ndim == 2), None)
    scenes = []
    for scene, record in zip(scene_ids, checked, strict=True):
        for key in keys:
            value = record[key]
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"scene {scene}: non-finite values in '{key}'")
        columns = {_FIELDS[k][0]: record[k].tolist() for k in keys}
        count = len(record["boxes"])
        objects = [{name: values[i] for name, values in columns.items()} for i in range(count)]
        scenes.append({"scene": scene, "objects": objects})
    return {
        "format": RECORDS_FORMAT,
        "box_format": BOX_FORMAT,
        "fields": [_FIELDS[k][0] for k in keys],
        "z_what_size": z_what_size,
        "scenes": scenes,
    }


def records_from_json(document: Mapping[str, Any], source: str = "document") -> list[dict]:
    """Per-scene records (``scene`` int plus tensors) from :func:`records_to_json`'s dict."""
    if document.get("format") != RECORDS_FORMAT:
        raise ValueError(
            f"{source}: expected format {RECORDS_FORMAT!r}, got {document.get('format')!r}"
        )
    names = set(document.get("fields", []))
    keys = [k for k, (name, _) in _FIELDS.items() if name in names]
    # Empty scenes keep the documented shapes: boxes (0, 4), z_what (0, D).
    trailing = {"boxes": (4,), "z_what": (int(document.get("z_what_size") or 0),)}
    out = []
    for index, scene in enumerate(document.get("scenes", [])):
        objects = scene.get("objects", [])
        record: dict[str, Any] = {"scene": int(scene["scene"])}
        for key in keys:
            name, dtype = _FIELDS[key]
            try:
                values = [obj[name] for obj in objects]
            except KeyError:
                raise ValueError(
                    f"{source}: scene entry {index} has objects without '{name}'"
                ) from None
            tensor = torch.tensor(values, dtype=dtype)
            if not objects:
                tensor = tensor.reshape(0, *trailing.get(key, ()))
            record[key] = tensor
        out.append(record)
    return out


def write_records(
    records: Sequence[Mapping[str, Tensor]],
    path: str | Path,
    scene_ids: Sequence[int] | None = None,
) -> Path:
    """Write per-scene records to ``path`` (``.json`` or ``.pt``, atomically); returns the path."""
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(records_to_json(records, scene_ids), separators=(",", ":"))
        return write_atomic(path, text + "\n")
    if path.suffix == ".pt":
        checked, ids = _checked(records, scene_ids)
        scenes = [{"scene": i, **r} for i, r in zip(ids, checked, strict=True)]
        atomic_torch_save(
            {"format": RECORDS_FORMAT, "box_format": BOX_FORMAT, "scenes": scenes}, path
        )
        return path
    raise ValueError(f"{path}: records are written as .json or .pt, got suffix {path.suffix!r}")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Per-scene records (``scene`` int plus ``boxes``, ``scores``, ``z_what``, ``depth`` and,
    when written, ``labels`` / ``anchor_index`` tensors) from a ``.json`` or ``.pt`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: records file not found")
    if path.suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return records_from_json(document, str(path))
    if path.suffix == ".pt":
        document = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(document, Mapping) or document.get("format") != RECORDS_FORMAT:
            raise ValueError(f"{path}: expected an SSDIR records file ({RECORDS_FORMAT})")
        return [dict(scene) for scene in document["scenes"]]
    raise ValueError(f"{path}: records are read from .json or .pt, got suffix {path.suffix!r}")


class SSDIRRecordsWriter(BasePredictionWriter):
    """Lightning callback: after ``predict``, write every scene's SSDIR records to ``path``.

    Args:
        path: ``.json`` or ``.pt``; a relative path is taken inside the trainer's
            ``default_root_dir`` (the run directory under ``wherewhat predict``). With several
            processes each writes its own scenes to ``<stem>.rank<r><suffix>``.

    Scene ids are the dataset indices of the predicted scenes (Lightning's ``batch_indices``),
    so a record points back to its scene. ``predict_step`` must return one record dict per
    image (``SSDIRTask`` does).
    """

    def __init__(self, path: str = "ssdir_records.json"):
        super().__init__(write_interval="epoch")
        if Path(path).suffix not in (".json", ".pt"):
            raise ValueError(f"SSDIRRecordsWriter: path must end in .json or .pt, got {path!r}")
        self.path = path
        self.written: Path | None = None

    def _target(self, trainer: pl.Trainer) -> Path:
        path = Path(self.path)
        if not path.is_absolute():
            path = Path(trainer.default_root_dir) / path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence,
    ) -> None:
        # One dataloader: a list of per-batch outputs; several: a list of such lists.
        batches = predictions
        indices = batch_indices
        if (
            predictions
            and isinstance(predictions[0], list)
            and predictions[0]
            and isinstance(predictions[0][0], list)
        ):
            batches = [b for loader in predictions for b in loader]
            indices = [i for loader in batch_indices for i in loader]
        records, scene_ids = [], []
        counter = 0
        for batch_number, batch in enumerate(batches):
            if not isinstance(batch, list | tuple):
                raise ValueError(
                    f"predict batch {batch_number}: expected a list of per-image record dicts, "
                    f"got {type(batch).__name__}"
                )
            ids = list(indices[batch_number]) if indices and len(indices) > batch_number else []
            if len(ids) != len(batch):  # no sampler indices: count scenes in order
                ids = list(range(counter, counter + len(batch)))
            records.extend(batch)
            scene_ids.extend(int(i) for i in ids)
            counter += len(batch)
        self.written = write_records(records, self._target(trainer), scene_ids)
