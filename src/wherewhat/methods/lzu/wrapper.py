"""Learning to Zoom and Unzoom: wrap any feature extractor in a saliency-driven zoom.

``LZU(backbone, saliency, out_size)`` zooms the input image to ``out_size`` by the saliency's
warp, runs the backbone on the zoomed image, and unzooms every feature map it returns (one
tensor, a list/tuple of maps, or an ordered dict such as an FPN's). Each unzoomed map has the
shape of its zoomed map but lives in the *original* frame: it covers the whole input image just
as the backbone's features of ``F.interpolate(image, out_size)`` would, so heads, losses and
labels stay exactly as for a uniformly downsampled model (labels are never warped).

With a uniform saliency the wrapper reproduces ``backbone(F.interpolate(image, out_size,
mode="bilinear", align_corners=False))``. With a fixed saliency (``saliency.fixed``) the coarse
grid, the zoom grid and every level's inverse grid are computed once and cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from wherewhat.geometry.saliency import SaliencySource
from wherewhat.geometry.separable_unzoom import area_unzoom, area_unzoom_weights
from wherewhat.geometry.warp import (
    InverseMethod,
    saliency_to_grid,
    sampling_grid,
    unzoom,
    unzoom_grid,
    zoom,
)

__all__ = ["LZU", "UnzoomMode"]

UnzoomMode = Literal["bilinear", "area"]


class LZU(nn.Module):
    """Zoom -> backbone -> unzoom.

    Args:
        backbone: any module mapping ``(B, C, h, w)`` to a feature map ``(B, D, h', w')``, a
            list/tuple of them, or a mapping name -> map (order kept).
        saliency: a :class:`~wherewhat.geometry.saliency.SaliencySource` (uniform, fixed,
            adaptive or learned).
        out_size: ``(h, w)`` of the zoomed image the backbone sees.
        separable, fwhm, padding, anti_crop: warp options of
            :func:`~wherewhat.geometry.warp.saliency_to_grid`.
        inverse: "auto" | "separable" | "tiles", see :func:`~wherewhat.geometry.warp.unzoom_grid`.
        unzoom_mode: "bilinear" (the paper's: each unwarped pixel reads the zoomed map at its
            centre's preimage) or "area" (it averages the zoomed pixels its footprint covers,
            :mod:`~wherewhat.geometry.area_unzoom`; separable warps only). Both are the
            identity for a uniform warp.

    Shapes: images ``(B, C, H, W)`` in [0, 1]; ``boxes`` (adaptive sources only) one ``(n_i, 4)``
    XYXY tensor per image in pixels of ``images``. Returns the backbone's structure with every
    map unzoomed to the original frame at its own resolution.
    """

    def __init__(
        self,
        backbone: nn.Module,
        saliency: SaliencySource,
        out_size: tuple[int, int],
        *,
        separable: bool = True,
        fwhm: float = 13.0,
        padding: int | None = None,
        anti_crop: bool = True,
        inverse: InverseMethod = "auto",
        unzoom_mode: UnzoomMode = "bilinear",
    ):
        super().__init__()
        if unzoom_mode not in ("bilinear", "area"):
            raise ValueError(f"unzoom_mode must be 'bilinear' or 'area', got {unzoom_mode!r}")
        if unzoom_mode == "area" and not separable:
            raise ValueError("unzoom_mode='area' needs a separable warp (separable=True)")
        self.unzoom_mode = unzoom_mode
        self.backbone = backbone
        self.saliency = saliency
        self.out_size = tuple(int(s) for s in out_size)
        self.warp_options = {
            "separable": separable,
            "fwhm": fwhm,
            "padding": padding,
            "anti_crop": anti_crop,
        }
        self.inverse = inverse
        # Grids of a fixed saliency, keyed by (what, size, dtype, device); not part of the state.
        self._cache: dict[tuple, Tensor] = {}

    @property
    def out_channels(self) -> int:
        """The wrapped backbone's ``out_channels`` (torchvision detection backbones have one), so
        ``FCOS(LZU(backbone, ...), num_classes)`` builds; AttributeError (``hasattr`` False) when
        the backbone has none."""
        try:
            return self.backbone.out_channels
        except AttributeError:
            name = type(self.backbone).__name__
            raise AttributeError(f"the wrapped backbone {name} has no out_channels") from None

    @property
    def cacheable(self) -> bool:
        return bool(getattr(self.saliency, "fixed", False))

    def clear_cache(self) -> None:
        self._cache.clear()

    def _cached(self, key: tuple, compute) -> Tensor:
        if not self.cacheable:
            return compute()
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = compute()
        return self._cache[key]

    def coarse_grid(self, images: Tensor, boxes: Sequence[Tensor] | None = None) -> Tensor:
        """The warp's coarse grid ``(B, gh, gw, 2)`` (batch 1 when the saliency is fixed)."""
        key = ("coarse", images.dtype, images.device)

        def compute() -> Tensor:
            source = images[:1] if self.cacheable else images
            return saliency_to_grid(self.saliency(source, boxes), **self.warp_options)

        return self._cached(key, compute)

    def zoom_image(
        self, images: Tensor, boxes: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(zoomed images (B, C, h, w), coarse grid)``: the backbone's input and its warp."""
        coarse = self.coarse_grid(images, boxes)
        dense = self._cached(
            ("dense", self.out_size, images.dtype, images.device),
            lambda: sampling_grid(coarse, self.out_size),
        )
        return zoom(images, coarse, dense_grid=dense), coarse

    def inverse_grid(self, coarse: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """Unzoom grid ``(B, h, w, 2)`` (batch 1 when cached) for an original-frame map of
        ``size``: :func:`~wherewhat.geometry.warp.unzoom_grid` of ``coarse``, cached per size
        when the saliency is fixed."""
        size = (int(size[0]), int(size[1]))
        return self._cached(
            ("inverse", size, dtype, coarse.device),
            lambda: unzoom_grid(coarse, size, method=self.inverse).grid,
        )

    def unzoom_map(
        self, features: Tensor, coarse: Tensor, size: tuple[int, int] | None = None
    ) -> Tensor:
        """A zoomed-frame map ``(B, D, h, w)`` -> the original frame at ``size`` (default: its
        own ``(h, w)``), by this wrapper's ``unzoom_mode``; weights / grids cached when fixed."""
        size = tuple(features.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
        if self.unzoom_mode == "bilinear":
            return unzoom(features, self.inverse_grid(coarse, size, features.dtype))
        zoomed_size = (int(features.shape[-2]), int(features.shape[-1]))
        weights = self._cached(
            ("area", size, zoomed_size, features.dtype, coarse.device),
            lambda: area_unzoom_weights(coarse, size, zoomed_size),
        )
        return area_unzoom(features, weights)

    def _unzoom(self, features: Tensor, coarse: Tensor, name: str) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise TypeError(f"backbone output {name} must be a (B, D, h, w) map, got {shape}")
        return self.unzoom_map(features, coarse)

    def forward(self, images: Tensor, boxes: Sequence[Tensor] | None = None):
        zoomed, coarse = self.zoom_image(images, boxes)
        features = self.backbone(zoomed)
        if isinstance(features, Tensor):
            return self._unzoom(features, coarse, "tensor")
        if isinstance(features, Mapping):
            items = [(k, self._unzoom(v, coarse, repr(k))) for k, v in features.items()]
            return type(features)(items)
        if isinstance(features, (list, tuple)):
            maps = [self._unzoom(v, coarse, f"[{i}]") for i, v in enumerate(features)]
            if hasattr(features, "_fields"):  # a NamedTuple takes its fields positionally
                return type(features)(*maps)
            return type(features)(maps)
        raise TypeError(
            "backbone must return a feature map, a list/tuple of maps or a mapping of maps, "
            f"got {type(features).__name__}"
        )
