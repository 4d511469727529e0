"""Export a model to ONNX and prove that ONNX Runtime computes the same thing.

Exporter choice (torch 2.14): ``torch.onnx.export`` offers the TorchScript tracer
(``dynamo=False``) and the ``torch.export``-based one (``dynamo=True``, the default upstream).
We tested both on plain CNNs (BatchNorm, ReLU, pooling, Linear), torchvision ResNet-18 and
MobileNetV2, ``affine_grid`` + ``grid_sample`` (``align_corners=False``, zeros and border
padding), ``interpolate``, a grid built from ``linspace``/``meshgrid``/``cumsum``, ``roi_align``,
``nms`` and ``topk``, with a dynamic batch: both gave ONNX Runtime outputs within 1e-5 of torch
and equally fast ONNX Runtime graphs. The tracer exports in well under a second where the
dynamo exporter needs 1-12 s (MobileNetV2: 0.7 s vs 12 s); but the tracer cannot export
``adaptive_avg_pool2d`` to a size that does not divide its input (VGG at 64x64), which the
dynamo exporter can. Hence the default ``exporter="auto"``: the tracer first, the dynamo
exporter if the tracer fails to export or to match torch (warned and recorded); either can be
forced. The tracer's deprecation warning is silenced; its other warnings are kept in
:attr:`ExportResult.warnings` and re-emitted. A tracer can bake a shape or a branch into the
graph; the parity check below, run on the example batch and on a second batch size, is what
catches that.

Files are written atomically (temporary file, parity check, then rename): a model that fails
the check never appears at ``path``.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import onnx
import torch
from torch import nn

from wherewhat.bench.runtime import as_input_tuple, batch_size_of, make_ort_session
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.io import atomic_path
from wherewhat.training.checkpoint_file import read_checkpoint

__all__ = [
    "ExportResult",
    "OnnxParityError",
    "export_onnx",
    "export_checkpoint_to_onnx",
    "check_onnx_parity",
    "DEFAULT_OPSET",
]

Exporter = Literal["auto", "torchscript", "dynamo"]
DEFAULT_OPSET = 20  # the dynamo exporter's native opset; the tracer supports it too


class OnnxParityError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    """Where an exported model is and how closely it matches torch."""

    path: Path
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    checked_batch_sizes: list[int]
    max_abs_diff: float | None  # worst over outputs and checked batch sizes; None: not checked
    atol: float
    size_bytes: int
    export_seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _flatten_outputs(outputs: Any) -> list[tuple[str | None, torch.Tensor]]:
    """(name or None, tensor) for a tensor, a tuple/list of tensors or a dict of tensors."""
    if isinstance(outputs, torch.Tensor):
        return [(None, outputs)]
    if isinstance(outputs, dict):
        return [(str(k), v) for k, v in outputs.items()]
    if isinstance(outputs, tuple | list):
        return [(None, v) for v in outputs]
    raise TypeError(
        f"model output must be a tensor, a tuple/list or a dict of tensors, got {type(outputs)}"
    )


def _default_names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]


def _grow_batch(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The same inputs with one more batch element: a shifted copy of the first, so that the
    extra element differs from the others (a shape or a batch mix-up baked in shows up)."""
    grown = []
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise TypeError("dynamic-batch parity check needs tensor inputs with a batch dim")
        extra = x[:1].roll(1, dims=-1) if x.dim() > 1 else x[:1]
        grown.append(torch.cat([x, extra], dim=0))
    return tuple(grown)


def check_onnx_parity(
    model: nn.Module,
    session: Any,
    inputs: tuple[Any, ...],
    atol: float,
    path: str | os.PathLike = "<onnx model>",
) -> float:
    """Max abs difference between ``model(*inputs)`` and the ONNX session on the same inputs.

    Raises :class:`OnnxParityError` (naming the file, output, batch size and difference) if
    an output differs by more than ``atol``, has another shape, or is not finite in one only.
    """
    with torch.inference_mode():
        expected = [t for _, t in _flatten_outputs(model(*inputs))]
    names = [node.name for node in session.get_inputs()]
    feed = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs, strict=True)}
    batch = batch_size_of(inputs)
    try:
        got = session.run(None, feed)
    except Exception as error:  # e.g. a shape baked into the graph by the tracer
        raise OnnxParityError(
            f"{path}: ONNX Runtime failed at batch size {batch}: {type(error).__name__}: {error}"
        ) from error
    if len(got) != len(expected):
        raise OnnxParityError(
            f"{path}: ONNX model returns {len(got)} outputs, torch returns {len(expected)}"
        )
    worst = 0.0
    out_names = [node.name for node in session.get_outputs()]
    for name, reference, actual in zip(out_names, expected, got, strict=True):
        reference = reference.detach().cpu().numpy()
        if reference.shape != actual.shape:
            raise OnnxParityError(
                f"{path}: output {name!r} at batch size {batch}: ONNX shape {actual.shape}, "
                f"torch shape {reference.shape}"
            )
        if reference.size == 0:
            continue
        same_nonfinite = np.array_equal(np.isfinite(reference), np.isfinite(actual))
        finite = np.isfinite(reference) & np.isfinite(actual)
        diff = float(np.max(np.abs(reference[finite] - actual[finite]), initial=0.0))
        if not same_nonfinite:
            diff = float("inf")
        worst = max(worst, diff)
        if not diff <= atol:
            raise OnnxParityError(
                f"{path}: output {name!r} at batch size {batch}: max |onnxruntime - torch| = "
                f"{diff:.3g} > atol {atol:.3g}"
            )
    return worst


def _export_warnings(
    caught: list[warnings.WarningMessage],
) -> list[tuple[str, type[Warning], bool]]:
    """The exporter's warnings worth keeping, deduplicated: ``(text with its source location,
    category, raised inside torch itself)``. The legacy exporter's deprecation notices are
    dropped: the choice of exporter is deliberate (see the module docstring)."""
    torch_dir = str(Path(torch.__file__).parent)
    kept: dict[str, tuple[type[Warning], bool]] = {}
    for w in caught:
        if issubclass(w.category, DeprecationWarning | FutureWarning):
            continue
        text = f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        kept.setdefault(text, (w.category, str(w.filename).startswith(torch_dir)))
    return [(text, category, from_torch) for text, (category, from_torch) in kept.items()]


@contextmanager
def _quiet_torchscript_failure_dump() -> Iterator[None]:
    """Silence the TorchScript exporter's dump of the whole IR graph when it fails.

    torch 2.14's ``setup_onnx_logging`` tests the function ``_jit_is_onnx_log_enabled``
    instead of calling it, so its log is always on and a failed export prints hundreds of
    lines before the exception (which we report ourselves, with the fallback we took).
    """
    original = getattr(torch._C, "_jit_onnx_log", None)
    if original is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = original


def _run_exporter(
    model: nn.Module,
    inputs: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    batch_outputs: list[bool],
    dynamic_batch: bool,
    opset: int,
    exporter: str,
) -> None:
    common = dict(input_names=input_names, output_names=output_names, opset_version=opset)
    if exporter == "torchscript":
        dynamic_axes = None
        if dynamic_batch:
            dynamic_axes = {name: {0: "batch"} for name in input_names}
            for name, has_batch in zip(output_names, batch_outputs, strict=True):
                if has_batch:
                    dynamic_axes[name] = {0: "batch"}
        with _quiet_torchscript_failure_dump():
            torch.onnx.export(
                model, inputs, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common
            )
    else:
        dynamic_shapes = None
        if dynamic_batch:
            batch = torch.export.Dim("batch")
            dynamic_shapes = tuple({0: batch} for _ in inputs)
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,  # one self-contained file
            verbose=False,
            **common,
        )


@dataclass
class _Attempt:
    """One exporter's try: where it wrote, what it said, how close it came to torch."""

    exporter: str
    seconds: float = 0.0
    warnings: list[tuple[str, type[Warning], bool]] = field(default_factory=list)
    checked: list[int] = field(default_factory=list)
    worst: float | None = None


def _export_and_check(
    model: nn.Module,
    inputs: tuple[Any, ...],
    tmp: Path,
    names: tuple[list[str], list[str], list[bool]],
    dynamic_batch: bool,
    opset: int,
    exporter: str,
    check_parity: bool,
    atol: float,
    report_path: Path,
) -> _Attempt:
    """Export to ``tmp`` with one exporter and run the parity checks; raises on failure."""
    attempt = _Attempt(exporter)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _run_exporter(model, inputs, tmp, *names, dynamic_batch, opset, exporter)
        except Exception as error:
            raise RuntimeError(
                f"{report_path}: ONNX export with exporter={exporter!r} failed "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0]})"
            ) from error
    attempt.seconds = time.perf_counter() - start
    attempt.warnings = _export_warnings(caught)
    for text, category, from_torch in attempt.warnings:
        if not from_torch:  # torch's own input checks (e.g. in affine_grid) are noise
            warnings.warn(text.split(": ", 1)[1], category, stacklevel=3)  # export_onnx's caller
    if check_parity:
        try:
            session = make_ort_session(tmp, threads=None)
        except Exception as error:
            raise RuntimeError(
                f"{report_path}: ONNX Runtime cannot load the model from exporter={exporter!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        attempt.worst = check_onnx_parity(model, session, inputs, atol, report_path)
        attempt.checked.append(batch_size_of(inputs))
        if dynamic_batch:
            grown = _grow_batch(inputs)
            worst = check_onnx_parity(model, session, grown, atol, report_path)
            attempt.worst = max(attempt.worst, worst)
            attempt.checked.append(batch_size_of(grown))
    return attempt


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    check_parity: bool = True,
    atol: float = 1e-4,
    exporter: Exporter = "auto",
) -> ExportResult:
    """Export ``model`` (in eval mode) to ``path`` and check it against torch in ONNX Runtime.

    ``example_inputs``: a tensor or tuple of tensors, ``(B, ...)`` when ``dynamic_batch``
    (then dim 0 of every input, and of every output whose dim 0 is B, is named ``batch``).
    Names default to ``input``/``output`` (``input0``, ``input1``, ... for several; dict
    outputs use their keys). With ``check_parity`` the model must match torch within ``atol``
    (max abs difference) on the example inputs and, if the batch is dynamic, on a batch one
    larger; otherwise :class:`OnnxParityError` is raised and nothing is written at ``path``.
    ``exporter``: ``"torchscript"``, ``"dynamo"``, or ``"auto"`` (the tracer, then the dynamo
    exporter if the tracer fails to export or to match; the fallback is warned about and
    recorded in :attr:`ExportResult.warnings`).
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    path = Path(path)
    inputs = as_input_tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            reference = _flatten_outputs(model(*inputs))
        batch = batch_size_of(inputs)
        in_names = list(input_names) if input_names else _default_names("input", len(inputs))
        if output_names:
            out_names = list(output_names)
        elif all(name is not None for name, _ in reference):
            out_names = [str(name) for name, _ in reference]
        else:
            out_names = _default_names("output", len(reference))
        if len(in_names) != len(inputs) or len(out_names) != len(reference):
            raise ValueError(
                f"got {len(in_names)} input names for {len(inputs)} inputs and "
                f"{len(out_names)} output names for {len(reference)} outputs"
            )
        batch_outputs = [t.dim() > 0 and t.shape[0] == batch for _, t in reference]
        names = (in_names, out_names, batch_outputs)

        order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
        notes: list[str] = []
        with atomic_path(path) as tmp:
            for index, name in enumerate(order):
                try:
                    attempt = _export_and_check(
                        model,
                        inputs,
                        tmp,
                        names,
                        dynamic_batch,
                        opset,
                        name,
                        check_parity,
                        atol,
                        path,
                    )
                    break
                except (RuntimeError, OnnxParityError) as error:
                    if index + 1 == len(order):
                        if not notes:
                            raise
                        raise type(error)(f"{error}; before that: {'; '.join(notes)}") from error
                    note = f"exporter {name!r} failed, fell back to {order[index + 1]!r}: {error}"
                    notes.append(str(error))
                    warnings.warn(note, RuntimeWarning, stacklevel=2)
    finally:
        model.train(was_training)

    opset_used = next(
        (
            o.version
            for o in onnx.load(str(path), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        ),
        opset,
    )
    fallbacks = [f"RuntimeWarning: fell back from a failed exporter: {n}" for n in notes]
    return ExportResult(
        path=path,
        exporter=attempt.exporter,
        opset=int(opset_used),
        input_names=in_names,
        output_names=out_names,
        dynamic_batch=dynamic_batch,
        checked_batch_sizes=attempt.checked,
        max_abs_diff=attempt.worst,
        atol=atol,
        size_bytes=path.stat().st_size,
        export_seconds=attempt.seconds,
        warnings=fallbacks + [text for text, _, _ in attempt.warnings],
    )


def _import_class(dotted: str, checkpoint: Path) -> type:
    module_name, _, class_name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{checkpoint}: cannot import module class {dotted!r}: {error}") from None
    return cls


def _resolve_module_class(checkpoint: Path, module_class: type | str | None) -> type:
    """The LightningModule class: given, or the ``_class_path`` LightningCLI stored in the
    checkpoint's hyper_parameters (imported automatically only inside ``wherewhat``, so a
    checkpoint can never make us import arbitrary code)."""
    if isinstance(module_class, str):
        cls = _import_class(module_class, checkpoint)
    elif module_class is not None:
        cls = module_class
    else:
        state = read_checkpoint(checkpoint)  # weights_only=True; damage reported, not unpickled
        class_path = (state.get("hyper_parameters") or {}).get("_class_path")
        if not class_path:
            raise DataFormatError(
                checkpoint,
                "no '_class_path' in hyper_parameters (saved by LightningCLI); pass "
                "module_class=<LightningModule class or 'package.module.Class'>",
            )
        if not str(class_path).startswith("wherewhat."):
            raise DataFormatError(
                checkpoint,
                f"module class {class_path!r} is outside wherewhat; pass module_class "
                "explicitly if you trust this checkpoint",
            )
        cls = _import_class(str(class_path), checkpoint)
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ConfigError(f"{checkpoint}: module class {cls!r} is not a LightningModule")
    return cls


def export_checkpoint_to_onnx(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    module_class: type | str | None = None,
    **export_kwargs: Any,
) -> ExportResult:
    """Export a Lightning checkpoint to ONNX, with the parity check of :func:`export_onnx`.

    The LightningModule is rebuilt with ``module_class.load_from_checkpoint`` (its
    ``hyper_parameters`` come from the checkpoint). ``module_class`` may be the class, a
    dotted path, or None to use the ``_class_path`` that LightningCLI stores (only classes
    inside ``wherewhat`` are imported that way).

    Hook: if the module defines ``export_model() -> nn.Module``, that network is exported
    (e.g. the inference network with its preprocessing, without losses or training-only
    branches); otherwise the LightningModule's own ``forward``. Inputs are uniform random in
    [0, 1) of ``input_shape`` if given, else ``module.example_input_array``.
    ``export_kwargs`` go to :func:`export_onnx` (names, ``dynamic_batch``, ``atol``, ...).
    """
    checkpoint = Path(checkpoint_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint file not found")
    if module_class is not None:  # else read (safely) while finding the class
        read_checkpoint(checkpoint)  # damaged or not Lightning's: one clear error
    cls = _resolve_module_class(checkpoint, module_class)
    module = cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    module.eval()

    if input_shape is not None:
        generator = torch.Generator().manual_seed(0)
        example: Any = torch.rand(*input_shape, generator=generator)
    else:
        example = getattr(module, "example_input_array", None)
        if example is None:
            raise ConfigError(
                f"{checkpoint}: {cls.__name__} has no example_input_array; pass input_shape, "
                "e.g. (1, 3, 128, 128)"
            )
    network = module.export_model() if callable(getattr(module, "export_model", None)) else module
    if not isinstance(network, nn.Module):
        raise TypeError(f"{cls.__name__}.export_model() must return an nn.Module, got {network!r}")
    return export_onnx(network, example, out_path, **export_kwargs)
