"""One-level 2-D Haar wavelet transform, as used by the published 512 px VQGAN decoder.

The DWT decoder predicts 12 channels at half the output size: channels 0..C-1 are the low
band of each colour, the rest are three high bands per colour (colour-major: channel
``C + 3 * colour + band``, bands ordered LH, HL, HH). One inverse Haar step doubles the size.

Convention (checked against the published synthesis filter bank, ``mode='zero'``, db1):
an output pixel ``y[2i + a, 2j + b]`` sums ``band[i, j] * v_band[a] * h_band[b]`` where the
vertical factor is the low filter ``g0`` for LL/HL and the high filter ``g1`` for LH/HH, and
the horizontal factor is ``g0`` for LL/LH and ``g1`` for HL/HH. With the Haar filters
``g0 = (1, 1) / sqrt(2)`` and ``g1 = (1, -1) / sqrt(2)`` the transform is orthogonal, so the
analysis step below is simply its transpose and the pair reconstructs exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_BAND_COUNT = 4  # LL, LH, HL, HH


def _haar_filters() -> tuple[torch.Tensor, torch.Tensor]:
    scale = 1.0 / math.sqrt(2.0)
    return torch.tensor([scale, scale]), torch.tensor([scale, -scale])


def _band_kernels(vertical: tuple[torch.Tensor, torch.Tensor], horizontal: tuple[torch.Tensor, torch.Tensor]):
    """The 4 separable 2x2 kernels, shape [4, 2, 2], in band order LL, LH, HL, HH."""
    (v0, v1), (h0, h1) = vertical, horizontal
    return torch.stack([torch.outer(v0, h0), torch.outer(v1, h0), torch.outer(v0, h1), torch.outer(v1, h1)])


def _split_bands(coeffs: torch.Tensor) -> torch.Tensor:
    """[B, 4C, h, w] in the published channel layout -> [B, C, 4, h, w]."""
    batch, channels, height, width = coeffs.shape
    if channels % _BAND_COUNT:
        raise ValueError(f"wavelet coefficients need a multiple of 4 channels, got {channels}")
    colours = channels // _BAND_COUNT
    low = coeffs[:, :colours].unsqueeze(2)
    high = coeffs[:, colours:].reshape(batch, colours, 3, height, width)
    return torch.cat([low, high], dim=2)


def _join_bands(bands: torch.Tensor) -> torch.Tensor:
    """[B, C, 4, h, w] -> [B, 4C, h, w] in the published channel layout."""
    batch, colours, _, height, width = bands.shape
    low = bands[:, :, 0]
    high = bands[:, :, 1:].reshape(batch, colours * 3, height, width)
    return torch.cat([low, high], dim=1)


class InverseHaar(nn.Module):
    """Inverse one-level Haar DWT: [B, 4C, h, w] coefficients -> [B, C, 2h, 2w] image.

    The four filter buffers carry the published names and shapes (``g*_col`` [1, 1, 2, 1],
    ``g*_row`` [1, 1, 1, 2]) so the published state dict loads into this module unchanged.
    The published code hands the ``row`` buffers to the vertical pass and the ``col`` buffers
    to the horizontal one; we do the same, which only matters for non-Haar filters.
    """

    g0_col: torch.Tensor
    g1_col: torch.Tensor
    g0_row: torch.Tensor
    g1_row: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        low, high = _haar_filters()
        self.register_buffer("g0_col", low.reshape(1, 1, 2, 1).clone())
        self.register_buffer("g1_col", high.reshape(1, 1, 2, 1).clone())
        self.register_buffer("g0_row", low.reshape(1, 1, 1, 2).clone())
        self.register_buffer("g1_row", high.reshape(1, 1, 1, 2).clone())

    def kernels(self) -> torch.Tensor:
        vertical = (self.g0_row.flatten(), self.g1_row.flatten())
        horizontal = (self.g0_col.flatten(), self.g1_col.flatten())
        return _band_kernels(vertical, horizontal)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        bands = _split_bands(coeffs)
        batch, colours, _, height, width = bands.shape
        kernels = self.kernels().to(bands.dtype)
        # Each coefficient paints one 2x2 output patch: a transposed stride-2 convolution,
        # written as an einsum so no per-channel grouped convolution is needed.
        patches = torch.einsum("bcnhw,nak->bchawk", bands, kernels)
        return patches.reshape(batch, colours, 2 * height, 2 * width)


def haar_dwt(image: torch.Tensor) -> torch.Tensor:
    """Forward one-level Haar DWT: [B, C, H, W] (H, W even) -> [B, 4C, H/2, W/2].

    The exact inverse of :class:`InverseHaar` with its default filters (the transform is
    orthogonal, so analysis is the transpose of synthesis).
    """
    batch, colours, height, width = image.shape
    if height % 2 or width % 2:
        raise ValueError(f"haar_dwt needs even height and width, got {height}x{width}")
    low, high = _haar_filters()
    kernels = _band_kernels((low, high), (low, high)).to(image.dtype).to(image.device)
    patches = image.reshape(batch, colours, height // 2, 2, width // 2, 2)
    bands = torch.einsum("bchawk,nak->bcnhw", patches, kernels)
    return _join_bands(bands)
