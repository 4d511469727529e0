"""View sampling for self-supervised learning with Spatial Prediction (SP).

From one image ``(C, H, W)`` in [0, 1] the sampler makes

* the base method's two **global views** (SimCLR / BYOL positives), and
* ``num_pairs`` pairs of **local views** for SP, sampled independently of the global ones
  ("disentangled"),

and returns every view's box (XYXY pixels) in the original, un-flipped image frame.

Rules that keep SP honest (a network must not be able to read the answer off low-level cues):

* One horizontal-flip decision per image, applied to *all* its views; never to a single view,
  which would break the geometry between the views of a pair. SP targets are computed in the
  frame the network sees (``mirror_boxes`` when flipped), see ``head.py``.
* Independent photometric jitter per view (colour jitter, greyscale, Gaussian blur), so neither
  matching colours between views nor the resampling blur of small, upscaled crops gives away
  position or scale.
* Crops go through :func:`wherewhat.geometry.extract`, so the boxes are in the project's pixel
  convention and sub-pixel exact.

All randomness comes from an optional ``torch.Generator`` (else torch's global RNG, which
``DataLoader`` seeds per worker), so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.geometry import extract

__all__ = [
    "CropConfig",
    "PhotometricConfig",
    "ViewSamplerConfig",
    "ViewSampler",
    "sample_crop_boxes",
    "jitter_views",
    "mirror_boxes",
    "max_width_ratio",
]

# ITU-R BT.601 luma, the weights torchvision uses for greyscale.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass
class CropConfig:
    """Random-resized-crop parameters.

    Args:
        scale: range of the crop's area as a fraction of the image area.
        ratio: range of the crop's aspect ratio w / h (sampled log-uniformly).
        size: output ``(h, w)`` of each view in pixels.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    size: tuple[int, int] = (32, 32)

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        self.size = tuple(self.size)


@dataclass
class PhotometricConfig:
    """Per-view photometric jitter (SimCLR-style strengths by default).

    Colour jitter (brightness, contrast, saturation, hue, applied in that fixed order) with
    probability ``p_jitter``; greyscale with ``p_grey``; Gaussian blur with ``p_blur`` and sigma
    uniform in ``blur_sigma`` (in output pixels), kernel size ``blur_kernel`` (odd; ``None``:
    about a tenth of the view size, at least 3). Colour steps are skipped for 1-channel images.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    p_jitter: float = 0.8
    p_grey: float = 0.2
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None

    @classmethod
    def off(cls) -> PhotometricConfig:
        """No photometric change at all (for tests and geometry checks)."""
        return cls(p_jitter=0.0, p_grey=0.0, p_blur=0.0)


@dataclass
class ViewSamplerConfig:
    """Everything the :class:`ViewSampler` draws.

    Args:
        global_crop: crops for the base method's two views.
        local_crop: crops for SP's local views (LoGo-style 0.05-0.4 of the area by default).
        num_pairs: SP pairs per image (0: base method only).
        min_gap: minimum distance between the two box centres of a pair, in units of the image
            size (``hypot(dx, dy)`` with dx, dy as in the SP target). 0 disables it.
        flip_p: probability of flipping the whole image (all views) horizontally.
        global_photometric / local_photometric: jitter for each kind of view.
    """

    global_crop: CropConfig = field(default_factory=CropConfig)
    local_crop: CropConfig = field(
        default_factory=lambda: CropConfig(scale=(0.05, 0.4), size=(16, 16))
    )
    num_pairs: int = 1
    min_gap: float = 0.0
    flip_p: float = 0.5
    global_photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    local_photometric: PhotometricConfig = field(
        default_factory=lambda: PhotometricConfig(p_blur=0.5)
    )

    def __post_init__(self) -> None:
        if self.num_pairs < 0:
            raise ValueError(f"num_pairs must be >= 0, got {self.num_pairs}")
        if not 0 <= self.min_gap < math.sqrt(2):
            raise ValueError(f"min_gap must be in [0, sqrt(2)), got {self.min_gap}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must be a probability, got {self.flip_p}")


def max_width_ratio(scale: tuple[float, float], ratio: tuple[float, float]) -> float:
    """Largest possible ``w_B / w_A`` between two crops drawn with ``scale`` and ``ratio``.

    Width is ``sqrt(area * aspect)``, so the extreme ratio pairs the largest area and aspect with
    the smallest ones. ``log`` of it normalises the SP scale target to [-1, 1].
    """
    return math.sqrt((scale[1] * ratio[1]) / (scale[0] * ratio[0]))


def _uniform(
    n: int, lo: float, hi: float, generator: torch.Generator | None, device=None
) -> Tensor:
    rand = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    return rand * (hi - lo) + lo


def sample_crop_boxes(
    n: int,
    image_size: tuple[int, int],
    config: CropConfig,
    *,
    generator: torch.Generator | None = None,
    tries: int = 10,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random-resized-crop boxes ``(n, 4)`` XYXY float32 pixels inside an image ``(H, W)``.

    Area and log-aspect are uniform; of ``tries`` draws the first that fits is kept, and if none
    fits the last is clamped to the image (torchvision's rule, drawn in one batch and without
    its integer rounding: ``extract`` samples sub-pixel boxes exactly). Drawn on ``device``
    (that of the image the boxes are for; ``generator`` must live there too).
    """
    height, width = image_size
    log_ratio = (math.log(config.ratio[0]), math.log(config.ratio[1]))
    target = _uniform(tries * n, *config.scale, generator, device).view(tries, n)
    target = target * (height * width)
    aspect = torch.exp(_uniform(tries * n, *log_ratio, generator, device)).view(tries, n)
    w, h = torch.sqrt(target * aspect), torch.sqrt(target / aspect)
    fits = (w <= width) & (h <= height)
    # First draw that fits (argmax of a bool picks the first True); none fits: clamp the last.
    pick = torch.where(fits.any(0), fits.to(torch.uint8).argmax(0), tries - 1)
    box_w = w.gather(0, pick[None])[0].clamp(max=width)
    box_h = h.gather(0, pick[None])[0].clamp(max=height)
    corner = torch.rand(2, n, generator=generator, dtype=torch.float64, device=device)
    x0, y0 = corner[0] * (width - box_w), corner[1] * (height - box_h)
    return torch.stack([x0, y0, x0 + box_w, y0 + box_h], dim=-1).float()


def mirror_boxes(boxes: Tensor, width: float | Tensor) -> Tensor:
    """Boxes ``(..., 4)`` XYXY in the horizontally flipped image (x -> W - x); ``width`` is a
    scalar or one per box ``(...,)``."""
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)  # () or (...,)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([width - x1, y0, width - x0, y1], dim=-1)


def _pair_gap(boxes_a: Tensor, boxes_b: Tensor, image_size: tuple[int, int]) -> Tensor:
    height, width = image_size
    dx = ((boxes_b[:, 0] + boxes_b[:, 2]) - (boxes_a[:, 0] + boxes_a[:, 2])) / (2 * width)
    dy = ((boxes_b[:, 1] + boxes_b[:, 3]) - (boxes_a[:, 1] + boxes_a[:, 3])) / (2 * height)
    return torch.hypot(dx, dy)


def _luma(views: Tensor) -> Tensor:
    """``(N, 3, h, w)`` -> ``(N, 1, h, w)`` luminance."""
    weights = views.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (views * weights).sum(1, keepdim=True)


def _hue_matrices(shift: Tensor) -> Tensor:
    """``(N,)`` hue shifts in turns -> ``(N, 3, 3)`` RGB->RGB rotations of the YIQ chroma plane."""
    angle = (2 * math.pi * shift).double()
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(shift), 3, 3, dtype=torch.float64, device=shift.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    to_rgb, to_yiq = _YIQ_TO_RGB.to(shift.device), _RGB_TO_YIQ.to(shift.device)
    return (to_rgb @ rotation @ to_yiq).float()


def _blur(views: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one sigma per view; ``(N, C, h, w)`` -> same shape."""
    n, c, h, w = views.shape
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=views.dtype, device=views.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None].to(views.dtype)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    flat = views.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return flat.view(n, c, h, w)


def jitter_views(
    views: Tensor, config: PhotometricConfig, *, generator: torch.Generator | None = None
) -> Tensor:
    """Independent photometric jitter for each view of ``views`` ``(N, C, h, w)`` in [0, 1].

    Vectorised over the views (one draw of every factor per view). Hue is shifted by rotating
    the YIQ chroma plane, a linear stand-in for an HSV hue shift. Returns a new tensor in [0, 1].
    """
    n, channels = views.shape[:2]
    if n == 0:
        return views
    device = views.device  # draws are made there (``generator`` must live there too)

    def draw(p: float) -> Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    def factor(strength: float, active: Tensor) -> Tensor:
        values = _uniform(n, max(0.0, 1 - strength), 1 + strength, generator, device).float()
        return torch.where(active, values, torch.ones_like(values)).view(n, 1, 1, 1)

    out = views
    jitter = draw(config.p_jitter)
    if jitter.any():
        out = (out * factor(config.brightness, jitter)).clamp(0, 1)
        grey = _luma(out) if channels == 3 else out
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * factor(config.contrast, jitter) + mean).clamp(0, 1)
        if channels == 3:
            grey = _luma(out)
            out = ((out - grey) * factor(config.saturation, jitter) + grey).clamp(0, 1)
            shift = _uniform(n, -config.hue, config.hue, generator, device).float() * jitter
            out = torch.einsum("nij,njhw->nihw", _hue_matrices(shift), out).clamp(0, 1)
    if channels == 3:
        grey_mask = draw(config.p_grey).view(n, 1, 1, 1)
        out = torch.where(grey_mask, _luma(out).expand_as(out), out)
    blur = draw(config.p_blur)
    if blur.any():
        size = min(views.shape[-2:])
        kernel = config.blur_kernel or max(3, int(0.1 * size) // 2 * 2 + 1)
        if kernel % 2 == 0 or kernel // 2 >= size:
            raise ValueError(f"blur_kernel must be odd and smaller than the view, got {kernel}")
        sigma = _uniform(n, *config.blur_sigma, generator, device).float()
        blurred = _blur(out, sigma, kernel)
        out = torch.where(blur.view(n, 1, 1, 1), blurred, out)
    return out


class ViewSampler:
    """Callable ``image (C, H, W) -> dict`` of views and boxes; a ``DataLoader`` transform.

    Output (default-collatable; batching adds a leading ``B``):

    * ``global_views`` ``(2, C, *global_crop.size)``, ``global_boxes`` ``(2, 4)``
    * ``local_views`` ``(K, 2, C, *local_crop.size)``, ``local_boxes`` ``(K, 2, 4)`` (pair k is
      ``[k, 0]`` = view A, ``[k, 1]`` = view B)
    * ``flipped`` ``()`` bool: whether every view shows the mirrored image
    * ``image_size`` ``(2,)`` long ``(H, W)``

    Boxes are XYXY float32 pixels in the original (un-flipped) image frame. To get the boxes in
    the frame the network sees, use ``mirror_boxes`` where ``flipped``.
    """

    def __init__(self, config: ViewSamplerConfig | None = None):
        self.config = config or ViewSamplerConfig()

    def _local_boxes(
        self, image_size: tuple[int, int], generator: torch.Generator | None, device=None
    ) -> Tensor:
        cfg = self.config
        k = cfg.num_pairs
        crop = cfg.local_crop
        boxes_a = sample_crop_boxes(k, image_size, crop, generator=generator, device=device)
        boxes_b = sample_crop_boxes(k, image_size, crop, generator=generator, device=device)
        if cfg.min_gap > 0 and k:
            for _ in range(50):
                close = _pair_gap(boxes_a, boxes_b, image_size) < cfg.min_gap
                if not close.any():
                    break
                redraw = sample_crop_boxes(k, image_size, crop, generator=generator, device=device)
                boxes_b = torch.where(close[:, None], redraw, boxes_b)
            else:
                raise ValueError(
                    f"could not place local boxes {cfg.min_gap} image sizes apart in 50 draws; "
                    f"lower min_gap or the local crop scale {cfg.local_crop.scale}"
                )
        return torch.stack([boxes_a, boxes_b], dim=1)

    def __call__(
        self, image: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(
                f"ViewSampler expects one float image (C, H, W) in [0, 1], got "
                f"{image.dtype} {tuple(image.shape)}"
            )
        cfg = self.config
        channels, height, width = image.shape
        size = (height, width)
        device = image.device  # every draw and output lives with the image
        flipped = bool(torch.rand((), generator=generator, device=device) < cfg.flip_p)
        global_boxes = sample_crop_boxes(
            2, size, cfg.global_crop, generator=generator, device=device
        )
        local_boxes = self._local_boxes(size, generator, device)  # (K, 2, 4)
        batch = image[None]
        global_views = extract(batch.expand(2, -1, -1, -1), global_boxes, cfg.global_crop.size)
        local_flat = local_boxes.reshape(-1, 4)
        if len(local_flat):
            local_views = extract(
                batch.expand(len(local_flat), -1, -1, -1), local_flat, cfg.local_crop.size
            )
        else:  # base method only: keep the key so batches collate the same way
            local_views = image.new_zeros(0, channels, *cfg.local_crop.size)
        if flipped:
            # Cropping box b and mirroring the crop equals cropping mirror(b) from the mirrored
            # image, so flipping the views flips the whole image for every view at once.
            global_views, local_views = global_views.flip(-1), local_views.flip(-1)
        global_views = jitter_views(global_views, cfg.global_photometric, generator=generator)
        local_views = jitter_views(local_views, cfg.local_photometric, generator=generator)
        return {
            "global_views": global_views,
            "global_boxes": global_boxes,
            "local_views": local_views.view(cfg.num_pairs, 2, channels, *cfg.local_crop.size),
            "local_boxes": local_boxes,
            "flipped": torch.tensor(flipped, device=device),
            "image_size": torch.tensor(size, device=device),
        }
