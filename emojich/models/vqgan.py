"""Image tokenizer: a VQGAN (taming-transformers ``GumbelVQ`` layout; quantizers in `quantizers`).

The module tree mirrors taming-transformers so that the published Sber checkpoints load
key-for-key (``encoder.down.{i}.block.{j}.conv1``, ``quantize.proj``, ...). Images enter in
[0, 1] and are mapped to [-1, 1] (``2x - 1``), which is what the published model was trained on.

Presets (``VQGanConfig.preset``):
- ``sber``: the published f8 model, 256 px -> 32x32 codes from an 8192-entry codebook.
- ``sber-dwt``: same encoder and codebook, decoder predicts Haar wavelet bands -> 512 px.
- ``demo``: a small model with an EMA quantizer that trains from scratch on CPU in minutes
  (64 px -> 8x8 codes).
- ``tiny``: for tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from emojich.models.checkpoints import (
    CheckpointError,
    load_state_dict_strict,
    read_state_dict,
    save_safetensors,
)
from emojich.models.dwt import InverseHaar
from emojich.models.quantizers import QuantizerTraining, build_quantizer

CHECKPOINT_FORMAT = "emojich-vqgan"
QUANTIZERS = ("gumbel", "ema")

# Prefixes of tensors that published taming checkpoints carry besides the model itself:
# ``loss.*`` holds the discriminator and the LPIPS perceptual network used in training.
IGNORED_PUBLISHED_PREFIXES = ("loss.",)
# The DWT checkpoint wraps GumbelVQ in an outer module, so its keys start with ``model.``.
DWT_CHECKPOINT_PREFIX = "model."
# GumbelVQ builds a top-level post_quant_conv even in its DWT variant, where the decoder's own
# copy is the one used; the published DWT file may carry the unused one.
UNUSED_DWT_KEYS = ("post_quant_conv.weight", "post_quant_conv.bias")


@dataclass(frozen=True)
class VQGanConfig:
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    z_channels: int = 256
    codebook_size: int = 8192
    embed_dim: int = 256
    dropout: float = 0.0
    norm_groups: int = 32
    dwt: bool = False
    # "gumbel": the published GumbelVQ (logits over the codebook, `quantize.proj`).
    # "ema": nearest-neighbour VQ with an EMA-updated codebook, for training here: the Gumbel
    # quantizer trained from scratch samples a near-random code per position, and its decoder
    # learns the average (brown) emoji. Both decode through the same `quantize.embed` lookup.
    quantizer: str = "gumbel"

    def __post_init__(self) -> None:
        # Tuples keep the config hashable and comparable after a JSON round trip (lists).
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        for width in {self.ch * m for m in self.ch_mult}:
            if width % self.norm_groups:
                raise ValueError(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per side for an input of `resolution` pixels."""
        return self.resolution // self.downsample_factor

    @property
    def output_resolution(self) -> int:
        return self.resolution * (2 if self.dwt else 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VQGanConfig:
        return cls(**json.loads(text))

    @classmethod
    def preset(cls, name: str) -> VQGanConfig:
        try:
            return _PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown VQGAN preset {name!r}; known: {', '.join(_PRESETS)}") from None


# The published layout (four levels, two blocks each, attention at the 1/8 grid, so every
# published key name) at tiny widths: `emojich standin-weights --size tiny`, for CI.
_SBER_TINY = VQGanConfig(
    resolution=32, ch=8, attn_resolutions=(4,), z_channels=8, codebook_size=64, embed_dim=8, norm_groups=4
)

_PRESETS: dict[str, VQGanConfig] = {
    "sber": VQGanConfig(),
    "sber-dwt": VQGanConfig(dwt=True),
    # Factor 8 like the published model (64 px -> 8x8 codes), but thin at full resolution,
    # where a VQGAN spends most of its compute: 16 channels there cost ~1/5 of the FLOPs of 32
    # channels with ch_mult (1, 2, 2, 4), which lets 2 CPU cores see a few thousand emoji a
    # couple of times in 1-2 minutes. Attention only at the 8x8 bottleneck, where it is cheap.
    "demo": VQGanConfig(
        resolution=64,
        ch=16,
        ch_mult=(1, 1, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=64,
        # 8x8 codes of 1024 entries (640 bits an image): 512 entries stopped ~0.6 dB short of
        # 22 dB on the catalogue's flat-colour emoji; a wider grid would cost the transformer 2-5x.
        codebook_size=1024,
        embed_dim=64,
        norm_groups=8,
        quantizer="ema",
    ),
    "sber-tiny": _SBER_TINY,
    "sber-dwt-tiny": dataclasses.replace(_SBER_TINY, dwt=True),
    "tiny": VQGanConfig(
        resolution=16,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=8,
        codebook_size=32,
        embed_dim=8,
        norm_groups=4,
    ),
}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # eps 1e-6 as in taming-transformers; the published weights were trained with it.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 ``nin_shortcut`` matches widths when they change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, 1x1 convolutions as projections."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:  # [B, 1, HW, C]: one head
            return conv(h).reshape(batch, channels, height * width).transpose(1, 2).unsqueeze(1)

        # Same maths as taming's bmm/softmax version (scale C^-1/2), fused where available.
        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution; padding only right/bottom, as taming does, halves exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour doubling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler.

    Only a container so that the state-dict keys read ``down.{i}.block.{j}`` / ``up.{i}.attn.{j}``.
    """

    def __init__(
        self, blocks: list[ResnetBlock], attn: list[AttnBlock], resample: nn.Module | None, name: str
    ):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            self.add_module(name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> [B, z_channels, H/f, W/f]."""

    def __init__(self, config: VQGanConfig) -> None:
        super().__init__()
        c, groups = config, config.norm_groups
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        levels = []
        resolution, width = c.resolution, c.ch
        for index, mult in enumerate(c.ch_mult):
            out = c.ch * mult
            blocks = [
                ResnetBlock(width if j == 0 else out, out, groups, c.dropout) for j in range(c.num_res_blocks)
            ]
            attn = [AttnBlock(out, groups) for _ in blocks] if resolution in c.attn_resolutions else []
            last = index == len(c.ch_mult) - 1
            levels.append(_Level(blocks, attn, None if last else Downsample(out), "downsample"))
            width = out
            if not last:
                resolution //= 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(width, groups, c.dropout)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_channels, h*f, w*f]; one more block per level than the encoder."""

    def __init__(self, config: VQGanConfig, out_channels: int | None = None) -> None:
        super().__init__()
        c, groups = config, config.norm_groups
        width = c.ch * c.ch_mult[-1]
        resolution = c.resolution // c.downsample_factor
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = _Mid(width, groups, c.dropout)
        levels: list[_Level] = []
        for index in reversed(range(len(c.ch_mult))):
            out = c.ch * c.ch_mult[index]
            count = c.num_res_blocks + 1
            blocks = [ResnetBlock(width if j == 0 else out, out, groups, c.dropout) for j in range(count)]
            attn = [AttnBlock(out, groups) for _ in blocks] if resolution in c.attn_resolutions else []
            levels.insert(0, _Level(blocks, attn, Upsample(out) if index else None, "upsample"))
            width = out
            if index:
                resolution *= 2
        # Stored lowest level first (``up.0`` is full resolution), run from the bottleneck up.
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, out_channels or c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DecoderDWT(nn.Module):
    """The published 512 px decoder: 12 wavelet channels at 256 px, then one inverse Haar step.

    It owns its ``post_quant_conv`` (the published file keys it ``decoder.post_quant_conv``).
    """

    def __init__(self, config: VQGanConfig) -> None:
        super().__init__()
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config, out_channels=4 * config.out_channels)
        self.idwt = InverseHaar()

    def forward(self, quant: torch.Tensor) -> torch.Tensor:
        return self.idwt(self.decoder(self.post_quant_conv(quant)))


class VQGan(nn.Module):
    """Encoder, quantizer and decoder with taming-transformers state-dict keys."""

    def __init__(self, config: VQGanConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = build_quantizer(config.quantizer, config.codebook_size, config.embed_dim)
        if config.dwt:
            self.decoder: nn.Module = DecoderDWT(config)
        else:
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
            self.decoder = Decoder(config)

    # -- building blocks of encode/decode, also used by training -----------------------------

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> quantizer input [B, embed_dim, H/f, W/f]."""
        return self.quant_conv(self.encoder(2.0 * images - 1.0))

    def code_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> codebook scores [B, K, H/f, W/f]; the argmax is the code."""
        return self.quantize.logits(self.latents(images))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B, D, h, w] -> raw decoder output in roughly [-1, 1]."""
        if self.config.dwt:
            return self.decoder(z_q)
        return self.decoder(self.post_quant_conv(z_q))

    # -- public API -------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> codes LongTensor [B, (H/f) * (W/f)], row-major.

        Deterministic argmax of the logits. (The published wrapper samples a hard Gumbel-softmax
        by default and takes the argmax only with ``disable_gumbel_softmax=True``; we always take
        the argmax so that the same image gives the same codes.)
        """
        return self.code_logits(images).argmax(dim=1).flatten(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, n] (n a square number) -> images [B, 3, H, W] in [0, 1]."""
        batch, count = codes.shape
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(f"decode expects a square grid of codes, got {count}")
        z_q = self.quantize.lookup(codes.reshape(batch, side, side))
        return (self.decode_latents(z_q).clamp(-1.0, 1.0) + 1.0) / 2.0

    # -- checkpoints ------------------------------------------------------------------------

    @classmethod
    def load_published(cls, path: str | os.PathLike[str], config: VQGanConfig | None = None) -> VQGan:
        """Load ``vqgan.gumbelf8-sber.model.ckpt`` or ``vqgan.gumbelf8-sber-dwt.model.ckpt``.

        The DWT file is recognised by its ``model.`` key prefix. `config` defaults to the
        matching ``sber``/``sber-dwt`` preset (tests pass smaller ones).
        """
        state = read_state_dict(path, wrappers=("state_dict",))
        state, dwt = published_to_state_dict(state)
        if config is None:
            config = VQGanConfig.preset("sber-dwt" if dwt else "sber")
        elif config.dwt != dwt:
            kind = "a DWT" if dwt else "a plain"
            raise CheckpointError(f"{path} holds {kind} VQGAN decoder but the config has dwt={config.dwt}")
        if config.quantizer != "gumbel":
            raise CheckpointError(
                f"{path}: published VQGANs hold a Gumbel quantizer, the config asks for {config.quantizer!r}"
            )
        model = cls(config)
        load_state_dict_strict(model, state, optional=UNUSED_DWT_KEYS if dwt else (), source=str(path))
        return model.eval()

    def save(self, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
        """Save as safetensors with the config in the metadata, so `load` rebuilds the model."""
        metadata = {**(extra or {}), "format": CHECKPOINT_FORMAT, "config": self.config.to_json()}
        save_safetensors(self, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected: VQGanConfig | None = None) -> VQGan:
        """Load a checkpoint written by `save`; with `expected`, its config must match exactly."""
        config = read_config(path)
        if expected is not None and expected != config:
            differing = [
                f"{f.name}={getattr(config, f.name)!r} (expected {getattr(expected, f.name)!r})"
                for f in dataclasses.fields(config)
                if getattr(config, f.name) != getattr(expected, f.name)
            ]
            raise CheckpointError(f"{path}: VQGAN config differs: {', '.join(differing)}")
        model = cls(config)
        load_state_dict_strict(model, read_state_dict(path), source=str(path))
        return model.eval()


def read_config(path: str | os.PathLike[str]) -> VQGanConfig:
    """The config stored in a checkpoint written by `VQGan.save`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for non-safetensors files
        raise CheckpointError(f"{path}: not a safetensors file ({error})") from error
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: not an {CHECKPOINT_FORMAT} checkpoint (metadata: {sorted(metadata)})")
    try:
        return VQGanConfig.from_json(metadata["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable VQGAN config ({error})") from error


def published_to_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Published taming/ruDALL-E tensors -> our keys, and whether it is the DWT variant.

    Drops the training-only prefixes in IGNORED_PUBLISHED_PREFIXES and strips ``model.``;
    everything else is kept, so a strict load still reports anything unexpected.
    """
    dwt = any(key.startswith(DWT_CHECKPOINT_PREFIX) for key in state)
    converted = {}
    for key, tensor in state.items():
        if dwt and key.startswith(DWT_CHECKPOINT_PREFIX):
            key = key[len(DWT_CHECKPOINT_PREFIX) :]
        if key.startswith(IGNORED_PUBLISHED_PREFIXES):
            continue
        converted[key] = tensor
    return converted, dwt


# -- training (demo profile) ---------------------------------------------------------------------


def _as_uint8_nchw(images: Any) -> torch.Tensor:
    """Accept uint8/float arrays or tensors [N, H, W, 3] / [N, 3, H, W], or a sequence of images."""
    if isinstance(images, torch.Tensor | np.ndarray):
        array = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    elif isinstance(images, Sequence) or hasattr(images, "__getitem__"):
        array = torch.stack([torch.as_tensor(np.asarray(images[i])) for i in range(len(images))])
    else:
        raise TypeError(f"expected an image array or a sequence of images, got {type(images).__name__}")
    if array.ndim != 4:
        raise ValueError(f"expected 4-D images, got shape {tuple(array.shape)}")
    if array.shape[1] != 3 and array.shape[-1] == 3:
        array = array.permute(0, 3, 1, 2)
    if array.dtype != torch.uint8:
        array = (array.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.contiguous()


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


def saturating(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The decoder output as the loss should see it where the target sits on a bound.

    Decoded images are clamped to [-1, 1] for display, so overshooting a white (or black) target
    pixel shows nothing. Scored as is, a decoder regressing to the mean hovers just inside the
    bound and draws an emoji's white background as 240-off-white with a darker frame, which the
    segmentation then keeps as a semi-opaque halo. Clamped on the target's side only where the
    target is on the bound, the decoder learns to saturate there, and every other pixel keeps its
    full gradient.
    """
    return torch.where(
        target >= 1.0, recon.clamp(max=1.0), torch.where(target <= -1.0, recon.clamp(min=-1.0), recon)
    )


def train_vqgan(
    model: VQGan,
    images: Any,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    quantizer: QuantizerTraining | None = None,
) -> dict[str, float]:
    """Train `model` in place from scratch; returns summary metrics.

    Loss: L1 + MSE reconstruction (no perceptual network, so nothing has to be downloaded) plus
    the quantizer's own term (`QuantizerTraining`: KL terms for Gumbel, commitment for EMA).
    Adam with a short warm-up and cosine decay. Deterministic for a given seed (all randomness
    comes from one generator).
    """
    data = _as_uint8_nchw(images)
    factor = model.config.downsample_factor
    if data.shape[-1] % factor or data.shape[-2] % factor:
        raise ValueError(f"image size {tuple(data.shape[-2:])} is not a multiple of {factor}")
    settings = quantizer or QuantizerTraining()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout, if configured, draws from the global generator
    # Plain reconstruction training (no discriminator), so the usual betas rather than GAN ones.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, betas=(0.9, 0.99))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        batch = _to_unit(data[index])
        quantized = model.quantize.train_step(
            model.latents(batch), step / max(1, steps - 1), settings, generator
        )
        target = 2.0 * batch - 1.0
        recon = saturating(model.decode_latents(quantized.z_q), target)
        loss_rec = F.l1_loss(recon, target) + F.mse_loss(recon, target)
        loss = loss_rec + quantized.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss_rec.detach()))
        if progress and (step % max(1, steps // 10) == 0 or step == steps - 1):
            print(f"vqgan step {step + 1}/{steps} rec {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    evaluation = _to_unit(data[torch.randperm(len(data), generator=generator)[:256]])
    codes = encode_batched(model, evaluation)
    tail = losses[-max(1, steps // 10) :]
    return {
        "steps": float(steps),
        "seconds": seconds,
        "train_images_per_second": steps * batch_size / max(seconds, 1e-9),
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": float(np.mean(tail)) if tail else float("nan"),
        "psnr": reconstruction_psnr(model, evaluation),
        **{
            f"codebook_{name}": value
            for name, value in codebook_usage(codes, model.config.codebook_size).items()
        },
    }


# -- metrics --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_batched(model: VQGan, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def reconstruct(model: VQGan, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """encode -> decode as uint8 [N, 3, H, W] at the input's size (the DWT decoder's 2x is
    area-averaged back), the way the images are saved and looked at."""
    data = _as_uint8_nchw(images)
    out = []
    for start in range(0, len(data), batch_size):
        batch = _to_unit(data[start : start + batch_size])
        recon = model.decode(model.encode(batch))
        if recon.shape[-1] != batch.shape[-1]:
            recon = F.interpolate(recon, size=batch.shape[-2:], mode="area")
        out.append((recon.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out) if out else data.clone()


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of two uint8 batches."""
    difference = original.float() / 255.0 - reconstruction.float() / 255.0
    mse = difference.pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return float((10.0 * torch.log10(1.0 / mse)).mean())


def reconstruction_psnr(model: VQGan, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> float:
    """Mean PSNR (dB) of encode -> decode on [0, 1] float or uint8 images."""
    return psnr(_as_uint8_nchw(images), reconstruct(model, images, batch_size))


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of codebook entries used and the perplexity of the code histogram."""
    counts = torch.bincount(codes.flatten().long(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {
        "used_fraction": float((counts > 0).sum() / codebook_size),
        "perplexity": float(entropy.exp()),
    }
