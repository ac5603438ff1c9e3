"""Image codes to pixels: the VQGAN's own decode, and 512 px images by the models' output method."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from emojich.foundation.imageset import to_uint8
from emojich.generate.loading import DWT_DECODER, LANCZOS_FALLBACK, TARGET_SIZE, Models
from emojich.upscale.superres import upscale_to


@torch.inference_mode()
def decode(models: Models, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Codes [N, L] -> uint8 [N, 3, H, W] at the VQGAN's own output size."""
    if not len(codes):
        size = models.vqgan.config.output_resolution
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.cat(
        [to_uint8(models.vqgan.decode(chunk.to(models.device))) for chunk in codes.split(batch_size)]
    )


@torch.inference_mode()
def render(models: Models, codes: torch.Tensor, batch_size: int = 16) -> list[np.ndarray]:
    """Codes [N, L] -> N uint8 (512, 512, 3) arrays, by `models.output_method`."""
    pixels = list(decode(models, codes, batch_size).permute(0, 2, 3, 1).numpy())
    # upscale_to super-resolves only images smaller than the target, then resizes exactly.
    sr_model = models.upscaler if models.output_method not in (DWT_DECODER, LANCZOS_FALLBACK) else None
    return upscale_to(pixels, sr_model, TARGET_SIZE, batch_size)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG without metadata: equal pixels give equal bytes, so hashes are stable."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
