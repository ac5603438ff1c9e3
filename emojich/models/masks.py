"""Sparse attention masks of the ruDALL-E transformer, as pure functions.

Every mask is a bool matrix `[seq, seq]` indexed `[query, key]`, True where the query may attend.
`seq = text_seq_length + grid * grid`; the image region starts at index `text_seq_length`.
All masks are causal and let image queries see every text key; they differ only in which
earlier *image* keys an image query sees:

- "row":    the last `grid + 1` image positions including itself (a sliding window: one
            full row back plus one, 33 at 32 x 32);
- "column": earlier positions of its own column (image distance a multiple of `grid`);
- "conv":   a causal `kernel x kernel` neighbourhood (11 x 11 in the release).

Conv borders. The release builds the neighbourhood of each *key* cell and lets a later query
inside it attend. Format "v3" clamps neighbour coordinates into the grid, which yields exactly
the bounded window `|drow| <= k//2 and |dcol| <= k//2`; format "v2" wraps them modulo the grid,
so a cell near the right edge also sees cells near the left edge of the next rows (and rows
wrap too). Both are reproduced because the published weights were trained with them.

Small grids. The kernel is a parameter (`DalleConfig.conv_kernel`): an 11 x 11 window would
cover all of a 4 x 4 or 8 x 8 grid and make "conv" a plain causal mask, so small presets use
a proportionally smaller odd kernel (see `default_conv_kernel`).

Format "v2" puts one extra token in front of the text, so its image starts one position
later than the masks assume; the masks are still indexed by sequence position, exactly as
the release does (its last text token then falls in the masks' first image cell).
"""

from __future__ import annotations

import torch

MASK_KINDS = ("row", "column", "conv")
FORMATS = ("v2", "v3")


def default_conv_kernel(grid: int) -> int:
    """The release's 11 at a 32 x 32 grid, scaled to about a third of the grid, odd, at least 3."""
    if grid >= 32:
        return 11
    return max(3, 2 * round(11 * grid / 32 / 2) + 1)


def layer_mask_kinds(num_layers: int) -> tuple[str, ...]:
    """Mask kind per layer: column when (i - 1) % 4 == 0, conv for the last layer, row otherwise.

    The column test comes first, as in the release: at 24 layers columns are 1, 5, ..., 21 and
    layer 23 is conv; a depth whose last layer is a column layer has no conv layer.
    """
    kinds = []
    for i in range(num_layers):
        if (i - 1) % 4 == 0:
            kinds.append("column")
        elif i == num_layers - 1:
            kinds.append("conv")
        else:
            kinds.append("row")
    return tuple(kinds)


def _positions(
    text_seq_length: int, grid: int, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    seq = text_seq_length + grid * grid
    index = torch.arange(seq, device=device)
    return index[:, None], index[None, :]  # query, key


def _combine(
    image_rule: torch.Tensor, query: torch.Tensor, key: torch.Tensor, text_seq_length: int
) -> torch.Tensor:
    # Causal everywhere; text keys are always visible, image keys only where the rule allows.
    return (key <= query) & ((key < text_seq_length) | image_rule)


def row_mask(text_seq_length: int, grid: int, device: torch.device | str | None = None) -> torch.Tensor:
    query, key = _positions(text_seq_length, grid, device)
    return _combine(query - key <= grid, query, key, text_seq_length)


def column_mask(text_seq_length: int, grid: int, device: torch.device | str | None = None) -> torch.Tensor:
    query, key = _positions(text_seq_length, grid, device)
    return _combine((query - key) % grid == 0, query, key, text_seq_length)


def conv_mask(
    text_seq_length: int,
    grid: int,
    kernel: int = 11,
    wrap: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Causal `kernel x kernel` neighbourhood; `wrap=True` is format v2, `False` (clamp) is v3."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"conv kernel must be a positive odd number, got {kernel}")
    query, key = _positions(text_seq_length, grid, device)
    # Cell coordinates; text positions get meaningless values that `_combine` never uses.
    cell_q, cell_k = (query - text_seq_length).clamp(min=0), (key - text_seq_length).clamp(min=0)
    drow = (cell_q // grid - cell_k // grid).abs()
    dcol = (cell_q % grid - cell_k % grid).abs()
    if wrap:
        drow = torch.minimum(drow, grid - drow)
        dcol = torch.minimum(dcol, grid - dcol)
    shift = kernel // 2
    return _combine((drow <= shift) & (dcol <= shift), query, key, text_seq_length)


def build_mask(
    kind: str,
    text_seq_length: int,
    grid: int,
    format: str = "v3",
    conv_kernel: int = 11,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The mask of one kind ("row", "column" or "conv") for a format ("v2" or "v3")."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if kind == "row":
        return row_mask(text_seq_length, grid, device)
    if kind == "column":
        return column_mask(text_seq_length, grid, device)
    if kind == "conv":
        return conv_mask(text_seq_length, grid, conv_kernel, wrap=format == "v2", device=device)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
