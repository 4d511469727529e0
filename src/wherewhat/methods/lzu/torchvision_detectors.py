"""LZU around a torchvision detector (FCOS, RetinaNet, Faster R-CNN) in one call.

``zoom_detector(model, saliency, input_size)`` returns a :class:`ZoomedTorchvisionDetector` with
torchvision's interface, ``forward(images, targets=None, saliency_boxes=None)``: images, target
boxes and detections all in pixels of the *original* images. The model is changed in place
(deep-copy it first to keep the plain one); its weights are shared, not copied:

- ``model.transform`` -> :class:`NoResizeTransform`: normalises as before but never resizes, so
  the LZU zoom is the only resampling (no re-upsampling of a zoomed image);
- ``model.backbone`` -> an :class:`~wherewhat.methods.lzu.wrapper.LZU` around it: the backbone
  sees an ``input_size`` image, its features are unzoomed onto the original frame;
- the anchor generator (``model.anchor_generator``, or ``model.rpn.anchor_generator`` for
  Faster R-CNN) -> :class:`ZoomedFrameAnchors`.

Frames. Let ``(Hp, Wp)`` be the padded batch and ``(h, w) = input_size``. The unzoomed features
keep the zoomed maps' shapes and cover the whole original frame, i.e. they are indexed exactly
like a plain model's features of the image uniformly resized to ``(h, w)`` (the "input frame").
So the detector's box geometry (anchors, box coding, RoI pooling and its FPN level choice,
clipping, losses) runs unchanged in the input frame: the transform scales target boxes by
``(w / Wp, h / Hp)`` into it and detections back out. In original pixels this *is* every
anchor's size and stride scaled by ``(Wp / w, Hp / h)`` (anchors cover the same objects as on the
input-size image), and exactly so: rescaling torchvision's anchor sizes in place would not be
(its stride is the integer ``image // feature``, and Faster R-CNN's RoI pooler rounds its scale
to a power of two and picks FPN levels from box sizes in pixels). With a uniform saliency the
wrapped model therefore equals the plain model run on ``F.interpolate(image, input_size,
mode="bilinear", align_corners=False)``, its boxes scaled by original / input.

Sizes. A batch is padded (bottom/right, zeros after normalisation) to its largest height and
width rounded up to ``size_divisible`` (default 1: the backbone only ever sees ``input_size``,
so the original needs no divisibility). The zoom maps the whole padded batch onto
``input_size``, so padding costs input pixels: batch same-size images. ``input_size`` itself must
be a multiple of the detector's own ``size_divisible`` (32 for the FPN detectors), the size the
plain model pads its resized image to.

Adaptive saliency (:class:`~wherewhat.geometry.saliency.AdaptiveSaliency` and subclasses; boxes
in original pixels, so give its ``bandwidth`` and ``jitter`` at the original resolution). The
boxes of a call are, in this order: ``saliency_boxes`` if given (one ``(n_i, 4)`` XYXY tensor per
image); in training, the targets' boxes (the saliency jitters them itself); otherwise (eval,
video) the previous eval call's detections with score >= ``prior_score_thresh``. The first call
without boxes (or after :meth:`ZoomedTorchvisionDetector.reset`, e.g. a new video) uses no boxes,
i.e. the uniform warp. To evaluate with ground-truth boxes as the prior, pass them as
``saliency_boxes``. Uniform and fixed saliencies need no boxes (given ones are passed on).

Not supported: Mask and Keypoint R-CNN (masks and keypoints are not rescaled), SSD, models whose
anchor generator is not torchvision's ``AnchorGenerator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from wherewhat.geometry.saliency import AdaptiveSaliency, SaliencySource
from wherewhat.methods.lzu.wrapper import LZU

__all__ = [
    "NoResizeTransform",
    "ZoomedFrameAnchors",
    "ZoomedTorchvisionDetector",
    "zoom_detector",
]

_EXPECTED = (
    "a torchvision FCOS, RetinaNet or Faster R-CNN: a GeneralizedRCNNTransform at .transform, "
    "a .backbone, and an AnchorGenerator at .anchor_generator (FCOS, RetinaNet) or "
    ".rpn.anchor_generator (Faster R-CNN)"
)


def _size_pair(size, what: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{what} must be two positive integers (h, w), got {size}")
    return int(size[0]), int(size[1])


class NoResizeTransform(GeneralizedRCNNTransform):
    """A detector's transform minus its resize: normalise, pad-batch, map boxes to the input frame.

    Args:
        base: the detector's transform (its mean and std are kept; its min/max size are unused).
        input_size: ``(h, w)`` the LZU zooms the padded batch to.
        size_divisible: the padded batch's height and width are multiples of it.

    ``forward(images, targets)``: images ``(C, H_i, W_i)``; returns an ``ImageList`` whose tensor
    is the padded batch ``(B, C, Hp, Wp)`` at original resolution and whose ``image_sizes`` are
    the images' sizes in the input frame, and targets whose boxes are scaled into it.
    ``postprocess`` scales detections back to original pixels and clips them to each image.
    """

    def __init__(
        self, base: GeneralizedRCNNTransform, input_size: tuple[int, int], size_divisible: int = 1
    ):
        super().__init__(
            base.min_size,
            base.max_size,
            base.image_mean,
            base.image_std,
            size_divisible=size_divisible,
        )
        self.input_size = _size_pair(input_size, "input_size")

    def padded_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """``(Hp, Wp)`` of a batch of images of ``sizes`` (as :meth:`batch_images` pads)."""
        d = self.size_divisible
        return (
            math.ceil(max(s[0] for s in sizes) / d) * d,
            math.ceil(max(s[1] for s in sizes) / d) * d,
        )

    def input_scale(self, sizes: Sequence[tuple[int, int]]) -> tuple[float, float]:
        """``(sx, sy)``: input-frame pixels per original pixel for a batch of ``sizes``."""
        padded = self.padded_size(sizes)
        return self.input_size[1] / padded[1], self.input_size[0] / padded[0]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target  # the LZU zoom is the only resampling

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        for image in images:
            if image.dim() != 3:
                raise ValueError(f"images must be (C, H, W) tensors, got {tuple(image.shape)}")
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch = self.batch_images([self.normalize(image) for image in images], self.size_divisible)
        sx, sy = self.input_scale(sizes)
        image_sizes = [(round(h * sy), round(w * sx)) for h, w in sizes]
        if targets is not None:
            targets = [self._scaled_target(target, sx, sy) for target in targets]
        return ImageList(batch, image_sizes), targets

    @staticmethod
    def _scaled_target(target: dict[str, Tensor], sx: float, sy: float) -> dict[str, Tensor]:
        target = dict(target)  # never change the caller's dict
        boxes = target["boxes"]
        if not boxes.is_floating_point():
            boxes = boxes.float()
        target["boxes"] = boxes * boxes.new_tensor([sx, sy, sx, sy])
        return target

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        sx, sy = self.input_scale(original_image_sizes)
        for detections, (h, w) in zip(result, original_image_sizes, strict=True):
            boxes = detections["boxes"] / detections["boxes"].new_tensor([sx, sy, sx, sy])
            limits = boxes.new_tensor([w, h, w, h])
            detections["boxes"] = torch.minimum(boxes.clamp_min(0), limits)
        return result

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(Normalize(mean={self.image_mean}, std={self.image_std}), "
            f"no resize, input_size={self.input_size}, size_divisible={self.size_divisible})"
        )


class ZoomedFrameAnchors(nn.Module):
    """A torchvision anchor generator run in the input frame.

    The generator reads only the image tensor's shape (for its strides); it is shown a
    zero-copy ``(B, C) + input_size`` view instead of the original-size batch, so its anchors are
    those of the plain model on the input-size image, in input-frame pixels.
    """

    def __init__(self, generator: AnchorGenerator, input_size: tuple[int, int]):
        super().__init__()
        self.generator = generator
        self.input_size = _size_pair(input_size, "input_size")

    def num_anchors_per_location(self) -> list[int]:
        return self.generator.num_anchors_per_location()

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        shape_only = image_list.tensors[..., :1, :1].expand(-1, -1, *self.input_size)
        return self.generator(ImageList(shape_only, image_list.image_sizes), feature_maps)


class _FedLZU(LZU):
    """LZU in a detector's backbone slot: torchvision calls ``backbone(tensor)`` with one
    argument, so the wrapper sets the saliency boxes of the current call on ``pending_boxes``."""

    pending_boxes: list[Tensor] | None = None

    def forward(self, images: Tensor, boxes: Sequence[Tensor] | None = None):
        return super().forward(images, self.pending_boxes if boxes is None else boxes)


def _anchor_owner(model: nn.Module) -> nn.Module:
    """The module holding the anchor generator: the model, or its RPN (Faster R-CNN)."""
    name = type(model).__name__
    if not isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform):
        raise ValueError(f"zoom_detector expects {_EXPECTED}; {name} has no such .transform")
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise ValueError(f"zoom_detector expects {_EXPECTED}; {name} has no .backbone module")
    if isinstance(model.backbone, LZU):
        raise ValueError(f"{name} is already zoomed (its backbone is an LZU)")
    heads = getattr(model, "roi_heads", None)
    if heads is not None and (heads.has_mask() or heads.has_keypoint()):
        raise ValueError(
            f"zoom_detector does not rescale masks or keypoints; {name} predicts them "
            "(use a Faster R-CNN, FCOS or RetinaNet)"
        )
    for owner in (model, getattr(model, "rpn", None)):
        if isinstance(getattr(owner, "anchor_generator", None), AnchorGenerator):
            return owner
    raise ValueError(f"zoom_detector expects {_EXPECTED}; {name} has no such anchor generator")


class ZoomedTorchvisionDetector(nn.Module):
    """A torchvision detector behind an LZU zoom (build it with :func:`zoom_detector`).

    ``forward(images, targets=None, saliency_boxes=None)`` as torchvision's: ``images`` a list of
    ``(C, H_i, W_i)`` tensors in [0, 1]; ``targets`` (training) one dict per image with
    ``"boxes"`` ``(n_i, 4)`` XYXY in original pixels and ``"labels"``; returns the loss dict in
    training, else one dict per image with ``boxes`` (original pixels, inside the image),
    ``scores``, ``labels``. ``saliency_boxes`` (adaptive saliency only): one ``(n_i, 4)`` XYXY
    tensor per image in original pixels; see the module notes for the fallbacks.

    Attributes: ``detector`` (the changed torchvision model), ``lzu``, ``saliency``,
    ``previous_boxes`` (the last eval call's detections kept for the next call, or None),
    ``last_saliency_boxes`` (the boxes the last call's saliency was given, or None).
    """

    def __init__(
        self,
        model: nn.Module,
        saliency: SaliencySource,
        input_size: tuple[int, int],
        *,
        size_divisible: int = 1,
        prior_score_thresh: float = 0.5,
        **lzu_options,
    ):
        super().__init__()
        input_size = _size_pair(input_size, "input_size")
        owner = _anchor_owner(model)
        divisor = model.transform.size_divisible
        if input_size[0] % divisor or input_size[1] % divisor:
            raise ValueError(
                f"input_size {input_size} must be a multiple of {divisor}, the size_divisible of "
                f"{type(model).__name__}'s transform (the plain model pads to it), e.g. "
                f"{tuple(math.ceil(s / divisor) * divisor for s in input_size)}"
            )
        if size_divisible < 1:
            raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
        model.transform = NoResizeTransform(model.transform, input_size, size_divisible)
        model.backbone = _FedLZU(model.backbone, saliency, input_size, **lzu_options)
        owner.anchor_generator = ZoomedFrameAnchors(owner.anchor_generator, input_size)
        self.detector = model
        self.input_size = input_size
        self.prior_score_thresh = float(prior_score_thresh)
        self.previous_boxes: list[Tensor] | None = None
        self.last_saliency_boxes: list[Tensor] | None = None

    @property
    def lzu(self) -> LZU:
        return self.detector.backbone

    @property
    def saliency(self) -> SaliencySource:
        return self.lzu.saliency

    @property
    def uses_boxes(self) -> bool:
        """True when the saliency is driven by boxes (adaptive or learned)."""
        return isinstance(self.saliency, AdaptiveSaliency)

    def reset(self) -> None:
        """Forget the previous detections (a new video): the next call without boxes is uniform."""
        self.previous_boxes = None

    def _saliency_boxes(self, images, targets, saliency_boxes) -> list[Tensor] | None:
        count = len(images)
        if saliency_boxes is not None:
            boxes = list(saliency_boxes)
        elif not self.uses_boxes:
            return None
        elif self.training:
            if targets is None:
                raise ValueError("targets are required in training mode (their boxes drive it)")
            boxes = [target["boxes"].detach() for target in targets]
        elif self.previous_boxes is not None:
            boxes = self.previous_boxes
            if len(boxes) != count:
                raise ValueError(
                    f"the previous call had {len(boxes)} images, this one {count}: pass "
                    "saliency_boxes, or call reset() to start again from the uniform warp"
                )
        else:  # first eval call: no prior, uniform warp
            boxes = [images[0].new_zeros((0, 4)) for _ in range(count)]
        if len(boxes) != count:
            raise ValueError(f"{len(boxes)} saliency box tensors for {count} images")
        return boxes

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        saliency_boxes: Sequence[Tensor] | None = None,
    ):
        boxes = self._saliency_boxes(images, targets, saliency_boxes)
        self.last_saliency_boxes = boxes
        self.lzu.pending_boxes = boxes
        try:
            output = self.detector(images, targets)
        finally:
            self.lzu.pending_boxes = None
        if not self.training and self.uses_boxes:
            self.previous_boxes = [
                d["boxes"][d["scores"] >= self.prior_score_thresh].detach() for d in output
            ]
        return output


def zoom_detector(
    model: nn.Module,
    saliency: SaliencySource,
    input_size: tuple[int, int],
    *,
    size_divisible: int = 1,
    prior_score_thresh: float = 0.5,
    **lzu_options,
) -> ZoomedTorchvisionDetector:
    """Wrap a torchvision FCOS / RetinaNet / Faster R-CNN in an LZU zoom (in place).

    Args:
        model: the detector; its transform, backbone and anchor generator are replaced (see the
            module notes), its weights kept.
        saliency: uniform, fixed, adaptive or learned saliency source.
        input_size: ``(h, w)`` the backbone sees; a multiple of the model's size_divisible.
        size_divisible: the padded original batch's sizes are multiples of it.
        prior_score_thresh: detections kept as the next call's saliency boxes (adaptive).
        lzu_options: any keyword of :class:`~wherewhat.methods.lzu.wrapper.LZU` (``separable``,
            ``fwhm``, ``padding``, ``anti_crop``, ``inverse``, ...).
    """
    return ZoomedTorchvisionDetector(
        model,
        saliency,
        input_size,
        size_divisible=size_divisible,
        prior_score_thresh=prior_score_thresh,
        **lzu_options,
    )
