"""Loading a folder of same-sized images into one uint8 tensor, and laying images out in grids."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_images(encoded: Sequence[bytes], size: int) -> torch.Tensor:
    """Encoded images (PNG bytes, as stored in shards) as RGB resized to `size` × `size` (area
    filter when shrinking) -> uint8 [N, 3, size, size]."""
    out = np.empty((len(encoded), size, size, 3), dtype=np.uint8)
    for index, data in enumerate(encoded):
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize(
                    (size, size), Image.Resampling.BOX if image.width > size else Image.BICUBIC
                )
            out[index] = np.asarray(image)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, same layout."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def image_grid(images: torch.Tensor, columns: int, pad: int = 2, background: int = 255) -> Image.Image:
    """uint8 [N, 3, H, W] -> one PIL image, `columns` wide, row-major, `pad` px gutters."""
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError("image_grid expects uint8 [N, 3, H, W]")
    count, _, height, width = images.shape
    rows = max(1, -(-count // columns))
    sheet = np.full(
        (rows * (height + pad) + pad, columns * (width + pad) + pad, 3), background, dtype=np.uint8
    )
    pixels = images.permute(0, 2, 3, 1).numpy()
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        sheet[top : top + height, left : left + width] = pixels[index]
    return Image.fromarray(sheet)


def save_png(image: Image.Image, dest: str | Path) -> None:
    """Write a PNG atomically; Pillow adds no timestamp, so equal pixels give equal bytes."""
    from emojich.foundation.storage import atomic_path

    with atomic_path(dest) as tmp:
        image.save(tmp, format="PNG", optimize=False)
