"""Device placement: configs and pipelines pick the accelerator ("auto"), every tensor a step
creates lives on its inputs' device, and CPU numbers stay what they were.

Without a GPU a wrong device cannot crash here, so three checks stand in for one:

- :class:`PlacementAudit` watches the step's torch calls (a ``TorchFunctionMode``) and lists
  every tensor factory called from ``src/wherewhat`` without ``device=`` and every generator
  used for a draw on another device. It runs each task's real training and validation step.
- :func:`on_meta` runs a function with its tensors and modules on the ``meta`` device (shapes
  without data): a CPU tensor mixed in raises, a CPU output fails the check, and it runs under
  the audit too. Data-dependent code (``.item()``, ``nonzero``) cannot run on meta; the audit
  covers it.
- Known values recorded before the device changes: CPU draws are unchanged.

Tests marked ``cuda`` run the main steps on a GPU; ``conftest.py`` skips them without one.
"""

from __future__ import annotations

import re
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import default_collate

import wherewhat
import wherewhat.methods.worldcomp2d.task as worldcomp2d_task
import wherewhat.training.fit as fit_module
from conftest import square_scenes
from wherewhat.geometry.saliency import boxes_saliency, jitter_boxes
from wherewhat.geometry.warp import saliency_to_grid, zoom
from wherewhat.methods.lzu.detection_task import LZUDetectionTask
from wherewhat.methods.lzu.detector import LZUDetector, scene_ssd
from wherewhat.methods.lzu.segmentation_net import LZUSegmenter, SegmentationNet
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask, boxes_from_label_map
from wherewhat.methods.spatial_prediction import (
    SpatialPredictionConfig,
    TinyCNN,
    ViewSampler,
    build_ssl_method,
)
from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask
from wherewhat.methods.spatial_prediction.views import CropConfig, sample_crop_boxes
from wherewhat.methods.ssdir.model import SSDIR
from wherewhat.methods.ssdir.task import SSDIRTask
from wherewhat.methods.worldcomp2d.model import WorldComp2D, sample_landmark_subset
from wherewhat.methods.worldcomp2d.parts import (
    extract_views,
    grid_fixations,
    heatmap_peak_offsets,
    heatmap_targets,
    jitter_fixations,
    proximity_weights,
    sample_contrastive_views,
)
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.metrics.detection import DetectionAP
from wherewhat.metrics.landmarks import auc, cumulative_error_curve
from wherewhat.models.landmark_baselines import PFLDRegressor, PIPHeatmapNet
from wherewhat.models.ssd import SSDDetector
from wherewhat.tasks.digits import DigitClassifierTask
from wherewhat.tasks.landmark_baselines import PFLDTask, PIPHeatmapTask
from wherewhat.tasks.ssd import SSDTask
from wherewhat.training.config_files import expand_config_bases

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "wherewhat"
PACKAGE = Path(wherewhat.__file__).resolve().parent  # the code the audit watches
META = torch.device("meta")

# Tasks log through Lightning; without a trainer that only warns.
pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*", "ignore:.*LeafSpec.*")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# The audit and the meta runner

FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
    torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.tensor, torch.scalar_tensor,
}  # fmt: skip


class PlacementAudit(TorchFunctionMode):
    """Records, as ``"file:line: what"``, tensor factories called without ``device=`` and
    generators used for a draw on another device, by code under ``roots`` (the calling
    frame itself, not code it calls in torch / torchvision / torchmetrics)."""

    def __init__(self, roots: Iterable[Path] = (PACKAGE,)):
        super().__init__()
        self.roots = tuple(str(root) for root in roots)
        self.found: list[str] = []

    def _caller(self) -> str | None:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if frame.filename == __file__ and frame.name in ("__torch_function__", "_caller"):
                continue
            if "/torch/" in frame.filename:
                continue  # torch's own Python wrappers (e.g. torch.functional)
            if frame.filename.startswith(self.roots):
                return f"{Path(frame.filename).name}:{frame.lineno}: {frame.line}"
            return None
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        unplaced = func in FACTORIES and kwargs.get("device") is None
        if unplaced or generator is not None:
            where = self._caller()
            if where is not None and unplaced:
                self.found.append(f"{where}  [{func.__name__} without device=]")
            if where is not None and generator is not None:
                device = kwargs.get("device")
                if device is None:
                    tensors = (a for a in args if isinstance(a, Tensor))
                    device = next(tensors, torch.empty(0)).device  # no tensor: a CPU draw
                if torch.device(device).type != generator.device.type:
                    self.found.append(
                        f"{where}  [{func.__name__}: a {generator.device.type} generator for a "
                        f"{torch.device(device).type} draw]"
                    )
        return func(*args, **kwargs)


def audited(fn: Callable[[], Any]) -> list[str]:
    """Run ``fn`` under a :class:`PlacementAudit`; its findings, each once, in order."""
    audit = PlacementAudit()
    with audit:
        fn()
    return list(dict.fromkeys(audit.found))


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor | nn.Module):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return _tensors([getattr(value, name) for name in value.__dataclass_fields__])
    return []


def on_meta(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` with every tensor / module argument on ``meta`` under the audit; assert that
    nothing was created off-device and every output tensor is on ``meta``."""
    args, kwargs = _to(args, META), _to(kwargs, META)
    result: list[Any] = []
    found = audited(lambda: result.append(fn(*args, **kwargs)))
    assert not found, "tensors created off the inputs' device:\n" + "\n".join(found)
    outputs = _tensors(result[0])
    assert outputs, f"{fn.__name__} returned no tensor"
    off = [tuple(t.shape) for t in outputs if t.device != META]
    assert not off, f"{fn.__name__}: outputs of shapes {off} are not on meta"
    return result[0]


def test_the_audit_catches_an_unplaced_factory_and_a_foreign_generator():
    here = (Path(__file__),)

    def step(x: Tensor) -> Tensor:
        return x + torch.zeros(3)  # no device=: a CPU tensor next to a GPU one

    audit = PlacementAudit(here)
    with audit:
        step(torch.ones(3))
        torch.multinomial(torch.ones(2, 3, device=META), 1, generator=torch.Generator())
    assert any("zeros without device=" in f for f in audit.found), audit.found
    assert any("a cpu generator for a meta draw" in f for f in audit.found), audit.found
    placed = PlacementAudit(here)
    with placed:
        torch.zeros(3, device="cpu")
        torch.rand(2, generator=torch.Generator(), device="cpu")
    assert placed.found == []


def test_on_meta_fails_on_a_cpu_output_and_on_mixing():
    with pytest.raises(AssertionError, match="not on meta"):
        on_meta(lambda x: (x, torch.zeros(2, device="cpu")), torch.ones(2))
    with pytest.raises(RuntimeError, match="device"):
        on_meta(lambda x: torch.cat([x, torch.ones(2, device="cpu")]), torch.ones(2))


# --------------------------------------------------------------------------------------------
# Tasks and batches: tiny networks, synthetic data


WC_TINY = dict(
    crop_size=64,
    encoder_channels=(8, 8, 16, 16, 16, 32),
    encoder_hidden=32,
    latent=16,
    localizer_hidden=(64, 64),
    refiner_width=6,
    refiner_groups=2,
    refiner_blocks=1,
)
LZU_ORIGINAL, LZU_INPUT, LZU_GRID = (128, 256), (64, 128), (9, 15)


def _faces(n: int = 2, size: int = 64, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 3, size, size, generator=g),
        "points": torch.rand(n, 68, 2, generator=g) * (size - 16) + 8,
        "affine": torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone(),
    }


def _scenes(size: tuple[int, int], n: int = 2, seed: int = 0) -> dict[str, Any]:
    """Bright squares with boxes, labels and masks (digit stand-ins)."""
    return square_scenes(n, size, (12, 24), seed)


def _lzu_task(kind: str, saliency: str) -> pl.LightningModule:
    def network(sal: str) -> nn.Module:
        if kind == "detection":
            detector = scene_ssd(LZU_ORIGINAL, LZU_INPUT, width_mult=0.125)
            return LZUDetector(detector, LZU_ORIGINAL, saliency=sal, grid_shape=LZU_GRID)
        return LZUSegmenter(SegmentationNet(), LZU_ORIGINAL, LZU_INPUT, saliency=sal,
                            grid_shape=LZU_GRID)  # fmt: skip

    task_cls = LZUDetectionTask if kind == "detection" else LZUSegmentationTask
    options = {"prior_score_threshold": 0.0} if kind == "detection" else {}
    task = task_cls(network(saliency), **options)
    if saliency == "fixed":
        boxes = [torch.tensor([[100.0, 50.0, 120.0, 62.0], [30.0, 60.0, 50.0, 70.0]])]
        task.set_fixed_saliency(boxes_saliency(boxes, LZU_ORIGINAL, LZU_GRID, amplitude=4.0))
    if saliency == "adaptive":
        task.attach_prior(task_cls(network("uniform"), **options).model)
    return task


def _ssl_task(base: str) -> tuple[pl.LightningModule, dict]:
    heads = {"projection_hidden_dim": 32, "projection_dim": 16}
    if base == "byol":
        heads["prediction_hidden_dim"] = 32
    sp = SpatialPredictionConfig(weight=0.5, num_pairs=1, local_size=(8, 8), hidden_dim=16)
    model = build_ssl_method(base, TinyCNN(8), spatial_prediction=sp, **heads)
    task = SelfSupervisedTask(model, global_size=16, knn_train_limit=64, knn_test_limit=32)
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    sampler, g = task.view_sampler(), torch.Generator().manual_seed(0)
    return task, default_collate([sampler(image, g) for image in images])


def _landmark_task(cls: type, network: nn.Module) -> tuple[pl.LightningModule, dict]:
    batch = _faces()
    network.set_mean_shape(batch["points"])
    return cls(network), batch


def _case(name: str) -> tuple[pl.LightningModule, Any, bool]:
    """(task, batch, whether it has a validation step to run) for one case name."""
    torch.manual_seed(0)
    kind, _, variant = name.partition(":")
    if kind == "worldcomp2d":
        task = WorldComp2DTask(WorldComp2D(**WC_TINY), stage=variant, refiner_landmarks_per_step=3)
        return task, _faces(), True
    if kind in ("lzu_detection", "lzu_segmentation"):
        return _lzu_task(kind[4:], variant), _scenes(LZU_ORIGINAL), True
    if kind == "ssdir":
        detector = SSDDetector(image_size=(64, 64), width_mult=0.125)
        small = {"z_what_size": 16, "what_hidden": 1, "glimpse_size": 16, "decoder_width": 64}
        return SSDIRTask(SSDIR(detector, **small)), _scenes((64, 64)), True
    if kind == "ssd":
        return SSDTask(SSDDetector(image_size=(64, 64), width_mult=0.125)), _scenes((64, 64)), True
    if kind == "spatial_prediction":
        return (*_ssl_task(variant), False)
    if kind == "pfld":
        return (*_landmark_task(PFLDTask, PFLDRegressor(width_mult=0.25, crop_size=64)), True)
    if kind == "pip":
        network = PIPHeatmapNet(
            backbone="mobilenet_v2", width_mult=0.25, num_neighbors=4, crop_size=64
        )
        return (*_landmark_task(PIPHeatmapTask, network), True)
    if kind == "digits":
        return DigitClassifierTask(), (torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])), True
    raise AssertionError(name)


CASES = [
    "worldcomp2d:encoder", "worldcomp2d:localizer", "worldcomp2d:refiner",
    "lzu_detection:uniform", "lzu_detection:fixed", "lzu_detection:adaptive",
    "lzu_segmentation:uniform", "lzu_segmentation:fixed", "lzu_segmentation:adaptive",
    "ssdir", "ssd", "spatial_prediction:simclr", "spatial_prediction:byol",
    "pfld", "pip", "digits",
]  # fmt: skip


def _run_steps(task: pl.LightningModule, batch: Any, validate: bool) -> Tensor:
    """A training step (with backward), then a validation step and its epoch end."""
    task.train()
    loss = task.training_step(batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    loss.backward()
    if validate:
        task.eval()
        with torch.no_grad():
            task.validation_step(batch, 1)
            hook = getattr(task, "on_validation_epoch_end", None)
            if hook is not None:
                hook()
    return loss


@pytest.mark.parametrize("name", CASES)
def test_steps_create_every_tensor_on_the_inputs_device(name):
    task, batch, validate = _case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = audited(lambda: _run_steps(task, batch, validate))
    assert not found, f"{name}: tensors created without the inputs' device:\n" + "\n".join(found)


def test_encoder_validation_makes_its_generator_on_the_images_device(monkeypatch):
    made: list[Any] = []

    class TorchWithRecordedGenerators:
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        def Generator(self, device=None):  # noqa: N802 (torch's name)
            made.append(device)
            return torch.Generator(device="cpu" if device is None else device)

    monkeypatch.setattr(worldcomp2d_task, "torch", TorchWithRecordedGenerators())
    task, batch, _ = _case("worldcomp2d:encoder")
    task.eval()
    task.validation_step(batch, 3)
    assert made == [batch["image"].device]


# --------------------------------------------------------------------------------------------
# Shape logic on meta


def test_worldcomp2d_pieces_stay_on_the_inputs_device():
    views = on_meta(extract_views, torch.rand(2, 3, 32, 32), torch.rand(2, 4, 2) * 32, (9, 17), 9)
    assert views.shape == (2, 4, 6, 9, 9)
    assert on_meta(lambda f: jitter_fixations(f, 5, 3), grid_fixations(64, 3)).shape == (5, 9, 2)
    subset = on_meta(lambda: sample_landmark_subset(2, 5, 3, device=META))
    assert subset.shape == (2, 3) and subset.dtype == torch.long
    target, valid = on_meta(heatmap_targets, torch.rand(2, 5, 2), torch.rand(2, 5, 2))
    assert target.shape == (2, 5, 27, 27) and valid.shape == (2, 5)
    assert on_meta(heatmap_peak_offsets, torch.rand(2, 5, 27, 27)).shape == (2, 5, 2)
    weights = on_meta(
        proximity_weights, torch.rand(4, 2), torch.rand(4, 5, 2), torch.zeros(2).long()
    )
    assert weights.shape == (2, 4)
    model = WorldComp2D(**WC_TINY)
    model.use_refiner = True
    assert on_meta(lambda m, x: m(x), model, torch.rand(2, 3, 64, 64)).shape == (2, 68, 2)
    image, points = torch.rand(2, 3, 64, 64), torch.rand(2, 68, 2) * 60
    loss = on_meta(lambda m, i, p: m.refiner.loss(i, p, p, 4), model, image, points)
    assert loss.shape == ()


def test_saliency_warps_and_metrics_stay_on_the_inputs_device():
    assert on_meta(jitter_boxes, torch.rand(3, 4) * 50, 2.0).shape == (3, 4)
    maps = on_meta(boxes_saliency, [torch.rand(3, 4) * 50, torch.zeros(0, 4)], (64, 128), (9, 15))
    assert maps.shape == (2, 1, 9, 15)
    grid = on_meta(saliency_to_grid, torch.rand(2, 1, 9, 15))
    assert on_meta(zoom, torch.rand(2, 1, 64, 128), grid, (32, 64)).shape == (2, 1, 32, 64)
    crops = on_meta(lambda: sample_crop_boxes(3, (32, 32), CropConfig(), device=META))
    assert crops.shape == (3, 4)
    errors, fraction = on_meta(cumulative_error_curve, torch.rand(5), 0.1, 10)
    assert errors.shape == fraction.shape == (11,)
    assert on_meta(lambda e: auc(e, 0.1, steps=10), torch.rand(5)).shape == ()
    detector = SSDDetector(image_size=(64, 64), width_mult=0.125)
    out = on_meta(lambda m, x: m(x), detector, torch.rand(2, 1, 64, 64))
    assert out["loc"].shape[:1] == (2,)


def test_label_map_boxes_and_detection_results_follow_their_device():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[2:6, 3:9] = 4
    boxes: list[Tensor] = []
    assert audited(lambda: boxes.append(boxes_from_label_map(labels))) == []
    assert boxes[0].tolist() == [[3.0, 2.0, 9.0, 6.0]]
    metric = DetectionAP(class_metrics=True)
    box = torch.tensor([[2.0, 2.0, 30.0, 30.0]])
    metric.update([{"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1).long()}],
                  [{"boxes": box, "labels": torch.zeros(1).long()}])  # fmt: skip
    result = {}
    found = audited(lambda: result.update(metric.compute()))
    assert not found, "\n".join(found)
    assert float(result["ap50"]) == 1.0 and {t.device for t in result.values()} == {metric.device}


# --------------------------------------------------------------------------------------------
# CPU numbers unchanged: values recorded with the code before the device changes


def test_cpu_draws_are_unchanged():
    points = torch.rand(4, 6, 2, generator=torch.Generator().manual_seed(7)) * 64
    views = sample_contrastive_views(points, (64, 64), torch.Generator().manual_seed(3))
    assert views.landmark.tolist() == [0, 4, 3, 4]
    assert views.centres.tolist() == [
        [[34.5, 12.5], [33.5, 37.5]], [[56.5, 26.5], [59.5, 20.5]],
        [[54.5, 43.5], [15.5, 30.5]], [[61.5, 35.5], [48.5, 49.5]],
    ]  # fmt: skip
    torch.manual_seed(5)
    assert jitter_fixations(grid_fixations(64, 2), 2, 3).tolist() == [
        [[19.5, 23.5], [41.5, 21.5], [24.5, 40.5], [40.5, 42.5]],
        [[23.5, 22.5], [39.5, 24.5], [22.5, 41.5], [42.5, 41.5]],
    ]
    subset = sample_landmark_subset(3, 6, 4, torch.Generator().manual_seed(2))
    assert subset.tolist() == [[1, 3, 0, 5], [3, 1, 0, 5], [5, 0, 2, 3]]
    boxes = torch.tensor([[1.0, 2, 10, 12], [5, 5, 9, 9]])
    moved = jitter_boxes(boxes, 2.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        moved,
        torch.tensor([[1.2385544776916504, 2.2363696098327637, 10.238554000854492,
                       12.236370086669922], [3.3658273220062256, 3.840012788772583,
                       7.365827560424805, 7.840012550354004]]),
        rtol=0, atol=0,
    )  # fmt: skip
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    out = ViewSampler()(image, torch.Generator().manual_seed(9))
    # Recorded again when view draws became one block of uniforms per image (batched views).
    torch.testing.assert_close(
        out["global_boxes"],
        torch.tensor([[1.326108455657959, 0.3080694079399109, 43.023494720458984,
                       47.38764953613281], [0.023065561428666115, 7.612874507904053,
                       46.710960388183594, 42.84351348876953]]),
        rtol=0, atol=0,
    )  # fmt: skip
    assert bool(out["flipped"])


# --------------------------------------------------------------------------------------------
# Configs and pipelines: accelerator "auto"


def _yaml_files() -> list[Path]:
    return sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_trains_on_the_accelerator_lightning_picks(path):
    expanded = expand_config_bases(["--config", str(path)])
    files = [Path(v) for k, v in zip(expanded, expanded[1:], strict=False) if k == "--config"]
    accelerator = "auto"  # Lightning's default when no file sets it
    for file in files:
        trainer = (yaml.safe_load(file.read_text()) or {}).get("trainer") or {}
        accelerator = trainer.get("accelerator", accelerator)
    assert accelerator == "auto", f"{path}: trainer.accelerator is {accelerator!r}, expected auto"


def test_no_pipeline_or_config_pins_the_cpu():
    pinned = re.compile(r"""accelerator["']?\s*[:=]\s*["']?cpu\b""")
    sources = [*SRC.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *_yaml_files()]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pinned.search(line) and not line.lstrip().startswith(("#", "``"))
        and "--trainer.accelerator cpu" not in line
    ]  # fmt: skip
    assert not hits, "accelerator pinned to cpu:\n" + "\n".join(hits)


class _Built(Exception):
    pass


def test_fit_asks_lightning_for_the_accelerator_and_lets_a_pipeline_choose(monkeypatch):
    seen: list[dict] = []

    def trainer(**options):
        seen.append(options)
        raise _Built

    monkeypatch.setattr(fit_module.pl, "Trainer", trainer)
    loader = torch.utils.data.DataLoader([torch.zeros(1)])
    for options in ({}, {"accelerator": "cpu"}):
        with pytest.raises(_Built):
            fit_module.fit(DigitClassifierTask(), train_loader=loader, max_steps=1, **options)
    assert [s["accelerator"] for s in seen] == ["auto", "cpu"]
    assert all(s["devices"] == 1 for s in seen)


# --------------------------------------------------------------------------------------------
# On a GPU (skipped without one)

CUDA = torch.device("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name", CASES)
def test_steps_run_on_the_gpu(name):
    task, batch, validate = _case(name)
    task, batch = task.to(CUDA), _to(batch, CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = _run_steps(task, batch, validate)
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in task.parameters())


@pytest.mark.cuda
def test_gpu_draws_use_gpu_generators_and_outputs_stay_there():
    points = torch.rand(4, 6, 2, device=CUDA) * 64
    generator = torch.Generator(device=CUDA).manual_seed(3)
    views = sample_contrastive_views(points, (64, 64), generator)
    assert {views.centres.device.type, views.weights.device.type} == {"cuda"}
    image = torch.rand(3, 48, 48, device=CUDA)
    out = ViewSampler()(image, torch.Generator(device=CUDA).manual_seed(9))
    assert {t.device.type for t in out.values()} == {"cuda"}
    metric = DetectionAP().to(CUDA)
    box = torch.tensor([[2.0, 2.0, 30.0, 30.0]], device=CUDA)
    labels = torch.zeros(1, dtype=torch.long, device=CUDA)
    metric.update([{"boxes": box, "scores": torch.ones(1, device=CUDA), "labels": labels}],
                  [{"boxes": box, "labels": labels}])  # fmt: skip
    assert {t.device.type for t in metric.compute().values()} == {"cuda"}
