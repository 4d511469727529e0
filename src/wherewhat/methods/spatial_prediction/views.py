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

All of an image's randomness is one block of uniforms from its own ``torch.Generator`` (else
torch's global RNG), so a run is reproducible from its seeds and a batch drawn at once
(:meth:`ViewSampler.batch`: one ``grid_sample`` for all crops of a kind, jitter vectorised) gives
the views of drawing its images one by one (:meth:`ViewSampler.__call__`); the epoch time it
saves is measured by ``benchmarks/ssl_epoch_speed.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.geometry import extract

__all__ = [
    "CropConfig",
    "PhotometricConfig",
    "ViewSamplerConfig",
    "ViewDraws",
    "ViewSampler",
    "sample_crop_boxes",
    "jitter_views",
    "jitter_views_from_uniforms",
    "crop_boxes_from_uniforms",
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


# Uniform draws per crop box: area and log-aspect for each try, then the corner (x, y).
def _crop_draws(tries: int) -> int:
    return 2 * tries + 2


def crop_boxes_from_uniforms(
    uniforms: Tensor, image_size: tuple[int, int], config: CropConfig
) -> Tensor:
    """Random-resized-crop boxes ``(..., 4)`` XYXY float32 pixels from uniforms ``(..., 2T + 2)``
    in [0, 1) (float64): ``T`` tries of (area, log-aspect), then the corner.

    Of the ``T`` tries the first that fits the image ``(H, W)`` is kept, and if none fits the
    last is clamped to the image (torchvision's rule, without its integer rounding: ``extract``
    samples sub-pixel boxes exactly).
    """
    height, width = image_size
    tries = (uniforms.shape[-1] - 2) // 2
    if uniforms.shape[-1] != _crop_draws(tries) or tries < 1:
        raise ValueError(f"need 2 * tries + 2 uniforms per box, got {uniforms.shape[-1]}")
    area_u, aspect_u = uniforms[..., :tries], uniforms[..., tries : 2 * tries]
    lo, hi = config.scale
    target = (area_u * (hi - lo) + lo) * (height * width)
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    aspect = torch.exp(aspect_u * (log_hi - log_lo) + log_lo)
    w, h = torch.sqrt(target * aspect), torch.sqrt(target / aspect)
    fits = (w <= width) & (h <= height)
    # First try that fits (argmax of a bool picks the first True); none fits: clamp the last.
    pick = torch.where(fits.any(-1), fits.to(torch.uint8).argmax(-1), tries - 1)
    box_w = w.gather(-1, pick[..., None])[..., 0].clamp(max=width)
    box_h = h.gather(-1, pick[..., None])[..., 0].clamp(max=height)
    x0 = uniforms[..., -2] * (width - box_w)
    y0 = uniforms[..., -1] * (height - box_h)
    return torch.stack([x0, y0, x0 + box_w, y0 + box_h], dim=-1).float()


def sample_crop_boxes(
    n: int,
    image_size: tuple[int, int],
    config: CropConfig,
    *,
    generator: torch.Generator | None = None,
    tries: int = 10,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` random-resized-crop boxes ``(n, 4)`` XYXY float32 pixels inside an image ``(H, W)``
    (rule: :func:`crop_boxes_from_uniforms`), drawn on ``device`` (that of the image the boxes
    are for; ``generator`` must live there too)."""
    shape = (n, _crop_draws(tries))
    uniforms = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return crop_boxes_from_uniforms(uniforms, image_size, config)


def mirror_boxes(boxes: Tensor, width: float | Tensor) -> Tensor:
    """Boxes ``(..., 4)`` XYXY in the horizontally flipped image (x -> W - x); ``width`` is a
    scalar or one per box ``(...,)``."""
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)  # () or (...,)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([width - x1, y0, width - x0, y1], dim=-1)


def _pair_gap(boxes_a: Tensor, boxes_b: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Centre distance ``(...)`` between boxes ``(..., 4)`` in units of the image size."""
    height, width = image_size
    dx = ((boxes_b[..., 0] + boxes_b[..., 2]) - (boxes_a[..., 0] + boxes_a[..., 2])) / (2 * width)
    dy = ((boxes_b[..., 1] + boxes_b[..., 3]) - (boxes_a[..., 1] + boxes_a[..., 3])) / (2 * height)
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


# Uniform draws per view for the photometric jitter, by column.
_JITTER_ON, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE, _GREY, _BLUR_ON, _SIGMA = range(8)
_JITTER_DRAWS = 8


def jitter_views_from_uniforms(
    views: Tensor, config: PhotometricConfig, uniforms: Tensor
) -> Tensor:
    """Photometric jitter of ``views`` ``(N, C, h, w)`` in [0, 1], one row of ``uniforms``
    ``(N, 8)`` in [0, 1) per view (columns: jitter on, brightness, contrast, saturation, hue,
    greyscale, blur on, blur sigma).

    Colour jitter in a fixed order (brightness, contrast, saturation, hue); the hue is shifted by
    rotating the YIQ chroma plane, a linear stand-in for an HSV hue shift. Views whose draw
    leaves a step off are returned unchanged by it. Returns a new tensor in [0, 1].
    """
    n, channels = views.shape[:2]
    if n == 0:
        return views
    if uniforms.shape != (n, _JITTER_DRAWS):
        raise ValueError(f"need ({n}, {_JITTER_DRAWS}) uniforms, got {tuple(uniforms.shape)}")
    u = uniforms.to(views.device)

    def factor(column: int, strength: float) -> Tensor:
        lo, hi = max(0.0, 1 - strength), 1 + strength
        return (u[:, column] * (hi - lo) + lo).to(views.dtype).view(n, 1, 1, 1)

    out = views
    jitter = u[:, _JITTER_ON] < config.p_jitter
    if jitter.any():
        colour = (out * factor(_BRIGHTNESS, config.brightness)).clamp(0, 1)
        grey = _luma(colour) if channels == 3 else colour
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        colour = ((colour - mean) * factor(_CONTRAST, config.contrast) + mean).clamp(0, 1)
        if channels == 3:
            grey = _luma(colour)
            colour = ((colour - grey) * factor(_SATURATION, config.saturation) + grey).clamp(0, 1)
            shift = (u[:, _HUE] * (2 * config.hue) - config.hue).to(views.dtype)
            colour = torch.einsum("nij,njhw->nihw", _hue_matrices(shift), colour).clamp(0, 1)
        out = torch.where(jitter.view(n, 1, 1, 1), colour, out)
    if channels == 3:
        grey_mask = (u[:, _GREY] < config.p_grey).view(n, 1, 1, 1)
        out = torch.where(grey_mask, _luma(out).expand_as(out), out)
    blur = (u[:, _BLUR_ON] < config.p_blur).nonzero()[:, 0]
    if len(blur):
        size = min(views.shape[-2:])
        kernel = config.blur_kernel or max(3, int(0.1 * size) // 2 * 2 + 1)
        if kernel % 2 == 0 or kernel // 2 >= size:
            raise ValueError(f"blur_kernel must be odd and smaller than the view, got {kernel}")
        lo, hi = config.blur_sigma
        sigma = (u[blur, _SIGMA] * (hi - lo) + lo).to(views.dtype)
        out = out.index_copy(0, blur, _blur(out[blur], sigma, kernel))
    return out


def jitter_views(
    views: Tensor, config: PhotometricConfig, *, generator: torch.Generator | None = None
) -> Tensor:
    """Independent photometric jitter for each view of ``views`` ``(N, C, h, w)`` in [0, 1]
    (rule: :func:`jitter_views_from_uniforms`), drawn from ``generator`` (on the views' device).
    """
    shape = (len(views), _JITTER_DRAWS)
    uniforms = torch.rand(shape, generator=generator, dtype=torch.float64, device=views.device)
    return jitter_views_from_uniforms(views, config, uniforms)


@dataclass
class ViewDraws:
    """Everything random about the views of ``B`` images, one row per image.

    ``flipped`` ``(B,)`` bool; ``global_boxes`` ``(B, 2, 4)`` and ``local_boxes`` ``(B, K, 2, 4)``
    XYXY pixels in the un-flipped image; ``global_jitter`` ``(B, 2, 8)`` and ``local_jitter``
    ``(B, K, 2, 8)`` uniforms of :func:`jitter_views_from_uniforms`.
    """

    flipped: Tensor
    global_boxes: Tensor
    local_boxes: Tensor
    global_jitter: Tensor
    local_jitter: Tensor


# Random-resized-crop tries per box (torchvision's 10).
_CROP_TRIES = 10
_MIN_GAP_ROUNDS = 50


class ViewSampler:
    """Draws the base method's and SP's views, one image at a time or a whole batch at once.

    ``sampler(image, generator)`` (a per-sample ``DataLoader`` transform) and
    ``sampler.batch(images, generators)`` (one call per batch: every crop of the batch is one
    ``grid_sample``, the jitter one vectorised pass) give the same views for the same
    generators: each image's randomness is one block of uniforms from its own generator
    (:meth:`draw`), and :meth:`render` turns blocks into views for any number of images.

    Output of ``batch`` (``__call__`` gives the same without the leading ``B``):

    * ``global_views`` ``(B, 2, C, *global_crop.size)``, ``global_boxes`` ``(B, 2, 4)``
    * ``local_views`` ``(B, K, 2, C, *local_crop.size)``, ``local_boxes`` ``(B, K, 2, 4)`` (pair
      k is ``[k, 0]`` = view A, ``[k, 1]`` = view B)
    * ``flipped`` ``(B,)`` bool: whether every view of that image shows the mirrored image
    * ``image_size`` ``(B, 2)`` long ``(H, W)``

    Boxes are XYXY float32 pixels in the original (un-flipped) image frame. To get the boxes in
    the frame the network sees, use ``mirror_boxes`` where ``flipped``.
    """

    def __init__(self, config: ViewSamplerConfig | None = None):
        self.config = config or ViewSamplerConfig()

    def draws_per_image(self) -> int:
        """Uniforms in one image's block: flip, 2 + 2K crop boxes, 2 + 2K jitter rows."""
        views = 2 + 2 * self.config.num_pairs
        return 1 + views * (_crop_draws(_CROP_TRIES) + _JITTER_DRAWS)

    def draw(
        self,
        image_size: tuple[int, int],
        generators: Sequence[torch.Generator | None],
        device: torch.device | str | None = None,
    ) -> ViewDraws:
        """The randomness of ``len(generators)`` images of size ``(H, W)``: one block of uniforms
        per image from its generator (``None``: torch's global RNG), plus further draws from the
        same generator only where a local pair must be redrawn to respect ``min_gap``."""
        cfg = self.config
        k, crop_n = cfg.num_pairs, _crop_draws(_CROP_TRIES)
        count = len(generators)
        blocks = [
            torch.rand(self.draws_per_image(), generator=g, dtype=torch.float64, device=device)
            for g in generators
        ]
        u = torch.stack(blocks) if blocks else torch.zeros(0, self.draws_per_image())
        sizes = [1, 2 * crop_n, 2 * k * crop_n, 2 * _JITTER_DRAWS, 2 * k * _JITTER_DRAWS]
        flip_u, global_u, local_u, global_j, local_j = u.split(sizes, dim=1)
        local_boxes = crop_boxes_from_uniforms(
            local_u.reshape(count, k, 2, crop_n), image_size, cfg.local_crop
        )
        if cfg.min_gap > 0 and k and count:
            self._respect_min_gap(local_boxes, image_size, generators, device)
        return ViewDraws(
            flipped=flip_u[:, 0] < cfg.flip_p,
            global_boxes=crop_boxes_from_uniforms(
                global_u.reshape(count, 2, crop_n), image_size, cfg.global_crop
            ),
            local_boxes=local_boxes,
            global_jitter=global_j.reshape(count, 2, _JITTER_DRAWS),
            local_jitter=local_j.reshape(count, k, 2, _JITTER_DRAWS),
        )

    def _respect_min_gap(
        self,
        local_boxes: Tensor,
        image_size: tuple[int, int],
        generators: Sequence[torch.Generator | None],
        device: torch.device | str | None,
    ) -> None:
        """Redraw view B of every pair closer than ``min_gap`` (in place), per image from its own
        generator, so an image's boxes do not depend on the other images of the batch."""
        cfg = self.config
        k, crop_n = cfg.num_pairs, _crop_draws(_CROP_TRIES)
        for _ in range(_MIN_GAP_ROUNDS):
            close = _pair_gap(local_boxes[:, :, 0], local_boxes[:, :, 1], image_size) < cfg.min_gap
            rows = close.any(1).nonzero()[:, 0].tolist()
            if not rows:
                return
            for row in rows:
                shape = (k, crop_n)
                redraw_u = torch.rand(
                    shape, generator=generators[row], dtype=torch.float64, device=device
                )
                redraw = crop_boxes_from_uniforms(redraw_u, image_size, cfg.local_crop)
                local_boxes[row, :, 1] = torch.where(
                    close[row, :, None], redraw, local_boxes[row, :, 1]
                )
        raise ValueError(
            f"could not place local boxes {cfg.min_gap} image sizes apart in {_MIN_GAP_ROUNDS} "
            f"draws; lower min_gap or the local crop scale {cfg.local_crop.scale}"
        )

    def render(self, images: Tensor, draws: ViewDraws) -> dict[str, Tensor]:
        """Views of float ``images`` ``(B, C, H, W)`` in [0, 1] for ``draws`` of ``B`` images: all
        crops of a kind in one ``extract`` call, flips and jitter vectorised."""
        cfg = self.config
        count, channels, height, width = images.shape
        k = cfg.num_pairs

        def crops(boxes: Tensor, crop: CropConfig, photometric: PhotometricConfig, jitter):
            per_image = boxes.shape[1:-1].numel()  # views per image
            flat = boxes.reshape(-1, 4)
            index = torch.arange(count, device=images.device).repeat_interleave(per_image)
            if len(flat):
                views = extract(images, flat, crop.size, batch_index=index)
            else:  # base method only: keep the key so batches look the same
                views = images.new_zeros(0, channels, *crop.size)
            # Cropping box b and mirroring the crop equals cropping mirror(b) from the mirrored
            # image, so flipping the views flips the whole image for every view at once.
            mirrored = draws.flipped.to(images.device)[index].view(-1, 1, 1, 1)
            views = torch.where(mirrored, views.flip(-1), views)
            views = jitter_views_from_uniforms(views, photometric, jitter.reshape(-1, 8))
            return views.view(*boxes.shape[:-1], channels, *crop.size)

        global_views = crops(
            draws.global_boxes, cfg.global_crop, cfg.global_photometric, draws.global_jitter
        )
        local_views = crops(
            draws.local_boxes, cfg.local_crop, cfg.local_photometric, draws.local_jitter
        )
        size = torch.tensor([height, width], device=images.device)
        return {
            "global_views": global_views,
            "global_boxes": draws.global_boxes,
            "local_views": local_views.view(count, k, 2, channels, *cfg.local_crop.size),
            "local_boxes": draws.local_boxes,
            "flipped": draws.flipped,
            "image_size": size.expand(count, 2).clone(),
        }

    def batch(
        self, images: Tensor, generators: Sequence[torch.Generator | None] | None = None
    ) -> dict[str, Tensor]:
        """Views of a batch ``(B, C, H, W)`` (float in [0, 1], or uint8), one generator per image
        (``None``: torch's global RNG for all)."""
        if images.ndim != 4:
            raise ValueError(f"ViewSampler.batch expects (B, C, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        elif not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        generators = list(generators) if generators is not None else [None] * len(images)
        if len(generators) != len(images):
            raise ValueError(f"{len(generators)} generators for {len(images)} images")
        draws = self.draw(tuple(images.shape[-2:]), generators, images.device)
        return self.render(images, draws)

    def __call__(
        self, image: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(
                f"ViewSampler expects one float image (C, H, W) in [0, 1], got "
                f"{image.dtype} {tuple(image.shape)}"
            )
        views = self.batch(image[None], [generator])
        return {name: value[0] for name, value in views.items()}
