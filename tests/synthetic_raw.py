"""Synthetic raw folders (images + captions.csv) in the layout the scrape stage writes.

Images are emoji-like: flat-coloured shapes with anti-aliased edges on a transparent canvas,
drawn at 4x and reduced, the way vector emoji are rendered.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emojich.data.catalogue import CatalogueRow, write_catalogue
from emojich.storage import sha256_bytes

CAPTIONS = ["улыбающееся лицо", "кот", "красное сердце", "ракета", "пицца", "ёлка", "огонь", "луна"]


def emoji_rgba(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    big = size * 4
    canvas = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)

    def colour() -> tuple[int, int, int, int]:
        return (*(int(v) for v in rng.integers(0, 256, 3)), 255)

    margin = int(big * rng.uniform(0.04, 0.12))
    draw.ellipse(
        (margin, margin, big - margin, big - margin),
        fill=colour(),
        outline=(40, 30, 20, 255),
        width=max(1, big // 40),
    )
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = (int(v) for v in rng.integers(big // 5, big * 3 // 5, 2))
        extent = int(rng.integers(big // 12, big // 4))
        shape = draw.rectangle if rng.random() < 0.4 else draw.ellipse
        shape((x0, y0, x0 + extent, y0 + extent), fill=colour())
    draw.line(
        (big // 4, big * 2 // 3, big * 3 // 4, big * 2 // 3), fill=(20, 20, 20, 255), width=max(2, big // 30)
    )
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _row(raw_dir: Path, row_id: str, caption: str, style: str, data: bytes, ext: str = "png") -> CatalogueRow:
    rel = f"images/{row_id}.{ext}"
    path = raw_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return CatalogueRow(
        id=row_id,
        caption=caption,
        image_path=rel,
        source=f"synthetic==0:{row_id}",
        style=style,
        sha256=sha256_bytes(data),
        licence="CC0-1.0",
    )


def mode_samples(size: int = 32) -> dict[str, tuple[bytes, str, np.ndarray]]:
    """One file per stored mode: name -> (bytes, extension, expected RGBA array)."""
    rng = np.random.default_rng(7)
    samples: dict[str, tuple[bytes, str, np.ndarray]] = {}

    # Palette with a tRNS chunk: index 0 fully transparent, index 1 half transparent.
    indices = rng.integers(0, 4, (size, size)).astype(np.uint8)
    palette = np.array([[9, 9, 9], [200, 10, 10], [10, 200, 10], [10, 10, 200]], dtype=np.uint8)
    alphas = np.array([0, 100, 255, 255], dtype=np.uint8)
    p_image = Image.fromarray(indices, mode="P")
    p_image.putpalette(palette.flatten().tolist())
    expected = np.concatenate([palette[indices], alphas[indices][..., None]], axis=2)
    samples["P-tRNS"] = (png_bytes(p_image, transparency=bytes(alphas)), "png", expected)

    grey = rng.integers(0, 256, (size, size)).astype(np.uint8)
    alpha = rng.integers(0, 256, (size, size)).astype(np.uint8)
    la = Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA")
    samples["LA"] = (png_bytes(la), "png", np.stack([grey, grey, grey, alpha], axis=2))

    opaque = np.full((size, size), 255, dtype=np.uint8)
    samples["L"] = (
        png_bytes(Image.fromarray(grey, mode="L")),
        "png",
        np.stack([grey, grey, grey, opaque], 2),
    )

    # 16-bit greyscale: 65535 must map to 255, not clip (Pillow's own convert would make it white).
    wide = (grey.astype(np.uint16) * 257).astype(np.uint16)
    samples["I;16"] = (png_bytes(Image.fromarray(wide)), "png", np.stack([grey, grey, grey, opaque], 2))

    rgb = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    samples["RGB"] = (png_bytes(Image.fromarray(rgb, mode="RGB")), "png", np.dstack([rgb, opaque]))

    # CMYK has no PNG form; TIFF keeps it lossless. Expected colour is Pillow's own CMYK -> RGB.
    cmyk = Image.fromarray(rng.integers(0, 256, (size, size, 4)).astype(np.uint8), mode="CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    samples["CMYK"] = (buffer.getvalue(), "tiff", np.dstack([np.asarray(cmyk.convert("RGB")), opaque]))

    rgba = np.asarray(emoji_rgba(3, size))
    samples["RGBA"] = (png_bytes(Image.fromarray(rgba, mode="RGBA")), "png", rgba)
    return samples


def make_raw(
    raw_dir: Path, small: int = 24, large: int = 96, per_style: int = 8, broken: bool = True
) -> list[CatalogueRow]:
    """A small raw folder: twemoji-like small images, openmoji-like large ones, every stored mode,
    plus (if `broken`) one corrupt and one truncated file. Returns the catalogue rows written."""
    raw_dir = Path(raw_dir)
    rows = []
    for index in range(per_style):
        caption = CAPTIONS[index % len(CAPTIONS)]
        for style, size in (("twemoji", small), ("openmoji", large)):
            data = png_bytes(emoji_rgba(index * 2 + (style == "openmoji"), size))
            rows.append(_row(raw_dir, f"{style}-{index:04d}", caption, style, data))
    for name, (data, ext, _) in mode_samples().items():
        row_id = "mode-" + name.lower().replace(";", "").replace("-", "")
        rows.append(_row(raw_dir, row_id, f"режим {name}", "modes", data, ext))
    if broken:
        rows.append(
            _row(raw_dir, "broken-corrupt", "сломанный файл", "broken", b"\x89PNG\r\n\x1a\nnot a png")
        )
        whole = png_bytes(emoji_rgba(99, large))
        rows.append(_row(raw_dir, "broken-truncated", "обрезанный файл", "broken", whole[: len(whole) // 2]))
    write_catalogue(rows, raw_dir)
    return rows


def make_bulk_raw(
    raw_dir: Path, small_count: int, large_count: int, small: int = 72, large: int = 256
) -> int:
    """A catalogue the size of the offline one (for timing): `small_count` small + `large_count` large."""
    raw_dir = Path(raw_dir)
    rows = []
    for style, size, count in (("twemoji", small, small_count), ("openmoji", large, large_count)):
        for index in range(count):
            data = png_bytes(emoji_rgba(index + (0 if style == "twemoji" else 10**6), size))
            rows.append(_row(raw_dir, f"{style}-{index:05d}", f"эмодзи номер {index}", style, data))
    write_catalogue(rows, raw_dir)
    return len(rows)
