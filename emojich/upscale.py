"""Upscaling emoji to the training resolution: RRDBNet x4 super-resolution, then an exact resize.

Images are uint8 (H, W, 3) RGB numpy arrays throughout; tensors stay inside this module.

- `super_resolve` runs the network in batches of equal-sized images, whole when they fit and in
  overlapping tiles when they do not (the tiled result equals the whole-image one when the overlap
  covers the network's receptive field, see `receptive_radius`).
- `upscale_to` is the report's recipe: x4 for images smaller than the target, then a resize to
  exactly target x target; larger images are only resized.
- `train_rrdbnet` fits a small RRDBNet on the emoji themselves (HR crops of the largest renders,
  LR made by x4 bicubic reduction), the demo stand-in for the published Real-ESRGAN weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig
from emojich.progress import progress_bar

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
    pixels = batch.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(pixels)


def _model_device(model: RRDBNet) -> torch.device:
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


def _size_groups(images: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
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
) -> list[np.ndarray]:
    """x`model.scale` super-resolution of uint8 RGB arrays (any sizes); returns them in input order."""
    results: list[np.ndarray | None] = [None] * len(images)
    device = _model_device(model)
    model = model.eval().to(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        progress_bar(total=len(images), desc="super-resolve", unit="img", disable=not progress) as bar,
    ):
        for group in _size_groups(images, batch_size):
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
) -> list[np.ndarray]:
    """Every image -> exactly target x target RGB: SR first where it is smaller, then Lanczos.

    Non-square images are centred on white first. `model=None` is the Lanczos-only fallback.
    """
    sources = [pad_to_square(image, 255) for image in images]
    small = [
        i for i, image in enumerate(sources) if needs_super_resolution(*image.shape[:2], target, sr_max_side)
    ]
    if model is not None and small:
        enlarged = super_resolve(model, [sources[i] for i in small], batch_size, tile, tile_overlap, progress)
        for index, pixels in zip(small, enlarged, strict=True):
            sources[index] = pixels
    return [resize_square(image, target) for image in sources]


# --- Self-training ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 400
    batch: int = 8
    patch: int = 16  # LR patch side; HR crops are patch x scale
    lr: float = 2e-3
    seed: int = 42


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The degradation the model learns to undo: antialiased bicubic reduction by `scale`."""
    lr = F.interpolate(hr, scale_factor=1.0 / scale, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(0.0, 1.0)


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline every SR model must beat."""
    return F.interpolate(lr, scale_factor=float(scale), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block, restoring the caller's RNG state afterwards.

    `torch.use_deterministic_algorithms` is deliberately not switched on: the CPU kernels used
    here are deterministic already, and turning it on costs seconds of imports per process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _sample_patches(
    sources: Sequence[torch.Tensor], count: int, side: int, generator: torch.Generator
) -> torch.Tensor:
    patches = []
    for _ in range(count):
        image = sources[int(torch.randint(len(sources), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - side + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - side + 1, (1,), generator=generator))
        patch = image[:, top : top + side, left : left + side]
        if bool(torch.rand((), generator=generator) < 0.5):  # mirror: twice the data, same emoji style
            patch = patch.flip(-1)
        patches.append(patch)
    return torch.stack(patches).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def train_rrdbnet(
    hr_images: Sequence[np.ndarray],
    config: RRDBNetConfig,
    train: TrainConfig,
    progress: bool = False,
) -> tuple[RRDBNet, dict[str, float]]:
    """Train RRDBNet(config) on HR crops of `hr_images` (each at least patch x scale on a side).

    Deterministic under `train.seed` on a given machine: seeded init, seeded patch sampler, L1
    loss, Adam at a constant rate (runs are
    too short for a decay to pay off: the first couple of hundred steps only leave the bicubic start). Returns the model in eval mode and a few training numbers.
    """
    side = train.patch * config.scale
    sources = [torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1) for a in hr_images]
    sources = [s for s in sources if min(s.shape[1:]) >= side]
    if not sources:
        raise ValueError(f"no training image has both sides >= {side} px")
    with seeded(train.seed):
        model = RRDBNet(config).to(memory_format=torch.channels_last)
        generator = torch.Generator().manual_seed(train.seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(0.9, 0.99))
        losses = []
        model.train()
        for _ in progress_bar(range(train.steps), desc="train rrdbnet", unit="step", disable=not progress):
            hr = _sample_patches(sources, train.batch, side, generator)
            loss = F.l1_loss(model(downscale(hr, config.scale)), hr)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10) :]
    return model.eval(), {"steps": train.steps, "final_l1": float(np.mean(tail)) if losses else math.nan}


# --- Evaluation ------------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for NCHW tensors in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def evaluate_sr(
    model: RRDBNet | None, hr_images: Sequence[np.ndarray], batch_size: int = 16
) -> dict[str, float | int | None]:
    """PSNR of model vs bicubic on (bicubic-reduced, original) pairs; images are cropped to a
    multiple of the scale. Use held-out images only, or the number measures memorisation."""
    scale = model.scale if model is not None else 4
    crops = [a[: a.shape[0] // scale * scale, : a.shape[1] // scale * scale] for a in hr_images]
    crops = [c for c in crops if min(c.shape[:2]) >= scale]
    if not crops:
        return {"pairs": 0, "model_db": None, "bicubic_db": None, "gain_db": None}
    model_scores, bicubic_scores = [], []
    device = _model_device(model) if model is not None else torch.device("cpu")
    with torch.inference_mode():
        for group in _size_groups(crops, batch_size):
            hr = to_tensor([crops[i] for i in group]).to(device)
            lr = downscale(hr, scale)
            # Quantise LR to 8 bits as a stored image would be.
            lr = lr.mul(255.0).round_().div_(255.0)
            bicubic_scores.append(psnr(bicubic_upscale(lr, scale), hr))
            if model is not None:
                model_scores.append(psnr(sr_batch(model.eval(), lr).clamp(0.0, 1.0), hr))
    bicubic_db = float(torch.cat(bicubic_scores).mean())
    model_db = float(torch.cat(model_scores).mean()) if model_scores else None
    return {
        "pairs": len(crops),
        "model_db": model_db,
        "bicubic_db": bicubic_db,
        "gain_db": None if model_db is None else model_db - bicubic_db,
    }
