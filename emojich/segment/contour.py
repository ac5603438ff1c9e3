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
`p = a * c + (1 - a) * 255` for coverage `a` and the emoji colour `c`, and in every channel
`255 - p = a * (255 - c)`. With depth = 255 minus the darkest channel, `a = depth(p) / depth(c)`;
`depth(c)` is taken as the deepest pixel within the band's reach, which is the emoji's own colour
(or its dark outline) just inside the transition. The band is a fraction of the image side, not a
fixed pixel count: a 64 px decode shown at 512 px has an edge transition about eight times as
wide, and a band narrower than the transition leaves its light outer part opaque, the white ring
a sticker would show on a dark chat theme. Where the nearby colour is itself almost white the
ratio is unstable, and the hard cut is kept.

The grading applies only where the drawing meets the border background, never between two parts
of the drawing. A band measured by distance alone also reaches past a dark outline into the white
field it encloses, which reads as coverage 0: graded, it became a transparent seam just inside the
outline. So a band pixel is graded only where the background reaches it through pixels less than
half covered, or, for a more covered pixel, where it lies nearer that reach than anything such
pixels wall off; what an outline encloses stays opaque up to it.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# Coverage from which a pixel walls the graded band off from what lies behind it: the coverage at
# which a mask counts the pixel as drawing (alpha >= 128). Not ~1: an outline rarely reads fully
# covered, since a dark grey outline beside a saturated fill is about 0.88 (depth 225 against 255)
# and an outline upscaled from 64 px peaks lower still (on real validation emoji, walls at ~1
# changed no mask at all).
SOLID_COVERAGE = 0.5


@dataclasses.dataclass
class ContourConfig:
    white_threshold: int = 240  # a pixel is near-white when every channel is at least this
    # Half-width of the graded band around the cut, as a fraction of the image's longer side
    # (10 px at 512 px); never less than 1.5 px.
    edge_fraction: float = 0.02
    min_contrast: int = 48  # reference colours closer than this to white keep the hard cut

    def __post_init__(self) -> None:
        if not 0 <= self.white_threshold <= 255:
            raise ValueError(f"white_threshold must be in [0, 255], got {self.white_threshold}")
        if not 0 <= self.edge_fraction < 0.5:
            raise ValueError(f"edge_fraction must be in [0, 0.5), got {self.edge_fraction}")

    def band_px(self, height: int, width: int) -> float:
        return 0.0 if self.edge_fraction == 0 else max(1.5, self.edge_fraction * max(height, width))


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


def contour_alpha(rgb: np.ndarray, config: ContourConfig | None = None) -> np.ndarray:
    """uint8 alpha [H, W] for an RGB image composited on white (255 opaque, 0 transparent)."""
    config = config or ContourConfig()
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {rgb.dtype} {rgb.shape}")
    background = border_background(rgb, config.white_threshold)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    band_px = config.band_px(*rgb.shape[:2])
    if not background.any() or background.all() or band_px == 0:
        return alpha

    foreground = (~background).astype(np.uint8)
    to_background = cv2.distanceTransform(foreground, cv2.DIST_L2, 3)  # 0 on the background
    to_foreground = cv2.distanceTransform(1 - foreground, cv2.DIST_L2, 3)  # 0 on the foreground
    band = (foreground.astype(bool) & (to_background <= band_px)) | (background & (to_foreground <= 1))

    depth = (255 - rgb.min(axis=-1)).astype(np.float32)
    reach = 2 * int(np.ceil(band_px)) + 1
    reference = cv2.dilate(depth, np.ones((reach, reach), np.uint8))  # deepest pixel nearby
    coverage = np.clip(depth / np.maximum(reference, 1), 0, 1)
    graded = _outer_side(background, band, coverage) & (reference >= config.min_contrast)
    alpha[graded] = np.rint(coverage[graded] * 255).astype(np.uint8)
    return alpha


def _outer_side(background: np.ndarray, band: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Bool [H, W]: the band pixels on the background's side of the drawing's solid pixels.

    An anti-aliased edge rises from the background to the solid colour, so the background
    reaches every blend of itself through pixels that are not solid, while a solid outline walls
    off the white field behind it (which would read as coverage 0: a transparent seam).
    """
    solid = coverage >= SOLID_COVERAGE
    open_ = (band & ~solid) | background
    # 4-connected, as the background itself: a diagonal gap in an outline does not leak.
    _, labels = cv2.connectedComponents(open_.astype(np.uint8), connectivity=4)
    reached = np.isin(labels, np.unique(labels[background]))
    enclosed = open_ & ~reached
    if not enclosed.any():
        return band
    # A solid pixel goes with the nearer side: graded towards the background (an edge's mostly
    # covered inner part, whose white would otherwise show as a light ring), opaque towards an
    # enclosed field (an outline's anti-aliasing against the white it encloses).
    to_reached = cv2.distanceTransform((~reached).astype(np.uint8), cv2.DIST_L2, 3)
    to_enclosed = cv2.distanceTransform((~enclosed).astype(np.uint8), cv2.DIST_L2, 3)
    return band & (reached | (solid & (to_reached <= to_enclosed)))
