"""LZU detection on high-resolution scenes: an SSD detector behind a zoom, heads in the unwarped frame.

Three frames (see :mod:`wherewhat.geometry.warp`):

- **original**: the full-resolution scene ``(H, W)`` (e.g. 512 x 1024), its ground-truth boxes,
  and every number reported (detections are mapped back here; AP size buckets use box areas in
  these pixels);
- **zoomed**: the ``input_size`` image (e.g. 128 x 256) the backbone sees, warped by a saliency;
- **detector**: the original frame scaled uniformly to ``input_size``. The backbone's features
  are unzoomed into it, so the SSD anchors, heads, box coding and loss are exactly those of a
  detector on a plainly downsampled image; ground truth only gets that uniform scale.

Saliency sources (:attr:`LZUDetectionTask.SALIENCIES`):

- ``uniform``: no warp, i.e. bilinear downsampling (the baseline; at another ``input_size`` the
  2x upper bound);
- ``fixed``: one KDE over every training box, computed once from the training scenes and saved
  (:func:`load_or_compute_fixed_saliency`), restored from checkpoints;
- ``adaptive``: a KDE per image over ground-truth boxes jittered by U[-jitter, jitter] px at
  training time, and at evaluation over the detections (score >= ``prior_score_threshold``) of a
  frozen *prior* detector, the uniform model (:meth:`LZUDetectionTask.attach_prior` or
  ``prior_checkpoint``): scattered-MNIST scenes are still images, so there is no previous frame.

:class:`LZUDetector` is the network (usable without Lightning); :class:`LZUDetectionTask` trains
and evaluates it. Logged: ``train/loss`` (+ ``loc_loss``, ``cls_loss``), and for ``val`` /
``test``: ``ap50``, ``ap``, ``ap50_<bucket>``, ``ap_<bucket>`` (buckets small / medium / large by
``sqrt(area)`` in original pixels, :func:`~wherewhat.metrics.detection.area_ranges_from_sides`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherewhat.errors import ConfigError
from wherewhat.geometry.saliency import (
    AdaptiveSaliency,
    FixedSaliency,
    SaliencySource,
    UniformSaliency,
    dataset_saliency,
    load_saliency,
    save_saliency,
    uniform_saliency,
)
from wherewhat.io import array_digest
from wherewhat.methods.lzu.wrapper import LZU
from wherewhat.metrics.detection import DetectionAP, area_ranges_from_sides
from wherewhat.models.ssd import SSDDetector, validate_targets
from wherewhat.training.schedules import warmup_cosine

__all__ = [
    "SaliencyKind",
    "LZUDetector",
    "LZUDetectionTask",
    "LZUTaskBase",
    "fixed_saliency_settings",
    "load_or_compute_fixed_saliency",
    "load_prior",
    "make_saliency_source",
    "plain_detector_outputs",
    "scale_boxes",
]

SaliencyKind = Literal["uniform", "fixed", "adaptive"]


# --------------------------------------------------------------------------- shared pieces


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """XYXY boxes ``(..., 4)`` in pixels of ``from_size`` (H, W) -> pixels of ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def make_saliency_source(
    kind: str,
    grid_shape: tuple[int, int],
    *,
    amplitude: float,
    bandwidth: float,
    jitter: float,
) -> SaliencySource:
    """The saliency module of an arm; ``fixed`` starts uniform until its map is set."""
    grid_shape = tuple(int(g) for g in grid_shape)
    if kind == "uniform":
        return UniformSaliency(grid_shape)
    if kind == "fixed":
        return FixedSaliency(uniform_saliency(grid_shape))
    if kind == "adaptive":
        return AdaptiveSaliency(grid_shape, amplitude=amplitude, bandwidth=bandwidth, jitter=jitter)
    raise ConfigError(f"saliency={kind!r}: expected 'uniform', 'fixed' or 'adaptive'")


def fixed_saliency_settings(
    image_size: tuple[int, int], grid_shape: tuple[int, int], amplitude: float, bandwidth: float
) -> dict[str, Any]:
    """The knobs a fixed saliency depends on (besides the boxes), stored with it."""
    return {
        "image_size": [int(s) for s in image_size],
        "grid_shape": [int(g) for g in grid_shape],
        "amplitude": float(amplitude),
        "bandwidth": float(bandwidth),
    }


def _boxes_digest(boxes: Sequence[Tensor]) -> str:
    return array_digest(boxes, digest_size=12, separator=b"|")


def load_or_compute_fixed_saliency(
    path: str | Path | None,
    boxes: Iterable[Tensor] | None,
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    *,
    amplitude: float,
    bandwidth: float,
) -> Tensor:
    """The dataset-KDE saliency ``(1, 1, gh, gw)`` over training ``boxes`` (original px).

    With a ``path``: read it when the file exists (its settings and a digest of the boxes must
    match, else ``ConfigError`` naming the file), otherwise compute and write it atomically.
    ``boxes`` (one ``(n_i, 4)`` tensor per training image) may be None only when the file exists.
    """
    settings = fixed_saliency_settings(image_size, grid_shape, amplitude, bandwidth)
    box_list = None if boxes is None else [torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    if path is not None and Path(path).is_file():
        saliency, meta = load_saliency(path)
        stored = {k: meta.get(k) for k in settings}
        if stored != settings:
            raise ConfigError(
                f"{path}: fixed saliency was computed with {stored}, not {settings}; "
                "delete it or give another path"
            )
        if box_list is not None and meta.get("boxes_digest") != _boxes_digest(box_list):
            raise ConfigError(
                f"{path}: fixed saliency was computed from other training boxes "
                f"({meta.get('n_boxes')} boxes); delete it or give another path"
            )
        return saliency
    if box_list is None:
        raise ConfigError(
            f"fixed saliency: no file at {path} and no training boxes to compute it from"
        )
    saliency = dataset_saliency(
        box_list, tuple(image_size), tuple(grid_shape), amplitude=amplitude, bandwidth=bandwidth
    )
    if path is not None:
        save_saliency(
            path,
            saliency,
            **settings,
            n_boxes=sum(len(b) for b in box_list),
            boxes_digest=_boxes_digest(box_list),
        )
    return saliency


def train_boxes_of(datamodule: Any) -> list[Tensor] | None:
    """Per-image training boxes of a :class:`~wherewhat.data.scatter.ScatterMNISTDataModule`
    (after ``setup("fit")``), or None when the data module is not of that kind."""
    train_set = getattr(datamodule, "train_set", None)
    scenes = getattr(train_set, "scenes", None)
    if scenes is None:
        return None
    return [torch.from_numpy(scenes.boxes[int(i)].copy()) for i in train_set.indices]


# --------------------------------------------------------------------------- the network


class LZUDetector(nn.Module):
    """SSD behind an LZU zoom: original-frame images in, original-frame detections out.

    Args:
        detector: an :class:`~wherewhat.models.ssd.SSDDetector` built for the zoomed input size
            (its ``image_size``); its backbone is wrapped, its heads run on unzoomed features.
        saliency: the warp's saliency source.
        original_size: ``(H, W)`` of the images given to :meth:`forward`.
        separable, fwhm, inverse: warp options of :class:`~wherewhat.methods.lzu.wrapper.LZU`.

    Shapes: images ``(B, C, H, W)`` in [0, 1]; ``saliency_boxes`` (adaptive sources) one
    ``(n_i, 4)`` XYXY tensor per image in original pixels.
    """

    def __init__(
        self,
        detector: SSDDetector,
        saliency: SaliencySource,
        original_size: tuple[int, int],
        *,
        separable: bool = True,
        fwhm: float = 13.0,
        inverse: str = "auto",
    ):
        super().__init__()
        self.detector = detector
        self.lzu = LZU(
            detector.backbone,
            saliency,
            detector.image_size,
            separable=separable,
            fwhm=fwhm,
            inverse=inverse,
        )
        self.original_size = (int(original_size[0]), int(original_size[1]))

    @property
    def input_size(self) -> tuple[int, int]:
        return self.detector.image_size

    @property
    def saliency(self) -> SaliencySource:
        return self.lzu.saliency

    def to_detector_frame(self, boxes: Tensor) -> Tensor:
        return scale_boxes(boxes, self.original_size, self.input_size)

    def to_original_frame(self, boxes: Tensor) -> Tensor:
        return scale_boxes(boxes, self.input_size, self.original_size)

    def features(self, images: Tensor, saliency_boxes=None) -> list[Tensor]:
        """Unzoomed pyramid ``[(B, C_l, h_l, w_l)]`` in the detector frame."""
        if tuple(images.shape[-2:]) != self.original_size:
            raise ValueError(
                f"expected images of original_size={self.original_size}, got "
                f"{tuple(images.shape[-2:])}"
            )
        return list(self.lzu(images, saliency_boxes))

    def forward(self, images: Tensor, saliency_boxes=None) -> dict[str, Any]:
        """``{"loc" (B, A, 4), "logits" (B, A, K + 1), "features"}`` (detector frame)."""
        features = self.features(images, saliency_boxes)
        loc, logits = self.detector.head(features)
        return {"loc": loc, "logits": logits, "features": features}

    def loss(self, outputs: dict, targets: Sequence[dict]) -> dict[str, Tensor]:
        """SSD loss against ``targets`` with ``boxes`` in original pixels and detector labels."""
        scaled = [{**t, "boxes": self.to_detector_frame(t["boxes"])} for t in targets]
        return self.detector.loss(outputs, scaled)

    @torch.no_grad()
    def detect(self, outputs: dict, **kwargs: Any) -> list[dict[str, Tensor]]:
        """:meth:`SSDDetector.detect` with boxes mapped back to original pixels."""
        return [
            {**d, "boxes": self.to_original_frame(d["boxes"])}
            for d in self.detector.detect(outputs, **kwargs)
        ]


# --------------------------------------------------------------------------- the task


class LZUTaskBase(pl.LightningModule):
    """Saliency bookkeeping shared by the LZU detection and segmentation tasks.

    Subclasses set ``self.model`` (with ``.lzu``, an :class:`~wherewhat.methods.lzu.wrapper.LZU`, and
    ``.saliency``), save hyperparameters including ``saliency``, ``original_size``,
    ``grid_shape``, ``amplitude``, ``bandwidth``, ``fixed_saliency_path``, ``lr``,
    ``weight_decay``, ``warmup_steps``, ``schedule``, call :meth:`init_saliency_state`, and
    implement :meth:`prior_boxes` and :meth:`check_prior`.
    """

    SALIENCIES = ("uniform", "fixed", "adaptive")

    def init_saliency_state(self) -> None:
        if self.hparams.saliency not in self.SALIENCIES:
            raise ConfigError(
                f"saliency={self.hparams.saliency!r}: expected one of {self.SALIENCIES}"
            )
        # Whether the fixed map was set (from the data or a checkpoint); saved with the weights.
        ready = torch.tensor(self.hparams.saliency != "fixed")
        self.register_buffer("fixed_saliency_ready", ready)
        # The prior is deliberately not a submodule: not trained, not saved with this task's
        # weights (it is rebuilt from prior_checkpoint or attached again), not moved by Lightning.
        self._prior: list[nn.Module] = []

    @property
    def saliency_kind(self) -> str:
        return self.hparams.saliency

    def set_fixed_saliency(self, saliency: Tensor) -> None:
        """Install the fixed map ``(1, 1, gh, gw)`` (fixed arm only) and drop cached grids."""
        if self.saliency_kind != "fixed":
            raise ConfigError(
                f"set_fixed_saliency needs saliency='fixed', not {self.saliency_kind}"
            )
        buffer = self.model.saliency.saliency
        if saliency.shape != buffer.shape:
            raise ConfigError(f"fixed saliency must be {tuple(buffer.shape)}, got {saliency.shape}")
        buffer.copy_(saliency.to(buffer))
        self.fixed_saliency_ready.fill_(True)
        self.model.lzu.clear_cache()

    def prepare_fixed_saliency(self, train_boxes: Iterable[Tensor] | None) -> Tensor:
        """Load or compute (and save) the fixed map from per-image training boxes; install it."""
        hp = self.hparams
        saliency = load_or_compute_fixed_saliency(
            hp.fixed_saliency_path,
            train_boxes,
            tuple(hp.original_size),
            tuple(hp.grid_shape),
            amplitude=hp.amplitude,
            bandwidth=hp.bandwidth,
        )
        self.set_fixed_saliency(saliency)
        return saliency

    def check_prior(self, prior: nn.Module) -> None:
        """Raise ``ConfigError`` when ``prior`` cannot give this task's saliency boxes."""
        raise NotImplementedError

    def attach_prior(self, prior: nn.Module) -> None:
        """Use ``prior`` (frozen, eval mode; a uniform model of the same task) for the adaptive
        saliency at evaluation."""
        self.check_prior(prior)
        if isinstance(prior.saliency, AdaptiveSaliency):
            raise ConfigError("the prior must not itself use an adaptive saliency")
        self._prior[:] = [prior.requires_grad_(False).eval()]

    @property
    def prior(self) -> nn.Module | None:
        return self._prior[0] if self._prior else None

    def prior_boxes(self, images: Tensor) -> list[Tensor]:
        """Boxes (original px, one ``(n, 4)`` per image) from the prior, for evaluation."""
        raise NotImplementedError

    def _prior_or_raise(self, images: Tensor) -> nn.Module:
        if self.prior is None:
            raise ConfigError(
                "adaptive saliency at evaluation needs a prior model: pass prior_checkpoint "
                f"(a uniform {type(self).__name__} checkpoint) or call attach_prior(model)"
            )
        return self.prior.to(images.device).eval()

    def saliency_boxes(self, batch: dict, training: bool) -> list[Tensor] | None:
        """Adaptive only: ground truth at training (jittered inside ``AdaptiveSaliency``), the
        prior's boxes at evaluation; None for the other sources."""
        if self.saliency_kind != "adaptive":
            return None
        if training:
            return list(batch["boxes"])
        return self.prior_boxes(batch["image"])

    def check_ready(self) -> None:
        if not bool(self.fixed_saliency_ready):
            raise ConfigError(
                "saliency='fixed' but its map was never set: train with a ScatterMNISTDataModule, "
                "give fixed_saliency_path, load a checkpoint, or call prepare_fixed_saliency()"
            )

    def setup(self, stage: str) -> None:
        if self.saliency_kind != "fixed" or bool(self.fixed_saliency_ready):
            return
        path = self.hparams.fixed_saliency_path
        boxes = None
        if stage == "fit":
            boxes = train_boxes_of(getattr(self._trainer, "datamodule", None))
        if boxes is not None or (path is not None and Path(path).is_file()):
            self.prepare_fixed_saliency(boxes)

    def clear_grids(self) -> None:
        # Grids of a fixed map are cached; a checkpoint may have replaced the map since.
        self.model.lzu.clear_cache()
        if self.prior is not None:
            self.prior.lzu.clear_cache()

    def on_fit_start(self) -> None:
        self.clear_grids()

    def on_validation_start(self) -> None:
        self.clear_grids()

    def on_test_start(self) -> None:
        self.clear_grids()

    def on_predict_start(self) -> None:
        self.clear_grids()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        return warmup_cosine(
            optimizer,
            self.hparams.warmup_steps,
            self.trainer.estimated_stepping_batches,
            cosine=self.hparams.schedule == "cosine",
        )


class LZUDetectionTask(LZUTaskBase):
    """Train / evaluate :class:`LZUDetector` on original-resolution scattered-MNIST batches.

    Batches: ``image`` (B, C, H, W) at ``original_size``, ``boxes`` list of (n, 4) XYXY original
    px, ``labels`` list of (n,) digit classes (from
    :class:`~wherewhat.data.scatter.ScatterMNISTDataModule`).

    Args:
        saliency: ``uniform`` | ``fixed`` | ``adaptive`` (module docstring).
        original_size, input_size: ``(H, W)`` of the scenes and of the backbone's input.
        in_channels, num_classes, width_mult, first_stride, anchors_per_cell, iou_threshold,
            negative_ratio: :class:`~wherewhat.models.ssd.SSDDetector` (``first_stride`` is fixed,
            not derived from the size, so a 2x input gets a 2x finer pyramid).
        anchor_range_px: smallest / largest anchor side in *original* pixels (scaled to the
            detector frame, so every input size gets the same anchors on the scene).
        grid_shape, fwhm, separable: the warp (lattice, attraction kernel FWHM in cells).
        amplitude, bandwidth: box-KDE saliency (bandwidth in original px, see
            :mod:`wherewhat.geometry.saliency`); jitter: U[-jitter, jitter] original px on
            ground-truth centres when training the adaptive source.
        fixed_saliency_path: where the fixed map is read from / written to (computed from the
            data module's training boxes when missing; None: computed, not saved).
        prior_checkpoint: checkpoint of a uniform :class:`LZUDetectionTask` whose detections give
            the adaptive saliency at evaluation (or call :meth:`attach_prior`).
        prior_score_threshold: detections of the prior kept for the saliency.
        area_sides_px: ``(small_below, large_above)`` box sides (sqrt of the area) in original
            px splitting small / medium / large.
        lr, weight_decay, warmup_steps, schedule: AdamW with warm-up and cosine decay.
        eval_score_threshold, detect_score_threshold, nms_iou, max_detections: post-processing
            for AP (low threshold) and for :meth:`predict_step`.
    """

    def __init__(
        self,
        saliency: SaliencyKind = "uniform",
        original_size: tuple[int, int] = (512, 1024),
        input_size: tuple[int, int] = (128, 256),
        in_channels: int = 1,
        num_classes: int = 1,
        width_mult: float = 0.25,
        first_stride: int = 8,
        anchors_per_cell: int = 2,
        anchor_range_px: tuple[float, float] = (12.0, 140.0),
        iou_threshold: float = 0.5,
        negative_ratio: float = 3.0,
        grid_shape: tuple[int, int] = (31, 51),
        fwhm: float = 13.0,
        separable: bool = True,
        amplitude: float = 1.0,
        bandwidth: float = 32.0,
        jitter: float = 8.0,
        fixed_saliency_path: str | None = None,
        prior_checkpoint: str | None = None,
        prior_score_threshold: float = 0.3,
        area_sides_px: tuple[float, float] = (24.0, 64.0),
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 50,
        schedule: Literal["cosine", "constant"] = "cosine",
        eval_score_threshold: float = 0.05,
        detect_score_threshold: float = 0.5,
        nms_iou: float = 0.45,
        max_detections: int = 100,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.init_saliency_state()
        original_size = (int(original_size[0]), int(original_size[1]))
        input_size = (int(input_size[0]), int(input_size[1]))
        to_input = input_size[0] / original_size[0]
        detector = SSDDetector(
            image_size=input_size,
            in_channels=in_channels,
            num_classes=num_classes,
            width_mult=width_mult,
            first_stride=first_stride,
            anchors_per_cell=anchors_per_cell,
            min_anchor_size=anchor_range_px[0] * to_input,
            max_anchor_size=anchor_range_px[1] * to_input,
            iou_threshold=iou_threshold,
            negative_ratio=negative_ratio,
        )
        source = make_saliency_source(
            saliency, grid_shape, amplitude=amplitude, bandwidth=bandwidth, jitter=jitter
        )
        self.model = LZUDetector(detector, source, original_size, separable=separable, fwhm=fwhm)
        if prior_checkpoint is not None:
            self.attach_prior(load_prior(prior_checkpoint))
        area_ranges = area_ranges_from_sides(*area_sides_px)
        agnostic = num_classes == 1
        self.val_ap = DetectionAP(area_ranges=area_ranges, class_agnostic=agnostic)
        self.test_ap = DetectionAP(area_ranges=area_ranges, class_agnostic=agnostic)

    def check_prior(self, prior: nn.Module) -> None:
        if not isinstance(prior, LZUDetector):
            raise ConfigError(f"the prior must be an LZUDetector, got {type(prior).__name__}")
        if prior.original_size != self.model.original_size:
            raise ConfigError(
                f"prior works on {prior.original_size} images, this task on "
                f"{self.model.original_size}"
            )

    @torch.no_grad()
    def prior_boxes(self, images: Tensor) -> list[Tensor]:
        """The prior's detections with score >= ``prior_score_threshold`` (original px)."""
        prior = self._prior_or_raise(images)
        detections = prior.detect(
            prior(images),
            score_threshold=self.hparams.prior_score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )
        return [d["boxes"] for d in detections]

    # -- batches -------------------------------------------------------------------------------
    def forward(self, images: Tensor, saliency_boxes=None) -> dict[str, Any]:
        return self.model(images, saliency_boxes)

    def targets_of(self, batch: dict, batch_idx: int) -> list[dict[str, Tensor]]:
        """Targets in original pixels with detector labels; malformed batches raise
        ``ValueError`` naming ``batch_idx``."""
        try:
            if not isinstance(batch, dict) or not {"image", "boxes", "labels"} <= set(batch):
                raise ValueError("expected a dict with 'image', 'boxes' and 'labels'")
            images = batch["image"]
            if len(batch["boxes"]) != len(images) or len(batch["labels"]) != len(images):
                raise ValueError(f"{len(images)} images but other counts of box / label sets")
            targets = [
                {"boxes": b, "labels": self.model.detector.detector_labels(lab)}
                for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
            ]
            validate_targets(targets, len(images), self.model.detector.num_classes)
        except ValueError as error:
            raise ValueError(f"malformed batch {batch_idx}: {error}") from error
        return targets

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self.check_ready()
        targets = self.targets_of(batch, batch_idx)
        outputs = self.model(batch["image"], self.saliency_boxes(batch, training=True))
        losses = self.model.loss(outputs, targets)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(targets))
        return losses["loss"]

    @torch.no_grad()
    def predict_batch(
        self, batch: dict, score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections in original pixels (``boxes``, ``scores``, ``labels``, ``anchor_index``)
        plus ``saliency_boxes`` (adaptive) for a batch, in the current mode."""
        self.check_ready()
        sal_boxes = self.saliency_boxes(batch, training=False)
        outputs = self.model(batch["image"], sal_boxes)
        detections = self.model.detect(
            outputs,
            score_threshold=self.hparams.eval_score_threshold
            if score_threshold is None
            else score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )
        if sal_boxes is not None:
            for d, s in zip(detections, sal_boxes, strict=True):
                d["saliency_boxes"] = s
        return detections

    def _evaluate(self, batch: dict, batch_idx: int, metric: DetectionAP) -> None:
        targets = self.targets_of(batch, batch_idx)
        detections = self.predict_batch(batch)
        metric.update(
            [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections], targets
        )

    def _log_ap(self, stage: str, metric: DetectionAP) -> dict[str, float]:
        result = metric.compute()
        metric.reset()
        numbers = {
            k: float(v) for k, v in result.items() if k.startswith("ap") or k.startswith("n_gt")
        }
        for key in ("ap50", "ap", *(k for k in numbers if k.startswith("ap50_"))):
            self.log(f"{stage}/{key}", numbers[key], prog_bar=key == "ap50")
        return numbers

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_ap)

    def on_validation_epoch_end(self) -> None:
        self._log_ap("val", self.val_ap)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_ap)

    def on_test_epoch_end(self) -> None:
        self._log_ap("test", self.test_ap)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Tensor]]:
        return self.predict_batch(batch, self.hparams.detect_score_threshold)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict]) -> dict[str, float]:
        """AP numbers over ``batches`` (eval mode, no Lightning trainer needed): ``ap50``,
        ``ap``, ``ap75``, ``ar``, ``ap50_<bucket>``, ``ap_<bucket>``, ``n_gt_<bucket>``."""
        was_training = self.training
        self.eval()
        self.clear_grids()
        metric = DetectionAP(
            area_ranges=area_ranges_from_sides(*self.hparams.area_sides_px),
            class_agnostic=self.hparams.num_classes == 1,
        )
        try:
            for index, batch in enumerate(batches):
                self._evaluate(batch, index, metric)
            result = metric.compute()
        finally:
            self.train(was_training)
        return {k: float(v) for k, v in result.items() if v.ndim == 0}


def load_prior(checkpoint: str | Path) -> LZUDetector:
    """The network of a (non-adaptive) :class:`LZUDetectionTask` checkpoint, frozen."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"prior_checkpoint {path}: file not found")
    task = LZUDetectionTask.load_from_checkpoint(path, map_location="cpu")
    if task.saliency_kind == "adaptive":
        raise ConfigError(f"prior_checkpoint {path}: an adaptive model cannot be the prior")
    return task.model.requires_grad_(False).eval()


def plain_detector_outputs(detector: SSDDetector, images: Tensor) -> dict[str, Any]:
    """The un-warped pipeline: bilinear downsampling to the detector's size, then SSD."""
    small = F.interpolate(images, detector.image_size, mode="bilinear", align_corners=False)
    return detector(small)
