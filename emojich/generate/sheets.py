"""Contact sheets: one row of thumbnails per prompt, best first, labelled with what the prompt is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emojich.foundation.storage import write_bytes_atomic
from emojich.generate.cell import CellRun
from emojich.generate.evaluation import Fidelity
from emojich.generate.reading import Reading
from emojich.generate.rendering import png_bytes
from emojich.text.normalise import normalise_caption


@cache
def sheet_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's package data: has Cyrillic and is the same on every machine."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    title: str = "",
    thumb: int = 128,
    columns: int | None = None,
    pad: int = 4,
    font_size: int = 16,
) -> Image.Image:
    """One row of thumbnails per prompt, best first, with the prompt written under its row."""
    columns = columns or max((len(images) for _, images in rows), default=1)
    font = sheet_font(font_size)
    line = font_size + 2 * pad
    width = columns * (thumb + pad) + pad
    top = line if title else 0
    height = top + len(rows) * (thumb + pad + line) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), _fit(title, font, width - 2 * pad), fill="black", font=font)
    for row, (prompt, images) in enumerate(rows):
        y = top + pad + row * (thumb + pad + line)
        for column, pixels in enumerate(images[:columns]):
            tile = Image.fromarray(pixels).resize((thumb, thumb), Image.Resampling.BOX)
            sheet.paste(tile, (pad + column * (thumb + pad), y))
        draw.text((pad, y + thumb + pad), _fit(prompt, font, width - 2 * pad), fill="black", font=font)
    return sheet


def write_sheet(dest: Path, title: str, rows: Sequence[tuple[str, Sequence[np.ndarray]]], thumb: int) -> None:
    write_bytes_atomic(dest, png_bytes(np.asarray(contact_sheet(rows, title, thumb))))


def sheet_rows(
    run: CellRun,
    kept: Sequence[Sequence[np.ndarray]],
    fidelity: Fidelity | None,
    keep: int,
    readings: Mapping[str, Reading | None] | None = None,
    groups: Mapping[str, str] | None = None,
) -> list:
    """(label, images) per prompt; the label says what kind of prompt it is and how each kept
    image ranked its prompt's caption, so a reader tells learnt emoji from zero-shot probes."""
    rows = []
    for index, (result, images) in enumerate(zip(run.prompts, kept, strict=True)):
        label = result.check.text
        if fidelity is not None:
            kind = fidelity.kinds[index]
            group = (groups or {}).get(normalise_caption(result.check.text))
            label += f" · {kind}" if kind != "zero-shot" or group is None else f" · new ({group})"
            ranks = fidelity.ranks[index]
            if ranks:
                label += " · ranks " + " ".join(str(ranks[int(i)]) for i in result.order[:keep])
            reading = (readings or {}).get(result.check.text)
            if fidelity.kinds[index] == "zero-shot" and reading is not None:
                label += f" · понял как: {reading.text()}"
        rows.append((label, images))
    return rows
