"""Choosing a mask per image: the U-Net when it is confident, the contour fallback otherwise."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from torch import nn

from emojich.segment.contour import ContourConfig, contour_alpha
from emojich.segment.unet import predict_many

METHODS = ("auto", "unet", "contour")


@dataclasses.dataclass
class MaskResult:
    alpha: np.ndarray  # uint8 [H, W], 255 = opaque
    method: str  # "unet" | "contour": the one whose alpha this is
    confidence: float | None  # the U-Net's confidence whenever it ran, even if the contour won


def alpha_from_probability(prob: np.ndarray) -> np.ndarray:
    # P(opaque) is used as alpha directly: soft at the outline, where the network is unsure,
    # and the sticker maker un-blends the white from those pixels.
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def segment_images(
    images: Sequence[np.ndarray],
    method: str = "auto",
    model: nn.Module | None = None,
    size: int = 512,
    threshold: float = 0.99,
    contour: ContourConfig | None = None,
    batch_size: int = 16,
) -> list[MaskResult]:
    """Alpha masks for uint8 RGB images. `auto` without a model is the contour method alone."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "unet" and model is None:
        raise ValueError("method 'unet' needs U-Net weights")
    if method == "contour" or model is None:
        return [MaskResult(contour_alpha(image, contour), "contour", None) for image in images]
    probs, confidence = predict_many(model, images, batch_size, size)
    results = []
    for image, prob, conf in zip(images, probs, confidence, strict=True):
        if method == "unet" or conf >= threshold:
            results.append(MaskResult(alpha_from_probability(prob), "unet", float(conf)))
        else:
            results.append(MaskResult(contour_alpha(image, contour), "contour", float(conf)))
    return results
