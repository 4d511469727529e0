"""SSDIR (Zielinski & Kajdanowicz): an object-centric VAE on a frozen SSD feature pyramid.

``SSDIR(detector)`` is a plain ``nn.Module``: ``forward(images)`` returns the latents, the
rendered objects and the reconstruction; ``loss(images, outputs)`` returns the negative eq. 7
objective and its terms; ``encode(images)`` returns per-object records for probes and predict.

Latents (per pyramid cell unless said otherwise; see :mod:`wherewhat.methods.ssdir.parts`):

- ``z_where`` per anchor: the detector's decoded box (deterministic, XYXY pixels).
- ``z_present`` per anchor ~ Bernoulli(beta), beta = ``1 - p(background)`` by default
  (``present_from="max_object"`` is the paper's eq. 4).
- ``z_what`` ~ N(mu_what, 0.1^2 I) in R^D, one per cell, shared by that cell's anchors; optional
  background z_what.
- ``z_depth`` ~ N(mu_depth, 0.1^2), one per cell. Priors N(0, I).

Which anchors are rendered (``dedup``): SSD predicts the same digit from several anchors and
levels. ``"nms"`` (default) thresholds beta at ``present_threshold`` and keeps one anchor per
object by class-agnostic NMS, in training and inference alike, so each digit is reconstructed
once and its z_what alone has to explain it. ``"soft"`` renders every anchor with
beta >= ``soft_min_present`` and weights it by beta (merge weight proportional to
beta * exp(depth); per-object term averaged with weights beta). ``"none"`` samples z_present in
training and renders every sampled anchor, like the reference code.

The detector (backbone, box and class heads) is frozen: no gradients, always in eval mode (its
batch-norm statistics never change), and excluded from ``trainable_parameters()``. It is given
built (``detector``) or as the path of its checkpoint (``detector_checkpoint``, read by
:func:`load_detector`), which is how a YAML config names it (``configs/ssdir/default.yaml``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from wherewhat.errors import ConfigError
from wherewhat.geometry import extract, place
from wherewhat.methods.ssdir.object_encoder import (
    GlimpseWhatEncoder,
    Projector,
    jittered_box_affines,
    nt_xent,
    object_crops,
)
from wherewhat.methods.ssdir.parts import (
    DedupMode,
    DepthEncoder,
    PresentFrom,
    WhatDecoder,
    WhatEncoder,
    bernoulli_log_likelihood,
    depth_weights,
    fill_background,
    gaussian_log_likelihood,
    kl_normal_to_standard,
    merge_objects,
    normalize_by_max,
    present_probability,
    select_objects,
)
from wherewhat.models.spec import configurable
from wherewhat.models.ssd import SSDDetector
from wherewhat.training.precision import autocast_dtype

__all__ = ["SSDIR", "Likelihood", "WhatInput", "check_images", "load_detector"]

Likelihood = Literal["bernoulli", "gaussian"]
WhatInput = Literal["cells", "glimpse", "both"]
WHAT_INPUTS = ("cells", "glimpse", "both")


def check_images(images: Tensor, channels: int, size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``images`` is a finite float ``(B, channels, *size)`` batch in
    [0, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError(f"expected images as a Tensor, got {type(images).__name__}")
    expected = f"(B, {channels}, {size[0]}, {size[1]})"
    if images.ndim != 4 or images.shape[1] != channels or tuple(images.shape[-2:]) != size:
        raise ValueError(f"expected images of shape {expected}, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"expected pixel values in [0, 1], got [{low:.4g}, {high:.4g}]")


@configurable
class SSDIR(nn.Module):
    """SSDIR on a frozen detector that follows the ``SSDDetector`` contract.

    Args:
        detector: trained ``SSDDetector`` (frozen here).
        detector_checkpoint: instead of ``detector``, the path of its checkpoint (a checkpoint of
            the SSD detector task or a ``state_dict`` file, read by :func:`load_detector`).
            Exactly one of the two is required.
        detector_args: with ``detector_checkpoint``, ``SSDDetector`` constructor arguments that
            override / complete those stored in the checkpoint.
        z_what_size: D.
        what_hidden: 3x3 conv blocks per what-encoder head.
        z_what_sigma, z_depth_sigma: fixed posterior standard deviations (hyperparameters).
        glimpse_size: side of decoded glimpses (power of two; 32 for 128-px scenes, the paper's
            64 for 300 px).
        decoder_width: channels after the decoder's first 1x1 conv (paper: 1024).
        background: learn a background z_what, rendered over the whole image where no object
            drew.
        normalize_output: divide each reconstruction by its maximum (paper, optional).
        dedup: ``"nms"``, ``"soft"`` or ``"none"`` (module docstring).
        present_from: ``"not_background"`` or ``"max_object"`` (eq. 4).
        present_threshold: beta above which an anchor is present (``nms``; ``none`` at eval).
        soft_min_present: beta above which ``soft`` renders an anchor.
        nms_iou: IoU above which NMS removes the lower-scoring anchor.
        max_objects: most objects rendered per image (highest beta first).
        min_box_size: boxes are widened to at least this many pixels (a degenerate box would
            make the placement transform infinite).
        likelihood: ``"bernoulli"`` (continuous-safe BCE) or ``"gaussian"``.
        likelihood_sigma: standard deviation of the Gaussian likelihood.
        alpha_obj, alpha_rec, alpha_what, alpha_depth: eq. 7 weights.
        image_size, in_channels: input ``(H, W)`` and channels; default: the detector's
            attributes of the same names.
        what_input: what z_what reads: ``cells`` (the paper: a head per pyramid level on the
            object's cell), ``glimpse`` (a CNN on a ``what_crop_size`` crop of the image at the
            box) or ``both`` (that CNN plus the detector's features RoI-aligned at the box);
            see :mod:`~wherewhat.methods.ssdir.object_encoder`. With ``glimpse`` / ``both``
            z_what is per object, not per cell, and its KL is summed over the objects.
        what_crop_size, what_width: the glimpse encoder's input side and first width.
        invariance_weight: weight of the NT-Xent term between two jittered crops of each object
            (``glimpse`` / ``both`` only; 0 = off), added to the loss as ``weight x NT-Xent``.
        invariance_temperature: its temperature.
        invariance_jitter: ``(shift, log_scale, degrees)`` of the two views.
    """

    def __init__(
        self,
        detector: nn.Module | None = None,
        *,
        detector_checkpoint: str | Path | None = None,
        detector_args: dict[str, Any] | None = None,
        z_what_size: int = 64,
        what_hidden: int = 3,
        z_what_sigma: float = 0.1,
        z_depth_sigma: float = 0.1,
        glimpse_size: int = 32,
        decoder_width: int = 256,
        background: bool = False,
        normalize_output: bool = True,
        dedup: DedupMode = "nms",
        present_from: PresentFrom = "not_background",
        present_threshold: float = 0.5,
        soft_min_present: float = 0.1,
        nms_iou: float = 0.45,
        max_objects: int = 100,
        min_box_size: float = 1.0,
        likelihood: Likelihood = "bernoulli",
        likelihood_sigma: float = 0.1,
        alpha_obj: float = 10.0,
        alpha_rec: float = 10.0,
        alpha_what: float = 1.0,
        alpha_depth: float = 1.0,
        image_size: tuple[int, int] | None = None,
        in_channels: int | None = None,
        what_input: WhatInput = "cells",
        what_crop_size: int = 32,
        what_width: int = 32,
        invariance_weight: float = 0.0,
        invariance_temperature: float = 0.2,
        invariance_jitter: tuple[float, float, float] = (0.1, 0.15, 10.0),
    ):
        super().__init__()
        if (detector is None) == (detector_checkpoint is None):
            raise ConfigError(
                "SSDIR needs one frozen detector: set detector_checkpoint to the trained "
                "detector's checkpoint (in a config: model.init_args.model.init_args."
                "detector_checkpoint) or pass the detector itself"
            )
        if detector is None:
            detector = load_detector(detector_checkpoint, detector_args)
        elif detector_args:
            raise ConfigError("SSDIR: detector_args only apply to a detector_checkpoint")
        if dedup not in ("nms", "soft", "none"):
            raise ConfigError(f"dedup={dedup!r}: expected 'nms', 'soft' or 'none'")
        if present_from not in ("not_background", "max_object"):
            raise ConfigError(
                f"present_from={present_from!r}: expected 'not_background' or 'max_object'"
            )
        if what_input not in WHAT_INPUTS:
            raise ConfigError(f"what_input={what_input!r}: expected one of {WHAT_INPUTS}")
        if invariance_weight < 0 or (invariance_weight > 0 and what_input == "cells"):
            raise ConfigError(
                f"invariance_weight={invariance_weight!r}: expected >= 0, and 0 with "
                "what_input='cells' (the term compares crops of the object)"
            )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"likelihood={likelihood!r}: expected 'bernoulli' or 'gaussian'")
        for name, value in (
            ("z_what_sigma", z_what_sigma),
            ("z_depth_sigma", z_depth_sigma),
            ("likelihood_sigma", likelihood_sigma),
        ):
            if not value > 0:
                raise ConfigError(f"{name}={value!r}: expected a positive number")
        self.detector = detector.requires_grad_(False).eval()
        image_size = image_size or getattr(detector, "image_size", None)
        in_channels = in_channels or getattr(detector, "in_channels", None)
        if image_size is None or in_channels is None:
            raise ConfigError(
                "SSDIR: the detector has no image_size / in_channels attribute; pass them"
            )
        self.input_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = int(in_channels)
        channels = list(detector.feature_channels)
        # In glimpse / both modes the cell heads go unused: only the background head is built.
        self.what_encoder = WhatEncoder(
            channels if what_input == "cells" else [], z_what_size, what_hidden, background,
            background_channels=channels[-1],
        )  # fmt: skip
        self.glimpse_encoder = None
        if what_input != "cells":
            self.glimpse_encoder = GlimpseWhatEncoder(
                self.in_channels, z_what_size, what_crop_size, what_width,
                roi_channels=channels if what_input == "both" else None,
            )  # fmt: skip
        self.projector = Projector(z_what_size) if invariance_weight > 0 else None
        self.depth_encoder = DepthEncoder(channels)
        self.what_decoder = WhatDecoder(z_what_size, glimpse_size, self.in_channels, decoder_width)
        self.register_buffer("anchor_to_cell", self._anchor_cells(detector), persistent=False)
        self.z_what_size = z_what_size
        self.z_what_sigma = float(z_what_sigma)
        self.z_depth_sigma = float(z_depth_sigma)
        self.glimpse_size = glimpse_size
        self.background = background
        self.normalize_output = normalize_output
        self.dedup: DedupMode = dedup
        self.present_from: PresentFrom = present_from
        self.present_threshold = float(present_threshold)
        self.soft_min_present = float(soft_min_present)
        self.nms_iou = float(nms_iou)
        self.max_objects = int(max_objects)
        self.min_box_size = float(min_box_size)
        self.likelihood: Likelihood = likelihood
        self.likelihood_sigma = float(likelihood_sigma)
        self.alpha_obj = float(alpha_obj)
        self.alpha_rec = float(alpha_rec)
        self.alpha_what = float(alpha_what)
        self.alpha_depth = float(alpha_depth)
        self.what_input: WhatInput = what_input
        self.what_crop_size = int(what_crop_size)
        self.invariance_weight = float(invariance_weight)
        self.invariance_temperature = float(invariance_temperature)
        self.invariance_jitter = tuple(float(v) for v in invariance_jitter)

    # -- plumbing --------------------------------------------------------------------------------
    @staticmethod
    def _anchor_cells(detector: nn.Module) -> Tensor:
        """Global cell index ``(A,)`` of every anchor (cells level-major, row-major)."""
        cells_per_level = torch.tensor([h * w for h, w in detector.grid_sizes])
        offsets = torch.cumsum(cells_per_level, 0) - cells_per_level
        level = detector.anchor_level.long().cpu()
        return offsets[level] + detector.anchor_cell.long().cpu()

    def train(self, mode: bool = True) -> SSDIR:
        super().train(mode)
        self.detector.eval()  # frozen: batch-norm statistics must not drift
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the what / depth encoders and the what-decoder (never the detector)."""
        return [p for name, p in self.named_parameters() if not name.startswith("detector.")]

    # -- inference -------------------------------------------------------------------------------
    def _detect(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Frozen detector pass: boxes ``(B, A, 4)``, beta ``(B, A)``, labels ``(B, A)``,
        features."""
        with torch.no_grad():
            raw = self.detector(images)
            boxes = self.detector.decode_boxes(raw["loc"])
            beta = present_probability(raw["logits"], self.present_from)
            labels = raw["logits"][..., 1:].argmax(dim=-1) + 1
        return boxes, beta, labels, [f.detach() for f in raw["features"]]

    def _sanitize_boxes(self, boxes: Tensor) -> Tensor:
        """Clip boxes to the image (as ``SSDDetector.detect`` does), then widen boxes narrower
        than ``min_box_size`` around their centres. ``(N, 4)``."""
        boxes = clip_boxes_to_image(boxes, self.input_size)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = ((boxes[:, 2:] - boxes[:, :2]).clamp_min(self.min_box_size)) / 2
        return torch.cat([centre - half, centre + half], dim=1)

    def _object_what(
        self,
        images: Tensor,
        features: list[Tensor],
        boxes: Tensor,
        image_index: Tensor,
        anchor_index: Tensor,
        affines: Tensor | None = None,
    ) -> Tensor:
        """Glimpse-encoder means ``(N, D)`` of objects at ``boxes`` ``(N, 4)``: crops through
        ``affines`` (default: the plain box crops), RoI features at the boxes (``both``)."""
        assert self.glimpse_encoder is not None
        size = self.what_crop_size
        if affines is None:
            crops = extract(images, boxes, (size, size), batch_index=image_index)
        else:
            crops = object_crops(images, image_index, affines, size)
        roi = None
        if self.what_input == "both":
            level = self.detector.anchor_level.to(anchor_index.device)[anchor_index]
            roi = self.glimpse_encoder.roi_features(
                features, boxes, image_index, level, self.input_size
            )
        return self.glimpse_encoder(crops, roi)

    def invariance_loss(self, images: Tensor, outputs: Mapping[str, Any]) -> Tensor:
        """NT-Xent between the projected z_what means of two jittered crops of every rendered
        object (:mod:`~wherewhat.methods.ssdir.object_encoder`); 0 when the term is off."""
        if self.projector is None or len(outputs["image_index"]) == 0:
            return images.new_zeros(())
        boxes, index = outputs["object_boxes"].detach(), outputs["image_index"]
        shift, log_scale, degrees = self.invariance_jitter
        # The views are encoded in the precision the forward pass ran in: the encoder's
        # convolutions are this term's cost, and the loss around it is kept in float32.
        dtype = outputs.get("autocast_dtype")
        views = []
        for _ in range(2):
            affines = jittered_box_affines(boxes, self.what_crop_size, shift, log_scale, degrees)
            with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
                what = self._object_what(images, outputs["features"], boxes, index,
                                         outputs["anchor_index"], affines)  # fmt: skip
                views.append(self.projector(what).float())
        return nt_xent(views[0], views[1], self.invariance_temperature)

    def forward(self, images: Tensor, *, sample: bool | None = None) -> dict[str, Any]:
        """Encode, render and merge.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            sample: draw z_what / z_depth (and z_present in ``none`` mode) from the posterior;
                default: in training mode only (evaluation uses posterior means).
        Returns (B images, A anchors, S cells, N rendered objects, D = z_what_size):
            ``boxes (B, A, 4)`` z_where; ``present_prob (B, A)`` beta; ``present (B, A)`` bool
            z_present; ``labels (B, A)`` detector class; ``what_mean, what (B, S, D)`` per
            cell (None unless ``what_input="cells"``); ``object_what_mean, object_what (N, D)``
            per rendered object; ``features`` the detector's pyramid;
            ``depth_mean, depth (B, S)``; ``background_what_mean, background_what (B, D)`` or
            None; ``image_index, anchor_index, cell_index (N,)``; ``object_boxes (N, 4)``;
            ``object_scores (N,)`` beta; ``object_depth (N,)``; ``glimpses (N, C, g, g)``;
            ``weights (N,)`` merge weights; ``reconstruction (B, C, H, W)``;
            ``autocast_dtype`` the autocast dtype this pass ran under, or None (the loss's
            invariance term encodes its views in it).
        """
        check_images(images, self.in_channels, self.input_size)
        sample = self.training if sample is None else sample
        num_images = images.shape[0]
        boxes, beta, labels, features = self._detect(images)
        cell_what_mean, background_mean = self.what_encoder(features)
        depth_mean = self.depth_encoder(features)
        what, depth, background_what = cell_what_mean, depth_mean, background_mean
        if sample:  # reparameterised draws (z_what per cell first, as before glimpse modes)
            if cell_what_mean is not None:
                what = cell_what_mean + self.z_what_sigma * torch.randn_like(cell_what_mean)
            depth = depth_mean + self.z_depth_sigma * torch.randn_like(depth_mean)
            if background_mean is not None:
                background_what = background_mean + self.z_what_sigma * torch.randn_like(
                    background_mean
                )

        if self.dedup == "none" and sample:
            present = torch.bernoulli(beta).bool()
        elif self.dedup == "soft":
            present = beta >= self.soft_min_present
        else:
            present = beta >= self.present_threshold
        image_index, anchor_index = select_objects(
            boxes, beta, present, self.dedup, self.nms_iou, self.max_objects
        )
        cell_index = self.anchor_to_cell[anchor_index]
        object_boxes = self._sanitize_boxes(boxes[image_index, anchor_index])
        object_scores = beta[image_index, anchor_index]
        object_depth = depth[image_index, cell_index]
        if cell_what_mean is not None:  # cells: one z_what per cell, shared by its anchors
            what_mean = cell_what_mean
            object_what_mean = what_mean[image_index, cell_index]
            object_what = what[image_index, cell_index]
        else:  # glimpse / both: one z_what per object
            what_mean = what = None
            object_what_mean = self._object_what(images, features, object_boxes, image_index,
                                                 anchor_index)  # fmt: skip
            object_what = object_what_mean
            if sample:
                object_what = object_what_mean + self.z_what_sigma * torch.randn_like(
                    object_what_mean
                )
        glimpses = self.what_decoder(object_what)
        canvases = place(glimpses, object_boxes, self.input_size)
        log_prior = torch.log(object_scores.clamp_min(1e-6)) if self.dedup == "soft" else None
        weights = depth_weights(object_depth, image_index, num_images, log_prior)
        reconstruction = merge_objects(canvases, weights, image_index, num_images)
        if background_what is not None:
            background = self.what_decoder(background_what)
            full = images.new_tensor([0.0, 0.0, self.input_size[1], self.input_size[0]])
            background = place(background, full.expand(num_images, 4), self.input_size)
            reconstruction = fill_background(reconstruction, background)
        if self.normalize_output:
            reconstruction = normalize_by_max(reconstruction)
        return {
            "boxes": boxes,
            "present_prob": beta,
            "present": present,
            "labels": labels,
            "what_mean": what_mean,
            "what": what,
            "object_what_mean": object_what_mean,
            "object_what": object_what,
            "features": features,
            "depth_mean": depth_mean,
            "depth": depth,
            "background_what_mean": background_mean,
            "background_what": background_what,
            "image_index": image_index,
            "anchor_index": anchor_index,
            "cell_index": cell_index,
            "object_boxes": object_boxes,
            "object_scores": object_scores,
            "object_depth": object_depth,
            "glimpses": glimpses,
            "weights": weights,
            "reconstruction": reconstruction,
            "autocast_dtype": autocast_dtype(images.device.type),
        }

    # -- loss ------------------------------------------------------------------------------------
    def log_likelihood(self, recon: Tensor, target: Tensor) -> Tensor:
        """Per-item log-likelihood ``(N,)`` of ``target`` under ``recon`` (both ``(N, ...)``)."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(recon, target)
        return gaussian_log_likelihood(recon, target, self.likelihood_sigma)

    def loss(self, images: Tensor, outputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Negative eq. 7, averaged over the batch, and its terms (batch means).

        ``log_lik_image``: log p(x | z) of the merged reconstruction. ``log_lik_objects``: the
        mean over an image's objects of log p(x_i | z_i), glimpse i against the input cropped to
        its box (``extract``); 0 for an image without objects; weighted by beta in ``soft``
        mode. ``kl_what`` / ``kl_depth``: KL to N(0, I) summed over the cells that render at
        least one object (plus the background z_what): the other cells' latents do not enter
        the likelihood, so their posterior is the prior and their KL is 0, as in the reference's
        reset of non-present latents.

        With ``invariance_weight`` > 0 the loss adds ``weight x`` :meth:`invariance_loss`.

        Returns ``loss`` (to minimise: -elbo + the invariance term), ``elbo`` (the weighted
        objective), ``invariance`` (NT-Xent, 0 when off),
        ``log_lik_image``, ``log_lik_objects``, ``kl_what``, ``kl_depth``, ``recon_mse``,
        ``objects_per_image``.
        """
        if images.shape != outputs["reconstruction"].shape:
            raise ValueError(
                f"loss: images {tuple(images.shape)} are not the batch these outputs came from "
                f"(reconstruction {tuple(outputs['reconstruction'].shape)})"
            )
        num_images = images.shape[0]
        image_index = outputs["image_index"]
        cell_index = outputs["cell_index"]
        log_lik_image = self.log_likelihood(outputs["reconstruction"], images)

        crops = extract(
            images,
            outputs["object_boxes"],
            (self.glimpse_size, self.glimpse_size),
            batch_index=image_index,
        )
        per_object = self.log_likelihood(outputs["glimpses"], crops)
        if self.dedup == "soft":
            object_weight = outputs["object_scores"]
        else:
            object_weight = torch.ones_like(per_object)
        weight_sum = images.new_zeros(num_images).index_add(0, image_index, object_weight)
        weighted = images.new_zeros(num_images).index_add(
            0, image_index, object_weight * per_object
        )
        log_lik_objects = weighted / weight_sum.clamp_min(1e-12)

        used = torch.zeros(outputs["depth_mean"].shape, dtype=torch.bool, device=images.device)
        used[image_index, cell_index] = True
        used = used.to(images.dtype)
        if outputs["what_mean"] is not None:  # per cell: the cells that render an object
            kl_what_cells = kl_normal_to_standard(outputs["what_mean"], self.z_what_sigma).sum(-1)
            kl_what = (kl_what_cells * used).sum(1)
        else:  # per object
            kl_objects = kl_normal_to_standard(outputs["object_what_mean"], self.z_what_sigma)
            kl_what = images.new_zeros(num_images).index_add(0, image_index, kl_objects.sum(-1))
        if outputs.get("background_what_mean") is not None:
            kl_what = kl_what + kl_normal_to_standard(
                outputs["background_what_mean"], self.z_what_sigma
            ).sum(-1)
        kl_depth_cells = kl_normal_to_standard(outputs["depth_mean"], self.z_depth_sigma)
        kl_depth = (kl_depth_cells * used).sum(1)

        elbo = (
            self.alpha_obj * log_lik_image
            + self.alpha_rec * log_lik_objects
            - self.alpha_what * kl_what
            - self.alpha_depth * kl_depth
        )
        invariance = self.invariance_loss(images, outputs)
        with torch.no_grad():
            recon_mse = (outputs["reconstruction"] - images).pow(2).mean()
            objects_per_image = images.new_tensor(len(image_index) / num_images)
        return {
            "loss": -elbo.mean() + self.invariance_weight * invariance,
            "elbo": elbo.mean(),
            "invariance": invariance.detach(),
            "log_lik_image": log_lik_image.mean(),
            "log_lik_objects": log_lik_objects.mean(),
            "kl_what": kl_what.mean(),
            "kl_depth": kl_depth.mean(),
            "recon_mse": recon_mse,
            "objects_per_image": objects_per_image,
        }

    # -- records ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, images: Tensor, score_threshold: float | None = None, nms_iou: float | None = None
    ) -> list[dict[str, Tensor]]:
        """Per-image object records for probes and predict, always by threshold + NMS (whatever
        ``dedup`` the model was trained with) and with posterior means.

        Returns per image: ``boxes (n, 4)`` XYXY px, ``scores (n,)`` beta, ``labels (n,)``
        detector class (contract: 0 is background), ``z_what (n, D)``, ``depth (n,)``,
        ``anchor_index (n,)``; ordered by descending score.
        """
        check_images(images, self.in_channels, self.input_size)
        threshold = self.present_threshold if score_threshold is None else score_threshold
        iou = self.nms_iou if nms_iou is None else nms_iou
        boxes, beta, labels, features = self._detect(images)
        what_mean, _ = self.what_encoder(features)
        depth_mean = self.depth_encoder(features)
        image_index, anchor_index = select_objects(
            boxes, beta, beta >= threshold, "nms", iou, self.max_objects
        )
        cell_index = self.anchor_to_cell[anchor_index]
        if what_mean is None:  # glimpse / both: z_what per object
            object_boxes = self._sanitize_boxes(boxes[image_index, anchor_index])
            object_what = self._object_what(images, features, object_boxes, image_index,
                                            anchor_index)  # fmt: skip
        records = []
        for b in range(images.shape[0]):
            mine = image_index == b
            anchors, cells = anchor_index[mine], cell_index[mine]
            records.append(
                {
                    "boxes": self._sanitize_boxes(boxes[b, anchors]),
                    "scores": beta[b, anchors],
                    "labels": labels[b, anchors],
                    "z_what": what_mean[b, cells] if what_mean is not None else object_what[mine],
                    "depth": depth_mean[b, cells],
                    "anchor_index": anchors,
                }
            )
        return records


# -- detector checkpoints --------------------------------------------------------------------------
def _init_arguments(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` (searched one level into nested dicts) that ``cls.__init__``
    accepts."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    found: dict[str, Any] = {}
    for value in values.values():
        if isinstance(value, Mapping):
            found.update({k: v for k, v in value.items() if k in accepted and k not in found})
    found.update({k: v for k, v in values.items() if k in accepted})
    return found


def _strip_prefix(state: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Find the prefix (e.g. ``"model."``) under which ``state`` holds all ``expected`` keys."""
    some_key = next(iter(sorted(expected)))
    for key in state:
        if key.endswith(some_key):
            prefix = key[: len(key) - len(some_key)]
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if expected <= set(stripped):
                return {k: stripped[k] for k in expected}
    missing = sorted(expected - set(state))[:5]
    raise KeyError(f"no prefix holds all detector weights (e.g. missing {missing})")


def _checkpoint_detector_arguments(hyper_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``SSDDetector`` arguments in a task's hyper-parameters: the ``model`` spec of a task that
    takes its model (``SSDTask``), else (older checkpoints) the flat arguments, one level deep."""
    spec = hyper_parameters.get("model")
    if isinstance(spec, Mapping) and "class_path" in spec:
        return _init_arguments(SSDDetector, spec.get("init_args") or {})
    return _init_arguments(SSDDetector, hyper_parameters)


def load_detector(path: str | Path, detector_args: Mapping[str, Any] | None = None) -> SSDDetector:
    """An ``SSDDetector`` with the weights of a checkpoint, frozen-ready (eval mode).

    Accepts a Lightning checkpoint of any task that holds the detector as a submodule (its
    constructor arguments are read from the checkpoint's hyper-parameters, overridden by
    ``detector_args``) or a plain ``state_dict`` file (then ``detector_args`` must describe it).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"detector checkpoint {path}: file not found (train the detector first)")
    try:  # plain tensors and Python values only: never run a checkpoint's pickled code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"detector checkpoint {path}: cannot be read safely: {err}") from err
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        args = _checkpoint_detector_arguments(checkpoint.get("hyper_parameters") or {})
    elif isinstance(checkpoint, Mapping):
        state, args = checkpoint, {}
    else:
        raise ConfigError(f"detector checkpoint {path}: expected a dict, got {type(checkpoint)}")
    args.update(detector_args or {})
    if "image_size" in args:
        args["image_size"] = tuple(args["image_size"])
    detector = SSDDetector(**args)
    try:
        weights = _strip_prefix(state, set(detector.state_dict()))
    except KeyError as err:
        raise ConfigError(
            f"detector checkpoint {path}: does not match SSDDetector({args}): {err}"
        ) from err
    detector.load_state_dict(weights, strict=True)
    return detector.eval()
