"""What every LZU network shares: a saliency chosen by name, and the zoom it drives.

A network of this method (:class:`~wherewhat.methods.lzu.detector.LZUDetector`,
:class:`~wherewhat.methods.lzu.segmentation_net.LZUSegmenter`) is built from plain arguments
(so a config or a checkpoint can describe it): the saliency is a *kind* plus its KDE knobs, not
a module. :class:`ZoomSettings` holds those arguments; :class:`ZoomedNetwork` turns them into an
:class:`~wherewhat.methods.lzu.wrapper.LZU` around the network's backbone.

Saliency kinds (:data:`SALIENCIES`):

- ``uniform``: no warp, i.e. bilinear downsampling;
- ``fixed``: one map for every image (the training-set KDE), uniform until it is set;
- ``adaptive``: a KDE per image over boxes given with the batch (jittered by U[-jitter, jitter]
  px in training mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from wherewhat.errors import ConfigError
from wherewhat.geometry.saliency import (
    AdaptiveSaliency,
    FixedSaliency,
    SaliencySource,
    UniformSaliency,
    uniform_saliency,
)
from wherewhat.geometry.warp import InverseMethod
from wherewhat.methods.lzu.wrapper import LZU, UnzoomMode

__all__ = ["SALIENCIES", "SaliencyKind", "ZoomSettings", "ZoomedNetwork", "make_saliency_source"]

SaliencyKind = Literal["uniform", "fixed", "adaptive"]
SALIENCIES: tuple[SaliencyKind, ...] = ("uniform", "fixed", "adaptive")


def make_saliency_source(
    kind: str,
    grid_shape: tuple[int, int],
    *,
    amplitude: float,
    bandwidth: float,
    jitter: float,
    size_power: float = 0.0,
    drop: float = 0.0,
    drop_max_side: float = float("inf"),
) -> SaliencySource:
    """The saliency module of a kind; ``fixed`` starts uniform until its map is set."""
    grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
    if kind == "uniform":
        return UniformSaliency(grid_shape)
    if kind == "fixed":
        return FixedSaliency(uniform_saliency(grid_shape))
    if kind == "adaptive":
        return AdaptiveSaliency(
            grid_shape, amplitude=amplitude, bandwidth=bandwidth, jitter=jitter,
            size_power=size_power, drop=drop, drop_max_side=drop_max_side,
        )  # fmt: skip
    raise ConfigError(f"saliency={kind!r}: expected one of {SALIENCIES}")


@dataclass(frozen=True)
class ZoomSettings:
    """The zoom of one network.

    Attributes:
        saliency: ``uniform`` | ``fixed`` | ``adaptive`` (module docstring).
        grid_shape: ``(gh, gw)`` lattice of the warp.
        amplitude, bandwidth: box-KDE saliency (bandwidth in original px, see
            :mod:`wherewhat.geometry.saliency`); also what a fixed map is computed with.
        jitter: U[-jitter, jitter] original px on ground-truth centres when training an
            adaptive saliency.
        separable, fwhm, inverse: warp options of :class:`~wherewhat.methods.lzu.wrapper.LZU`
            (attraction kernel FWHM in lattice cells).
        size_power: weight of a box in the KDE ~ side^-size_power (0: all alike, the paper's),
            see :mod:`wherewhat.geometry.saliency`; also used for the fixed map.
        drop, drop_max_side: when training an adaptive saliency, boxes of side <= drop_max_side
            px are left out at rate ``drop`` (what a detector's misses look like).
        unzoom: ``bilinear`` (the paper's) or ``area`` (box filter), see
            :class:`~wherewhat.methods.lzu.wrapper.LZU`.
    """

    saliency: SaliencyKind
    grid_shape: tuple[int, int]
    amplitude: float
    bandwidth: float
    jitter: float
    separable: bool
    fwhm: float
    inverse: InverseMethod
    size_power: float = 0.0
    drop: float = 0.0
    drop_max_side: float = float("inf")
    unzoom: UnzoomMode = "bilinear"

    def source(self) -> SaliencySource:
        return make_saliency_source(
            self.saliency,
            self.grid_shape,
            amplitude=self.amplitude,
            bandwidth=self.bandwidth,
            jitter=self.jitter,
            size_power=self.size_power,
            drop=self.drop,
            drop_max_side=self.drop_max_side,
        )


class ZoomedNetwork(nn.Module):
    """Base of the LZU networks: ``self.lzu`` zooms the input of a backbone and unzooms what it
    returns; ``self.zoom`` (:class:`ZoomSettings`) and ``self.original_size`` say how.

    A subclass calls ``super().__init__()``, registers its own modules, then
    :meth:`build_zoom` (registration order fixes the order of the parameters).
    """

    lzu: LZU
    zoom: ZoomSettings
    original_size: tuple[int, int]

    def build_zoom(
        self,
        backbone: nn.Module,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        zoom: ZoomSettings,
    ) -> None:
        self.zoom = zoom
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.lzu = LZU(
            backbone,
            zoom.source(),
            input_size,
            separable=zoom.separable,
            fwhm=zoom.fwhm,
            inverse=zoom.inverse,
            unzoom_mode=zoom.unzoom,
        )

    @property
    def saliency(self) -> SaliencySource:
        return self.lzu.saliency

    @property
    def saliency_kind(self) -> SaliencyKind:
        return self.zoom.saliency
