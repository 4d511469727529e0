"""SSD detector on a VGG11-BN-lite feature pyramid: anchors, box coding, matching, loss, NMS.

The SSDIR paper's detector (Zielinski & Kajdanowicz), sized from the input: see
:mod:`wherewhat.models.vgg_lite` for the pyramid and :func:`anchor_sizes` for the default boxes.

Conventions (the contract SSDIR and LZU code against):

- Boxes are XYXY pixels (the frame of ``wherewhat.geometry``). Anchors are one buffer ``(A, 4)``
  ordered level-major, then cell row-major within the level, then anchor within the cell;
  ``anchor_level`` / ``anchor_cell`` say where each one sits.
- ``num_classes`` counts object classes without background. Logit 0 is background; object label
  ``k`` is logit ``k`` (class-agnostic: every object is 1; per class: digit + 1, see
  :meth:`SSDDetector.detector_labels`).
- Box coding is the SSD one with variances 0.1 (centre) / 0.2 (size), i.e. torchvision's
  ``BoxCoder`` with weights (10, 10, 5, 5), whose XYXY pixel convention is ours.

Pieces taken from torchvision: ``BoxCoder`` (coding), ``box_iou``, ``batched_nms``,
``clip_boxes_to_image``. Written here, and why:

- anchors: ``DefaultBoxGenerator`` builds them per forward pass from an ``ImageList``, scales
  each side of non-square images separately, and does not say which level / cell an anchor
  belongs to; SSDIR needs a fixed buffer with that bookkeeping.
- matching: ``SSDMatcher`` forces each ground truth onto its best anchor, but when two ground
  truths share the same best anchor the later one overwrites the first, which then has no
  anchor at all (it happens with overlapping small digits). :func:`match_anchors` gives every
  ground truth its own anchor.
- loss and hard-negative mining live inside torchvision's ``SSD.compute_loss``, tied to its
  model class; :func:`hard_negative_mask` and :func:`ssd_loss` are the same rule as functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from wherewhat.models.spec import configurable
from wherewhat.models.vgg_lite import VGGLiteBackbone

__all__ = [
    "BOX_CODER_WEIGHTS",
    "SSDDetector",
    "SSDInference",
    "anchor_sizes",
    "make_anchors",
    "match_anchors",
    "matched_level_shares",
    "hard_negative_mask",
    "ssd_loss",
    "validate_targets",
]

# SSD's variances 0.1 (centre) and 0.2 (log size) as torchvision BoxCoder weights (1 / var).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Default smallest / largest anchor as fractions of the shorter image side: 30 -> 288 px at 300
# (the paper's "~32 to ~287 px"), 12.8 -> 122.9 px at 128 (tight boxes of 12-px digits: ~9 px).
MIN_ANCHOR_FRACTION = 0.1
MAX_ANCHOR_FRACTION = 0.96


def anchor_sizes(
    num_levels: int,
    anchors_per_cell: int,
    min_size: float,
    max_size: float,
) -> list[list[float]]:
    """Square anchor sides per level: ``num_levels * anchors_per_cell`` sizes evenly spaced from
    ``min_size`` to ``max_size`` (pixels); level ``l`` takes the ``l``-th consecutive group.

    At 300 px (5 levels, 2 per cell, 32 -> 288 px): 32, 60, 89, 117, 146, ..., 260, 288.
    """
    count = num_levels * anchors_per_cell
    if not 0 < min_size <= max_size:
        raise ValueError(f"anchor sizes need 0 < min_size <= max_size, got {min_size}, {max_size}")
    if count == 1:
        return [[float(min_size)]]
    step = (max_size - min_size) / (count - 1)
    sizes = [min_size + i * step for i in range(count)]
    return [sizes[i * anchors_per_cell : (i + 1) * anchors_per_cell] for i in range(num_levels)]


def make_anchors(
    image_size: tuple[int, int],
    grid_sizes: Sequence[tuple[int, int]],
    sizes: Sequence[Sequence[float]],
) -> tuple[Tensor, Tensor, Tensor]:
    """Square default boxes centred on the cells of every level.

    Cell (i, j) of an (h, w) grid is centred at ((j + 0.5) W / w, (i + 0.5) H / h): the grid
    tiles the whole image, as in SSD (so a 300-px image's 18 x 18 cells are 16.7 px).

    Returns ``anchors (A, 4)`` XYXY px, ``anchor_level (A,)``, ``anchor_cell (A,)`` (row-major
    cell index in its level), ordered level, cell, anchor-in-cell.
    """
    height, width = image_size
    boxes, levels, cells = [], [], []
    for level, ((h, w), level_sizes) in enumerate(zip(grid_sizes, sizes, strict=True)):
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * (height / h)
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * (width / w)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (h, w): row-major cells
        half = torch.tensor(level_sizes, dtype=torch.float64) / 2  # (k,)
        centres = torch.stack([cx, cy], dim=-1).reshape(h * w, 1, 2)
        level_boxes = torch.cat([centres - half[:, None], centres + half[:, None]], dim=-1)
        boxes.append(level_boxes.reshape(-1, 4))
        k = len(level_sizes)
        levels.append(torch.full((h * w * k,), level, dtype=torch.long))
        cells.append(torch.arange(h * w).repeat_interleave(k))
    return torch.cat(boxes).float(), torch.cat(levels), torch.cat(cells)


def match_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Index of the ground truth each anchor learns, ``(A,)`` long, -1 for background.

    An anchor matches the ground truth it overlaps most if that IoU >= ``iou_threshold``.
    Then every ground truth is forced onto an anchor of its own: in order of decreasing best
    IoU, each takes its highest-IoU anchor not already forced by another ground truth (so two
    ground truths that share a best anchor both keep one). Needs ``n <= A``.
    """
    matches = torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
    if len(gt_boxes) == 0:
        return matches
    iou = box_iou(gt_boxes, anchors)  # (n, A)
    best_iou, best_gt = iou.max(dim=0)
    matches = torch.where(best_iou >= iou_threshold, best_gt, matches)
    forced = torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
    order = iou.max(dim=1).values.argsort(descending=True)
    for gt in order.tolist():
        candidates = iou[gt].masked_fill(forced, -1.0)
        anchor = int(candidates.argmax())
        matches[anchor] = gt
        forced[anchor] = True
    return matches


def matched_level_shares(
    boxes_per_image: list[Tensor],
    anchors: Tensor,
    anchor_level: Tensor,
    num_levels: int,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Which pyramid levels the training targets reach: per level, the share of ground-truth
    boxes with at least one anchor of that level matched to them by :func:`match_anchors`
    (``(L,)``; shares can sum to more than 1 when a box matches anchors on several levels).

    A level whose share is 0 never receives an object: its heads, and in SSDIR its z_what head,
    are never trained. ``boxes_per_image``: ``(n_i, 4)`` XYXY px each.
    """
    reached = torch.zeros(num_levels)
    total = 0
    for boxes in boxes_per_image:
        if len(boxes) == 0:
            continue
        matches = match_anchors(boxes.to(anchors), anchors, iou_threshold)
        positive = matches >= 0
        hit = torch.zeros(len(boxes), num_levels, dtype=torch.bool)
        hit[matches[positive].cpu(), anchor_level[positive].long().cpu()] = True
        reached += hit.sum(0)
        total += len(boxes)
    return reached / max(total, 1)


def hard_negative_mask(cls_loss: Tensor, positive: Tensor, ratio: float = 3.0) -> Tensor:
    """Negatives kept for the classification loss: per image, the ``ratio * num_positives``
    negatives with the highest loss (all of them if there are fewer).

    ``cls_loss`` (B, A) per-anchor loss (no gradient needed), ``positive`` (B, A) bool ->
    ``(B, A)`` bool, never True where ``positive`` is.
    """
    loss = cls_loss.detach().masked_fill(positive, -math.inf)
    num_negatives = (positive.sum(dim=1) * ratio).floor().long()
    num_negatives = torch.minimum(num_negatives, (~positive).sum(dim=1))
    order = loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    return (rank < num_negatives[:, None]) & ~positive


def validate_targets(targets: Sequence[dict], num_images: int, num_classes: int) -> None:
    """Raise ``ValueError`` naming the image and what was expected for a malformed target.

    Each target: ``boxes`` (n, 4) finite float XYXY with x2 > x1 and y2 > y1, ``labels`` (n,)
    integers in [1, num_classes] (detector labels: 0 is background).
    """
    if len(targets) != num_images:
        raise ValueError(f"expected {num_images} targets (one per image), got {len(targets)}")
    for index, target in enumerate(targets):
        where = f"target of image {index}"
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"{where}: expected a dict with 'boxes' and 'labels'")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{where}: boxes must be a (n, 4) tensor, got {shape}")
        if not boxes.is_floating_point() or not torch.isfinite(boxes).all():
            raise ValueError(f"{where}: boxes must be finite floats, got {boxes.dtype}")
        if len(boxes) and not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all():
            raise ValueError(f"{where}: boxes must be XYXY with x2 > x1 and y2 > y1")
        if not isinstance(labels, Tensor) or labels.shape != (len(boxes),):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"{where}: labels must be a ({len(boxes)},) tensor, got {shape}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{where}: labels must be integers, got {labels.dtype}")
        if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"{where}: labels must be in [1, {num_classes}] (0 is background), "
                f"got {labels.min().item()}..{labels.max().item()}"
            )


def ssd_loss(
    loc: Tensor,
    logits: Tensor,
    loc_targets: Tensor,
    cls_targets: Tensor,
    negative_ratio: float = 3.0,
) -> dict[str, Tensor]:
    """SSD loss: smooth-L1 on positive anchors' codes + cross-entropy on positives and hard
    negatives, both summed and divided by the number of positives in the batch (at least 1).

    ``loc`` / ``loc_targets`` (B, A, 4), ``logits`` (B, A, K + 1), ``cls_targets`` (B, A) long
    (0 = background). Returns ``{"loss", "loc_loss", "cls_loss"}``.
    """
    positive = cls_targets > 0
    normaliser = positive.sum().clamp(min=1).to(loc.dtype)
    loc_loss = F.smooth_l1_loss(loc[positive], loc_targets[positive], reduction="sum")
    per_anchor = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), cls_targets.reshape(-1), reduction="none"
    ).view_as(cls_targets)
    kept = positive | hard_negative_mask(per_anchor, positive, negative_ratio)
    cls_loss = per_anchor[kept].sum()
    loc_loss, cls_loss = loc_loss / normaliser, cls_loss / normaliser
    return {"loss": loc_loss + cls_loss, "loc_loss": loc_loss, "cls_loss": cls_loss}


@configurable
class SSDDetector(nn.Module):
    """SSD on a VGG11-BN-lite pyramid; works with or without Lightning.

    Args:
        image_size: (H, W) the anchors are laid out for.
        in_channels: image channels.
        num_classes: object classes without background (1 = class-agnostic "object").
        width_mult: backbone width multiplier (1.0 = VGG11 widths).
        first_stride: 4, 8 or 16, stride of the finest level; None: 16 for images >= 256 px,
            else 8.
        num_levels: keep the finest this many pyramid levels (None: down to 1 x 1); fewer
            levels when the data holds no object as large as the coarse levels' anchors.
        anchors_per_cell: square default boxes per cell (the paper: 2).
        min_anchor_size / max_anchor_size: smallest / largest anchor side in pixels; None:
            ``0.1`` and ``0.96`` of ``min(H, W)`` (300 px: 30 -> 288; the paper: ~32 -> ~287).
        iou_threshold: an anchor is positive when its IoU with a ground truth reaches this.
        negative_ratio: hard negatives kept per positive in the classification loss.

    Shapes: images ``(B, C, H, W)`` raw in [0, 1]; ``A`` = number of anchors.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (128, 128),
        in_channels: int = 1,
        num_classes: int = 1,
        width_mult: float = 1.0,
        first_stride: int | None = None,
        anchors_per_cell: int = 2,
        min_anchor_size: float | None = None,
        max_anchor_size: float | None = None,
        iou_threshold: float = 0.5,
        negative_ratio: float = 3.0,
        num_levels: int | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (without background), got {num_classes}")
        if anchors_per_cell < 1:
            raise ValueError(f"anchors_per_cell must be >= 1, got {anchors_per_cell}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.anchors_per_cell = anchors_per_cell
        self.iou_threshold = iou_threshold
        self.negative_ratio = negative_ratio

        self.backbone = VGGLiteBackbone(
            self.image_size, in_channels, width_mult, first_stride, num_levels
        )
        self.grid_sizes: list[tuple[int, int]] = list(self.backbone.grid_sizes)
        self.feature_channels: list[int] = list(self.backbone.feature_channels)
        side = min(self.image_size)
        if min_anchor_size is None:
            min_anchor_size = MIN_ANCHOR_FRACTION * side
        if max_anchor_size is None:
            max_anchor_size = MAX_ANCHOR_FRACTION * side
        self.anchor_sizes = anchor_sizes(
            len(self.grid_sizes), anchors_per_cell, float(min_anchor_size), float(max_anchor_size)
        )
        anchors, level, cell = make_anchors(self.image_size, self.grid_sizes, self.anchor_sizes)
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("anchor_level", level, persistent=False)
        self.register_buffer("anchor_cell", cell, persistent=False)

        k = anchors_per_cell
        self.loc_heads = nn.ModuleList(
            nn.Conv2d(c, k * 4, 3, padding=1) for c in self.feature_channels
        )
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(c, k * (num_classes + 1), 3, padding=1) for c in self.feature_channels
        )
        self.box_coder = BoxCoder(BOX_CODER_WEIGHTS)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    # -- network -------------------------------------------------------------------------------
    def features(self, images: Tensor) -> list[Tensor]:
        """``(B, C, H, W)`` -> ``[(B, C_l, h_l, w_l)]`` per pyramid level."""
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and (images.ndim != 4 or images.shape[1] != self.in_channels):
            raise ValueError(
                f"expected images (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        features = self.backbone(images)
        if not tracing:
            grids = [tuple(f.shape[-2:]) for f in features]
            if grids != self.grid_sizes:
                raise ValueError(
                    f"images of size {tuple(images.shape[-2:])} give grids {grids}, but the "
                    f"anchors were laid out for image_size={self.image_size} ({self.grid_sizes})"
                )
        return features

    def head(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-level maps -> ``loc (B, A, 4)`` encoded offsets, ``logits (B, A, K + 1)``, in
        anchor order (level, cell row-major, anchor in cell)."""
        locs, logits = [], []
        for feature, loc_head, cls_head in zip(
            features, self.loc_heads, self.cls_heads, strict=True
        ):
            batch = feature.shape[0]
            # (B, k * D, h, w) -> (B, h, w, k * D) -> (B, h * w * k, D)
            locs.append(loc_head(feature).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            logits.append(
                cls_head(feature).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes + 1)
            )
        return torch.cat(locs, dim=1), torch.cat(logits, dim=1)

    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``{"loc" (B, A, 4), "logits" (B, A, K + 1), "features" [(B, C_l, h_l, w_l)]}``."""
        features = self.features(images)
        loc, logits = self.head(features)
        return {"loc": loc, "logits": logits, "features": features}

    # -- box coding ----------------------------------------------------------------------------
    def decode_boxes(self, loc: Tensor) -> Tensor:
        """Encoded offsets ``(B, A, 4)`` -> boxes ``(B, A, 4)`` XYXY pixels (not clipped)."""
        anchors = self.anchors.to(loc.dtype).expand_as(loc)
        return self.box_coder.decode_single(loc.reshape(-1, 4), anchors.reshape(-1, 4)).view_as(loc)

    def encode_boxes(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Boxes and anchors ``(..., 4)`` XYXY px (broadcast) -> SSD offsets ``(..., 4)``:
        ``((cx - acx) / (0.1 aw), (cy - acy) / (0.1 ah), log(w / aw) / 0.2, log(h / ah) / 0.2)``."""
        boxes, anchors = torch.broadcast_tensors(boxes, anchors.to(boxes.dtype))
        codes = self.box_coder.encode_single(boxes.reshape(-1, 4), anchors.reshape(-1, 4))
        return codes.view(boxes.shape)

    # -- training ------------------------------------------------------------------------------
    def detector_labels(self, digit_labels: Tensor) -> Tensor:
        """Dataset class ids (0-based, e.g. digits) -> detector labels: all 1 when class-agnostic,
        ``label + 1`` per class (raises if a class id is outside ``[0, num_classes)``)."""
        if self.num_classes == 1:
            return torch.ones_like(digit_labels, dtype=torch.long)
        if len(digit_labels) and (digit_labels.min() < 0 or digit_labels.max() >= self.num_classes):
            raise ValueError(
                f"class ids must be in [0, {self.num_classes}), got "
                f"{digit_labels.min().item()}..{digit_labels.max().item()}"
            )
        return digit_labels.long() + 1

    def assign_targets(self, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """Per-anchor training targets: ``loc_targets (B, A, 4)`` (zeros on background) and
        ``cls_targets (B, A)`` long (0 background, else the matched detector label)."""
        loc_targets, cls_targets = [], []
        for target in targets:
            boxes = target["boxes"].to(self.anchors)
            matches = match_anchors(boxes, self.anchors, self.iou_threshold)
            positive = matches >= 0
            matched = boxes[matches.clamp(min=0)] if len(boxes) else self.anchors
            codes = self.encode_boxes(matched, self.anchors)
            loc_targets.append(torch.where(positive[:, None], codes, torch.zeros_like(codes)))
            labels = target["labels"].to(self.anchors.device).long()
            classes = labels[matches.clamp(min=0)] if len(labels) else torch.zeros_like(matches)
            cls_targets.append(torch.where(positive, classes, torch.zeros_like(classes)))
        return torch.stack(loc_targets), torch.stack(cls_targets)

    def loss(self, outputs: dict, targets: Sequence[dict]) -> dict[str, Tensor]:
        """SSD loss of :meth:`forward`'s outputs against ``targets`` (per image ``boxes`` (n, 4)
        XYXY px and ``labels`` (n,) detector labels in [1, num_classes]).

        Returns ``{"loss", "loc_loss", "cls_loss"}``; raises ``ValueError`` naming the image for
        a malformed target.
        """
        loc, logits = outputs["loc"], outputs["logits"]
        validate_targets(targets, loc.shape[0], self.num_classes)
        loc_targets, cls_targets = self.assign_targets(targets)
        return ssd_loss(loc, logits, loc_targets, cls_targets, self.negative_ratio)

    # -- inference -----------------------------------------------------------------------------
    def scores(self, logits: Tensor) -> Tensor:
        """``(B, A, K + 1)`` logits -> ``(B, A, K)`` object-class probabilities (softmax)."""
        return logits.softmax(dim=-1)[..., 1:]

    @torch.no_grad()
    def detect(
        self,
        outputs: dict,
        score_threshold: float = 0.5,
        nms_iou: float = 0.45,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
    ) -> list[dict[str, Tensor]]:
        """Per image: ``boxes (n, 4)`` XYXY px clipped to the image, ``scores (n,)``,
        ``labels (n,)`` detector labels (1..K), ``anchor_index (n,)`` long: the anchor each
        detection was decoded from. Class-wise NMS (``batched_nms``), highest scores first."""
        boxes = self.decode_boxes(outputs["loc"])
        scores = self.scores(outputs["logits"])
        return [
            self._detect_one(b, s, score_threshold, nms_iou, max_detections, pre_nms_top_k)
            for b, s in zip(boxes, scores, strict=True)
        ]

    def _detect_one(
        self,
        boxes: Tensor,
        scores: Tensor,
        score_threshold: float,
        nms_iou: float,
        max_detections: int,
        pre_nms_top_k: int,
    ) -> dict[str, Tensor]:
        flat = scores.flatten()  # (A * K,): anchor-major, class-minor
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if len(keep) > pre_nms_top_k:
            keep = keep[flat[keep].topk(pre_nms_top_k).indices]
        anchor_index = keep // self.num_classes
        labels = keep % self.num_classes + 1
        candidates = clip_boxes_to_image(boxes[anchor_index], self.image_size)
        kept = batched_nms(candidates, flat[keep], labels, nms_iou)[:max_detections]
        return {
            "boxes": candidates[kept],
            "scores": flat[keep][kept],
            "labels": labels[kept],
            "anchor_index": anchor_index[kept],
        }


class SSDInference(nn.Module):
    """The exportable part of :class:`SSDDetector`: images -> decoded boxes and scores of every
    anchor, ``boxes (B, A, 4)`` XYXY px (clipped), ``scores (B, A, K)``.

    Thresholding and NMS stay outside (use :meth:`SSDDetector.detect`'s rule or
    ``torchvision.ops.batched_nms`` on the outputs): their output size depends on the data,
    which ONNX export turns into dynamic shapes and NonMaxSuppression ops that differ from
    torchvision's in tie-breaking; the dense outputs export and match exactly.
    """

    def __init__(self, detector: SSDDetector):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        loc, logits = self.detector.head(self.detector.features(images))
        height, width = self.detector.image_size
        boxes = self.detector.decode_boxes(loc)
        # clamp per coordinate (clip_boxes_to_image does the same, but exports poorly)
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        return {"boxes": boxes, "scores": self.detector.scores(logits)}
