"""Classical fallback: the background is the near-white region connected to the image border.

The published fallback makes every near-white region bounded by a contour transparent, which
also removes white eyes, teeth and flags *inside* an emoji. Here only near-white pixels that
can be reached from the border through other near-white pixels are background. Consequences,
by design:

- White regions enclosed by the emoji's outline stay opaque: eyes, teeth, a white field inside
  an outline, and also the hole of a closed ring. A pixel-colour rule cannot tell a ring's hole
  from a white eye, and a visible white disc is a far smaller defect than an eyeless face. The
  U-Net, trained on true alpha, is the path that can learn holes.
- A pure white image is all background, so fully transparent; an image with no near-white
  border region is fully opaque. Neither is an error.

Edges are not cut hard. Generated images are anti-aliased against white, so an edge pixel is
`p = a * c + (1 - a) * 255` for coverage `a` and the emoji colour `c`. Taking `c` from the
nearest interior pixel gives `a = (255 - p) / (255 - c)`, which is the alpha used in a thin band
on both sides of the cut. Where the nearby colour is itself almost white the ratio is unstable,
and the hard cut is kept.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass
class ContourConfig:
    white_threshold: int = 240  # a pixel is near-white when every channel is at least this
    edge_px: float = 1.5  # half-width of the band around the cut that gets graded alpha
    min_contrast: int = 48  # reference colours closer than this to white keep the hard cut

    def __post_init__(self) -> None:
        if not 0 <= self.white_threshold <= 255:
            raise ValueError(f"white_threshold must be in [0, 255], got {self.white_threshold}")
        if self.edge_px < 0:
            raise ValueError(f"edge_px must be >= 0, got {self.edge_px}")


def border_background(rgb: np.ndarray, white_threshold: int = 240) -> np.ndarray:
    """Bool [H, W]: near-white pixels 4-connected to the image border.

    4-connectivity on the background side means a one-pixel diagonal gap in an outline does
    not let the background leak into the emoji.
    """
    white = (rgb >= white_threshold).all(axis=-1).astype(np.uint8)
    _, labels = cv2.connectedComponents(white, connectivity=4)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_labels = np.unique(border[border > 0])  # label 0 is the non-white pixels
    return np.isin(labels, border_labels)


def _nearest_colour(rgb: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """For every pixel, the colour of the nearest pixel where `sources` is true ([H, W, 3])."""
    # distanceTransformWithLabels measures distance to zero pixels and labels each pixel with
    # the zero pixel it is nearest to; a lookup from label to flat index recovers its colour.
    _, labels = cv2.distanceTransformWithLabels(
        (~sources).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    source_index = np.flatnonzero(sources)
    lookup = np.zeros(labels.max() + 1, np.int64)
    lookup[labels.ravel()[source_index]] = source_index
    return rgb.reshape(-1, 3)[lookup[labels]]


def contour_alpha(rgb: np.ndarray, config: ContourConfig | None = None) -> np.ndarray:
    """uint8 alpha [H, W] for an RGB image composited on white (255 opaque, 0 transparent)."""
    config = config or ContourConfig()
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {rgb.dtype} {rgb.shape}")
    background = border_background(rgb, config.white_threshold)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    if not background.any() or background.all() or config.edge_px == 0:
        return alpha

    foreground = (~background).astype(np.uint8)
    to_background = cv2.distanceTransform(foreground, cv2.DIST_L2, 3)  # 0 on the background
    to_foreground = cv2.distanceTransform(1 - foreground, cv2.DIST_L2, 3)  # 0 on the foreground
    band = (foreground.astype(bool) & (to_background <= config.edge_px)) | (background & (to_foreground <= 1))
    interior = foreground.astype(bool) & (to_background > config.edge_px)
    if not interior.any():  # strokes thinner than the band: nothing to take a colour from
        return alpha

    reference = _nearest_colour(rgb, interior).astype(np.float32)
    pixels = rgb.astype(np.float32)
    # Measure coverage on the channel where the reference colour differs most from white.
    channel = np.argmin(reference, axis=-1)[..., None]
    ref_depth = 255 - np.take_along_axis(reference, channel, axis=-1)[..., 0]
    pix_depth = 255 - np.take_along_axis(pixels, channel, axis=-1)[..., 0]
    coverage = np.clip(pix_depth / np.maximum(ref_depth, 1), 0, 1)
    graded = band & (ref_depth >= config.min_contrast)
    alpha[graded] = np.rint(coverage[graded] * 255).astype(np.uint8)
    return alpha
