"""Self-training the demo's RRDBNet x4 on the emoji themselves: the stand-in for Real-ESRGAN weights.

HR crops of the largest train-split renders, LR made by x4 bicubic reduction (`downscale`), L1 loss;
`evaluate_sr` reports PSNR beside the bicubic baseline on held-out pairs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emojich.foundation.device import autocast
from emojich.foundation.progress import progress_bar
from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig
from emojich.upscale.superres import model_device, size_groups, sr_batch, to_tensor


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
    model: RRDBNet | None, hr_images: Sequence[np.ndarray], batch_size: int = 16, precision: str = "fp32"
) -> dict[str, float | int | None]:
    """PSNR of model vs bicubic on (bicubic-reduced, original) pairs; images are cropped to a
    multiple of the scale. Use held-out images only, or the number measures memorisation.
    `precision` is the one the images will be super-resolved in, so the number is theirs."""
    scale = model.scale if model is not None else 4
    crops = [a[: a.shape[0] // scale * scale, : a.shape[1] // scale * scale] for a in hr_images]
    crops = [c for c in crops if min(c.shape[:2]) >= scale]
    if not crops:
        return {"pairs": 0, "model_db": None, "bicubic_db": None, "gain_db": None}
    model_scores, bicubic_scores = [], []
    device = model_device(model) if model is not None else torch.device("cpu")
    with torch.inference_mode():
        for group in size_groups(crops, batch_size):
            hr = to_tensor([crops[i] for i in group]).to(device)
            lr = downscale(hr, scale)
            # Quantise LR to 8 bits as a stored image would be.
            lr = lr.mul(255.0).round_().div_(255.0)
            bicubic_scores.append(psnr(bicubic_upscale(lr, scale), hr))
            if model is not None:
                with autocast(precision, device):
                    upscaled = sr_batch(model.eval(), lr)
                model_scores.append(psnr(upscaled.float().clamp(0.0, 1.0), hr))
    bicubic_db = float(torch.cat(bicubic_scores).mean())
    model_db = float(torch.cat(model_scores).mean()) if model_scores else None
    return {
        "pairs": len(crops),
        "model_db": model_db,
        "bicubic_db": bicubic_db,
        "gain_db": None if model_db is None else model_db - bicubic_db,
    }
