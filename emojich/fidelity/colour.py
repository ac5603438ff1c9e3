"""Colour error between images and their reconstructions, in CIELAB."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def to_lab(images: torch.Tensor) -> np.ndarray:
    """uint8 or [0, 1] float images [N, 3, H, W] (sRGB) -> float32 CIELAB [N, H, W, 3] (D65).

    OpenCV's float conversion: L in [0, 100], a and b roughly in [-128, 127], so a Euclidean
    distance is the CIE76 ΔE (about 2.3 is a just-noticeable difference).
    """
    unit = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    pixels = np.ascontiguousarray(unit.permute(0, 2, 3, 1).cpu().numpy(), dtype=np.float32)
    flat = pixels.reshape(-1, pixels.shape[2], 3)  # one tall image: one cvtColor call for the batch
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(pixels.shape)


def block_delta_e(original: torch.Tensor, reconstruction: torch.Tensor, block: int = 8) -> float:
    """Mean CIE76 ΔE between the `block` x `block` pixel means of two image batches.

    Block means forgive a shifted edge and keep what a person sees first: whether the flag is
    red and white or brown. Same layout and size for both batches.
    """
    if original.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: {tuple(original.shape)} vs {tuple(reconstruction.shape)}")

    def means(images: torch.Tensor) -> torch.Tensor:
        unit = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return F.avg_pool2d(unit, block)

    lab_a, lab_b = to_lab(means(original)), to_lab(means(reconstruction))
    return float(np.linalg.norm(lab_a - lab_b, axis=-1).mean())
