"""Recolouring emoji: the images the demo learns colour words from («синий кролик»).

Every saturated pixel takes the target hue and keeps its saturation and value, so shading, outlines
and white or grey parts stay as drawn, and the silhouette and light-dark pattern do not change: a
blue rabbit is the same drawing in another hue. (HSV through OpenCV; the hue replaced, not rotated,
so a multi-coloured emoji becomes one hue, which is what «синий» asks for.)
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

# A pixel is coloured (and recoloured) from this saturation and value on (0-255 scale).
SATURATED = 64
VISIBLE = 40


def saturated_mask(rgb: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels with a hue worth the name."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    return (hsv[..., 1] >= SATURATED) & (hsv[..., 2] >= VISIBLE)


def recolour(rgb: np.ndarray, hue: float) -> np.ndarray:
    """uint8 RGB [H, W, 3] with every saturated pixel's hue set to `hue` degrees."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    mask = (hsv[..., 1] >= SATURATED) & (hsv[..., 2] >= VISIBLE)
    hsv[..., 0][mask] = round(hue / 360.0 * 256) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def recolour_batch(images: torch.Tensor, hues: list[float]) -> torch.Tensor:
    """uint8 [N, 3, H, W] images, one hue each -> recoloured uint8 [N, 3, H, W]."""
    out = [
        torch.from_numpy(recolour(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), hue)).permute(2, 0, 1)
        for image, hue in zip(images, hues, strict=True)
    ]
    return torch.stack(out) if out else images[:0].clone()


def dominant_hue(rgb: np.ndarray) -> tuple[float | None, float]:
    """(circular mean hue in degrees of the saturated pixels, their share of the non-white pixels).

    None when nothing is saturated (a grey or black drawing has no hue).
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    mask = (hsv[..., 1] >= SATURATED) & (hsv[..., 2] >= VISIBLE)
    ink = (rgb < 235).any(axis=-1)
    share = float(mask.sum() / max(int(ink.sum()), 1))
    if not mask.any():
        return None, share
    angles = hsv[..., 0][mask].astype(np.float64) / 256.0 * 2 * np.pi
    weights = hsv[..., 1][mask].astype(np.float64)
    mean = np.arctan2((np.sin(angles) * weights).sum(), (np.cos(angles) * weights).sum())
    return float(np.degrees(mean) % 360.0), share
