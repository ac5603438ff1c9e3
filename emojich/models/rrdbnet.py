"""RRDBNet, the ESRGAN / Real-ESRGAN super-resolution generator.

Module and parameter names follow the published Real-ESRGAN checkpoints exactly
(`conv_first`, `body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
`conv_last`) so `RealESRGAN_x4.pth` loads strictly without any key renaming. The same class,
much smaller, is what the demo profile trains on the emoji set itself.

Inputs and outputs are RGB in [0, 1], NCHW; no mean/std normalisation (as published).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

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

# Published checkpoints nest their weights under one of these; EMA weights are what
# Real-ESRGAN evaluates with, so they are preferred when a file carries both.
PUBLISHED_WRAPPERS = ("params_ema", "params")

# ESRGAN scales every residual branch by 0.2 before adding it back: it keeps a deep stack of
# un-normalised dense blocks stable to train (the paper's "residual scaling").
RESIDUAL_SCALE = 0.2

_CONFIG_KEY = "rrdbnet_config"


@dataclasses.dataclass(frozen=True)
class RRDBNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    scale: int = 4  # 4: two x2 up-samplings; 2 and 1: pixel-unshuffle the input first (as published)
    # Add a bicubic up-sampling of the input to the output, so the network only learns the missing
    # detail. Not in the published models (False there); it lets a tiny network trained for a few
    # hundred CPU steps start from bicubic quality instead of from noise.
    bicubic_skip: bool = False

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale must be 1, 2 or 4, got {self.scale}")
        if min(self.num_feat, self.num_block, self.num_grow_ch) < 1:
            raise ValueError(f"num_feat, num_block and num_grow_ch must be positive: {self}")


PRESETS: dict[str, RRDBNetConfig] = {
    # RealESRGAN_x4.pth / RealESRGAN_x4plus.pth
    "realesrgan-x4": RRDBNetConfig(num_feat=64, num_block=23, num_grow_ch=32, scale=4),
    # Sized so that training plus x4 inference over ~4,000 72 px emoji fit in about two minutes on
    # two CPU cores. Most of the cost sits in the full-resolution convolutions after up-sampling,
    # which grow with num_feat squared, so num_feat is kept small and the body shallow.
    "demo": RRDBNetConfig(num_feat=16, num_block=1, num_grow_ch=8, scale=4, bicubic_skip=True),
}


def preset(name: str) -> RRDBNetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown RRDBNet preset {name!r}; known: {', '.join(PRESETS)}") from None


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier conv's output (dense)."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv(num_feat, num_grow_ch)
        self.conv2 = _conv(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.lrelu(conv(torch.cat(features, dim=1))))
        out = self.conv5(torch.cat(features, dim=1))  # no activation: this is a residual branch
        return x + RESIDUAL_SCALE * out


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside one more scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PRESETS["realesrgan-x4"]
        # Below x4 the published models trade resolution for channels (pixel-unshuffle), so the
        # body always runs at a quarter of the output size and the x4 tail is shared.
        self.unshuffle = {4: 1, 2: 2, 1: 4}[config.scale]
        nf = config.num_feat
        self.conv_first = _conv(config.in_channels * self.unshuffle**2, nf)
        self.body = nn.Sequential(*(RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = _conv(nf, nf)
        self.conv_up1 = _conv(nf, nf)
        self.conv_up2 = _conv(nf, nf)
        self.conv_hr = _conv(nf, nf)
        self.conv_last = _conv(nf, config.out_channels)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming init scaled down inside the residual blocks (as ESRGAN does), so at the start
        # each block is close to identity and the deep residual stack trains from step one.
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and module.weight.device.type != "meta":
                nn.init.kaiming_normal_(module.weight, a=0.2)
                if name.startswith("body."):
                    module.weight.data.mul_(0.1)
                nn.init.zeros_(module.bias)
        if self.config.bicubic_skip and self.conv_last.weight.device.type != "meta":
            # With the skip, a zero last conv makes the untrained model exactly bicubic.
            nn.init.zeros_(self.conv_last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = None
        if self.config.bicubic_skip:
            skip = F.interpolate(x, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        # Nearest-neighbour up-sampling then a conv (not transposed convs): no checkerboard artefacts.
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out if skip is None else out + skip

    @property
    def scale(self) -> int:
        return self.config.scale

    @classmethod
    def load_published(cls, path: str | os.PathLike[str], config: RRDBNetConfig | None = None) -> RRDBNet:
        """Load a published Real-ESRGAN file (raw state dict, or under `params_ema` / `params`)."""
        state = read_state_dict(path, wrappers=PUBLISHED_WRAPPERS)
        model = cls(config or config_from_state_dict(state))
        load_state_dict_strict(model, state, source=str(path))
        return model.eval()

    def save(self, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
        """Save weights as safetensors with the config in the metadata, so `load` needs nothing else."""
        metadata = {_CONFIG_KEY: json.dumps(dataclasses.asdict(self.config), sort_keys=True)}
        metadata.update(extra or {})
        save_safetensors(self, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RRDBNet:
        path = Path(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if _CONFIG_KEY not in metadata:
            raise CheckpointError(f"{path}: no {_CONFIG_KEY} in safetensors metadata")
        model = cls(RRDBNetConfig(**json.loads(metadata[_CONFIG_KEY])))
        load_state_dict_strict(model, read_state_dict(path), source=str(path))
        return model.eval()


def config_from_state_dict(state: dict[str, torch.Tensor]) -> RRDBNetConfig:
    """The RRDBNet a published state dict was saved from, read off its shapes.

    Real-ESRGAN's files do not record their architecture; the widths, the block count and the
    scale (through the pixel-unshuffled input channels) are all visible in the tensors. A file
    missing the keys falls back to the x4 preset, whose strict load then names what is missing.
    """
    fallback = PRESETS["realesrgan-x4"]
    if "conv_first.weight" not in state or "body.0.rdb1.conv1.weight" not in state:
        return fallback
    num_feat, inputs = state["conv_first.weight"].shape[:2]
    scale = {3: 4, 12: 2, 48: 1}.get(int(inputs), fallback.scale)
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("body.")}
    return RRDBNetConfig(
        num_feat=int(num_feat),
        num_block=len(blocks),
        num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0]),
        scale=scale,
    )
