"""Geometry: the coordinate conventions, affine crops and the spatial transformer."""

from wherewhat.geometry.affine import (
    apply_affine,
    box_crop_affine,
    compose_affine,
    hflip_affine,
    invert_affine,
    normalizing_affine,
    similarity_crop_affine,
    warp_affine,
)
from wherewhat.geometry.coords import (
    boxes_cxcywh_to_xyxy,
    boxes_normalized_to_pixel,
    boxes_pixel_to_normalized,
    boxes_xyxy_to_cxcywh,
    clip_points,
    normalized_to_pixel,
    pixel_centers,
    pixel_to_normalized,
    points_to_box,
)
from wherewhat.geometry.transformer import (
    box_coverage,
    extract,
    extract_theta,
    place,
    place_theta,
)

__all__ = [
    "apply_affine",
    "box_crop_affine",
    "box_coverage",
    "boxes_cxcywh_to_xyxy",
    "boxes_normalized_to_pixel",
    "boxes_pixel_to_normalized",
    "boxes_xyxy_to_cxcywh",
    "clip_points",
    "compose_affine",
    "extract",
    "extract_theta",
    "hflip_affine",
    "invert_affine",
    "normalized_to_pixel",
    "normalizing_affine",
    "pixel_centers",
    "pixel_to_normalized",
    "place",
    "place_theta",
    "points_to_box",
    "similarity_crop_affine",
    "warp_affine",
]
