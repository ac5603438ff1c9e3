"""Sparse attention masks against masks written out by hand (6 text tokens, 4 x 4 image)."""

from __future__ import annotations

import pytest
import torch

from emojich.models.masks import build_mask, conv_mask, default_conv_kernel, layer_mask_kinds

TEXT, GRID = 6, 4

# Image block only: line c lists which image keys d = 0..15 image query c may attend.
ROW = [
    "1000000000000000",
    "1100000000000000",
    "1110000000000000",
    "1111000000000000",
    "1111100000000000",
    "0111110000000000",
    "0011111000000000",
    "0001111100000000",
    "0000111110000000",
    "0000011111000000",
    "0000001111100000",
    "0000000111110000",
    "0000000011111000",
    "0000000001111100",
    "0000000000111110",
    "0000000000011111",
]
COLUMN = [
    "1000000000000000",
    "0100000000000000",
    "0010000000000000",
    "0001000000000000",
    "1000100000000000",
    "0100010000000000",
    "0010001000000000",
    "0001000100000000",
    "1000100010000000",
    "0100010001000000",
    "0010001000100000",
    "0001000100010000",
    "1000100010001000",
    "0100010001000100",
    "0010001000100010",
    "0001000100010001",
]
# 3 x 3 neighbourhood, clamped at the borders (format v3): |drow| <= 1 and |dcol| <= 1.
CONV_CLAMP = [
    "1000000000000000",
    "1100000000000000",
    "0110000000000000",
    "0011000000000000",
    "1100100000000000",
    "1110110000000000",
    "0111011000000000",
    "0011001100000000",
    "0000110010000000",
    "0000111011000000",
    "0000011101100000",
    "0000001100110000",
    "0000000011001000",
    "0000000011101100",
    "0000000001110110",
    "0000000000110011",
]
# 3 x 3 neighbourhood wrapping around the grid (format v2): columns 0 and 3 touch, rows 0 and 3 touch.
CONV_WRAP = [
    "1000000000000000",
    "1100000000000000",
    "0110000000000000",
    "1011000000000000",
    "1101100000000000",
    "1110110000000000",
    "0111011000000000",
    "1011101100000000",
    "0000110110000000",
    "0000111011000000",
    "0000011101100000",
    "0000101110110000",
    "1101000011011000",
    "1110000011101100",
    "0111000001110110",
    "1011000010111011",
]


def _image_block(lines: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in line] for line in lines])


def _check(mask: torch.Tensor, image_lines: list[str]) -> None:
    seq = TEXT + GRID * GRID
    assert mask.shape == (seq, seq) and mask.dtype == torch.bool
    # Text queries: plain causal over the text, never an image key.
    assert torch.equal(mask[:TEXT, :TEXT], torch.ones(TEXT, TEXT, dtype=torch.bool).tril())
    assert not mask[:TEXT, TEXT:].any()
    # Image queries always see every text key.
    assert mask[TEXT:, :TEXT].all()
    assert torch.equal(mask[TEXT:, TEXT:], _image_block(image_lines))


@pytest.mark.parametrize("fmt", ["v2", "v3"])
def test_row_mask(fmt: str) -> None:
    _check(build_mask("row", TEXT, GRID, fmt), ROW)


@pytest.mark.parametrize("fmt", ["v2", "v3"])
def test_column_mask(fmt: str) -> None:
    _check(build_mask("column", TEXT, GRID, fmt), COLUMN)


def test_conv_mask_v3_clamps() -> None:
    _check(build_mask("conv", TEXT, GRID, "v3", conv_kernel=3), CONV_CLAMP)


def test_conv_mask_v2_wraps() -> None:
    _check(build_mask("conv", TEXT, GRID, "v2", conv_kernel=3), CONV_WRAP)


def test_whole_row_mask_literal() -> None:
    rows = [("1" * (q + 1)).ljust(TEXT + GRID * GRID, "0") for q in range(TEXT)]
    rows += ["111111" + line for line in ROW]
    expected = torch.tensor([[c == "1" for c in line] for line in rows])
    assert torch.equal(build_mask("row", TEXT, GRID), expected)


def test_published_sizes() -> None:
    row = build_mask("row", 128, 32)
    assert row.shape == (1152, 1152)
    # An image query deep in the image sees the 128 text keys and 33 image keys (itself included).
    assert int(row[1000].sum()) == 128 + 33
    column = build_mask("column", 128, 32)
    assert int(column[128 + 1023].sum()) == 128 + 32
    conv = conv_mask(128, 32, kernel=11)
    # Middle of the grid: 5 full rows above of 11 plus 6 in its own row (itself included).
    assert int(conv[128 + 16 * 32 + 16].sum()) == 128 + 5 * 11 + 6


def test_masks_are_causal_with_diagonal() -> None:
    for kind in ("row", "column", "conv"):
        for fmt in ("v2", "v3"):
            mask = build_mask(kind, 5, 8, fmt, conv_kernel=5)
            assert not mask.triu(1).any()
            assert mask.diagonal().all()


def test_layer_kinds_follow_release() -> None:
    kinds = layer_mask_kinds(24)
    assert [i for i, k in enumerate(kinds) if k == "column"] == [1, 5, 9, 13, 17, 21]
    assert kinds[23] == "conv"
    assert kinds.count("row") == 17
    assert layer_mask_kinds(3) == ("row", "column", "conv")
    assert layer_mask_kinds(4) == ("row", "column", "row", "conv")


def test_default_kernel_and_bad_arguments() -> None:
    assert default_conv_kernel(32) == 11
    assert default_conv_kernel(8) % 2 == 1 and default_conv_kernel(8) < 8
    with pytest.raises(ValueError, match="odd"):
        conv_mask(4, 4, kernel=4)
    with pytest.raises(ValueError, match="kind"):
        build_mask("diagonal", 4, 4)
    with pytest.raises(ValueError, match="format"):
        build_mask("row", 4, 4, "v4")
