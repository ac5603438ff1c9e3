"""Upscaling emoji to the training resolution: RRDBNet x4 super-resolution, then an exact resize.

Images are uint8 (H, W, 3) RGB numpy arrays throughout; tensors stay inside this module.

- `super_resolve` runs the network in batches of equal-sized images, whole when they fit and in
  overlapping tiles when they do not (the tiled result equals the whole-image one when the overlap
  covers the network's receptive field, see `receptive_radius`).
- `upscale_to` is the report's recipe: x4 for images smaller than the target, then a resize to
  exactly target x target; larger images are only resized.

Training the demo's own RRDBNet lives beside this module, in `emojich.upscale.selftrain`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emojich.foundation.device import autocast
from emojich.foundation.progress import progress_bar
from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig

# Pillow's Lanczos filter is antialiased when reducing, so one call serves both directions.
RESAMPLE = Image.Resampling.LANCZOS


# --- Geometry --------------------------------------------------------------------------------


def needs_super_resolution(height: int, width: int, target: int, max_side: int | None = None) -> bool:
    """SR only helps when we must enlarge: the longest side is below the target.

    `max_side` limits SR to images at most that large: an image that needs less than ×2 gains
    little from a ×4 network, yet costs (side / 72)² times a 72 px emoji to run through it.
    """
    side = max(height, width)
    return side < target and (max_side is None or side <= max_side)


def pad_to_square(array: np.ndarray, fill: int) -> np.ndarray:
    """Centre a non-square image on a square canvas so the final resize keeps its aspect ratio."""
    height, width = array.shape[:2]
    if height == width:
        return array
    side = max(height, width)
    canvas = np.full((side, side, *array.shape[2:]), fill, dtype=array.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = array
    return canvas


def resize_square(array: np.ndarray, target: int, resample: Image.Resampling = RESAMPLE) -> np.ndarray:
    if array.shape[0] == array.shape[1] == target:
        return array
    return np.asarray(Image.fromarray(array).resize((target, target), resample))


def receptive_radius(config: RRDBNetConfig) -> int:
    """How far (in input pixels) one output pixel can see: the tile overlap that makes tiling exact.

    Every 3x3 conv at input resolution adds one pixel: conv_first, 15 per RRDB (3 dense blocks of
    5 convs), conv_body. The four convs after up-sampling add under two input pixels together.
    """
    unshuffle = {4: 1, 2: 2, 1: 4}[config.scale]
    return unshuffle * (2 + 15 * config.num_block + 2)


# --- Inference -------------------------------------------------------------------------------


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays of one size -> float NCHW in [0, 1], channels-last in memory."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return batch.contiguous(memory_format=torch.channels_last)


def to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    pixels = (
        batch.float().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return list(pixels)


def model_device(model: RRDBNet) -> torch.device:
    return next(model.parameters()).device


# Input pixels added on every side (edge-replicated) before super-resolution and cropped after.
# The network zero-pads each convolution, so without context its outer pixels see black beyond
# the border and come out darker: an emoji's white background gets a grey frame, which the
# background removal then keeps as a halo.
BORDER_CONTEXT = 4


def sr_batch(model: RRDBNet, batch: torch.Tensor, tile: int = 0, tile_overlap: int = 8) -> torch.Tensor:
    """Super-resolve an NCHW batch in [0, 1]; tiles of `tile` input pixels when larger than that."""
    factor = model.unshuffle  # pixel-unshuffle models need sides divisible by this
    height, width = batch.shape[-2:]
    context = BORDER_CONTEXT
    pad_h, pad_w = (-(height + 2 * context)) % factor, (-(width + 2 * context)) % factor
    batch = F.pad(batch, (context, context + pad_w, context, context + pad_h), mode="replicate")
    if tile <= 0 or max(batch.shape[-2:]) <= tile:
        out = model(batch)
    else:
        out = _sr_tiled(model, batch, _round_up(tile, factor), _round_up(tile_overlap, factor))
    scale = model.scale
    return out[..., context * scale : (context + height) * scale, context * scale : (context + width) * scale]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _sr_tiled(model: RRDBNet, batch: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    # Each tile is run with `overlap` extra input pixels of real context on every inner side and
    # only its own area is kept, so the seams see the same neighbourhood as in a whole-image run.
    scale = model.scale
    height, width = batch.shape[-2:]
    out = batch.new_empty(batch.shape[0], model.config.out_channels, height * scale, width * scale)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            ctx_top, ctx_left = max(top - overlap, 0), max(left - overlap, 0)
            ctx_bottom, ctx_right = min(bottom + overlap, height), min(right + overlap, width)
            piece = model(batch[..., ctx_top:ctx_bottom, ctx_left:ctx_right])
            out[..., top * scale : bottom * scale, left * scale : right * scale] = piece[
                ...,
                (top - ctx_top) * scale : (bottom - ctx_top) * scale,
                (left - ctx_left) * scale : (right - ctx_left) * scale,
            ]
    return out


def size_groups(images: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices of equal-sized images, in batches; stable order so results never depend on grouping."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(image.shape, []).append(index)
    for _, indices in sorted(by_size.items()):
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def super_resolve(
    model: RRDBNet,
    images: Sequence[np.ndarray],
    batch_size: int = 16,
    tile: int = 0,
    tile_overlap: int = 8,
    progress: bool = False,
    precision: str = "fp32",
) -> list[np.ndarray]:
    """x`model.scale` super-resolution of uint8 RGB arrays (any sizes); returns them in input order.

    ``precision="bf16"`` runs the convolutions under bf16 autocast: 1.9x the images a second on
    2 CPU cores with AMX for the trained demo preset. A bicubic-skip model adds its bf16 residual
    to an fp32 bicubic base, so its 8-bit pixels move by two levels at most (the demo's: 3 in a
    million by more than one, the same held-out PSNR; tests/test_upscale.py).
    """
    results: list[np.ndarray | None] = [None] * len(images)
    device = model_device(model)
    model = model.eval().to(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        autocast(precision, device),
        progress_bar(total=len(images), desc="super-resolve", unit="img", disable=not progress) as bar,
    ):
        for group in size_groups(images, batch_size):
            batch = to_tensor([images[i] for i in group]).to(device)
            for index, pixels in zip(
                group, to_uint8(sr_batch(model, batch, tile, tile_overlap)), strict=True
            ):
                results[index] = pixels
            bar.update(len(group))
    return results  # type: ignore[return-value]


def upscale_to(
    images: Sequence[np.ndarray],
    model: RRDBNet | None,
    target: int = 256,
    batch_size: int = 16,
    tile: int = 0,
    tile_overlap: int = 8,
    progress: bool = False,
    sr_max_side: int | None = None,
    precision: str = "fp32",
) -> list[np.ndarray]:
    """Every image -> exactly target x target RGB: SR first where it is smaller, then Lanczos.

    Non-square images are centred on white first. `model=None` is the Lanczos-only fallback.
    """
    sources = [pad_to_square(image, 255) for image in images]
    small = [
        i for i, image in enumerate(sources) if needs_super_resolution(*image.shape[:2], target, sr_max_side)
    ]
    if model is not None and small:
        enlarged = super_resolve(
            model, [sources[i] for i in small], batch_size, tile, tile_overlap, progress, precision
        )
        for index, pixels in zip(small, enlarged, strict=True):
            sources[index] = pixels
    return [resize_square(image, target) for image in sources]
