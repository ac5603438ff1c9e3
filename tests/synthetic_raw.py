"""Synthetic raw folders in the layout the scrape stage writes: `images/raw-NNNNN.tar` shards with
one `<id>.png` member per row, and `captions.csv` whose `image_path` names that member.

Images are emoji-like: flat-coloured shapes with anti-aliased edges on a transparent canvas,
drawn at 4x and reduced, the way vector emoji are rendered.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emojich.data.catalogue import CatalogueRow, write_catalogue
from emojich.foundation.layout import IMAGES_DIR, RAW_KIND, RAW_PREFIX
from emojich.foundation.shards import DEFAULT_MAX_ITEMS, member_ref, write_shards
from emojich.foundation.storage import sha256_bytes

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


# (id, caption, style, file bytes) of one raw image.
RawImage = tuple[str, str, str, bytes]


def write_raw(
    raw_dir: Path, images: list[RawImage], max_items: int = DEFAULT_MAX_ITEMS
) -> list[CatalogueRow]:
    """Shard the images and write the catalogue that lists them; returns its rows."""
    raw_dir = Path(raw_dir)
    located = write_shards(
        raw_dir / IMAGES_DIR,
        RAW_PREFIX,
        ((row_id, {RAW_KIND: data}) for row_id, _, _, data in images),
        max_items=max_items,
    )
    rows = [
        CatalogueRow(
            id=row_id,
            caption=caption,
            image_path=member_ref(located[row_id].relative_to(raw_dir), row_id, RAW_KIND),
            source=f"synthetic==0:{row_id}",
            style=style,
            sha256=sha256_bytes(data),
            licence="CC0-1.0",
        )
        for row_id, caption, style, data in images
    ]
    write_catalogue(rows, raw_dir)
    return rows


def mode_samples(size: int = 32) -> dict[str, tuple[bytes, np.ndarray]]:
    """One file per stored mode: name -> (bytes, expected RGBA array)."""
    rng = np.random.default_rng(7)
    samples: dict[str, tuple[bytes, np.ndarray]] = {}

    # Palette with a tRNS chunk: index 0 fully transparent, index 1 half transparent.
    indices = rng.integers(0, 4, (size, size)).astype(np.uint8)
    palette = np.array([[9, 9, 9], [200, 10, 10], [10, 200, 10], [10, 10, 200]], dtype=np.uint8)
    alphas = np.array([0, 100, 255, 255], dtype=np.uint8)
    p_image = Image.fromarray(indices, mode="P")
    p_image.putpalette(palette.flatten().tolist())
    expected = np.concatenate([palette[indices], alphas[indices][..., None]], axis=2)
    samples["P-tRNS"] = (png_bytes(p_image, transparency=bytes(alphas)), expected)

    grey = rng.integers(0, 256, (size, size)).astype(np.uint8)
    alpha = rng.integers(0, 256, (size, size)).astype(np.uint8)
    la = Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA")
    samples["LA"] = (png_bytes(la), np.stack([grey, grey, grey, alpha], axis=2))

    opaque = np.full((size, size), 255, dtype=np.uint8)
    samples["L"] = (
        png_bytes(Image.fromarray(grey, mode="L")),
        np.stack([grey, grey, grey, opaque], 2),
    )

    # 16-bit greyscale: 65535 must map to 255, not clip (Pillow's own convert would make it white).
    wide = (grey.astype(np.uint16) * 257).astype(np.uint16)
    samples["I;16"] = (png_bytes(Image.fromarray(wide)), np.stack([grey, grey, grey, opaque], 2))

    rgb = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    samples["RGB"] = (png_bytes(Image.fromarray(rgb, mode="RGB")), np.dstack([rgb, opaque]))

    # CMYK has no PNG form; TIFF keeps it lossless. Expected colour is Pillow's own CMYK -> RGB.
    cmyk = Image.fromarray(rng.integers(0, 256, (size, size, 4)).astype(np.uint8), mode="CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    samples["CMYK"] = (buffer.getvalue(), np.dstack([np.asarray(cmyk.convert("RGB")), opaque]))

    rgba = np.asarray(emoji_rgba(3, size))
    samples["RGBA"] = (png_bytes(Image.fromarray(rgba, mode="RGBA")), rgba)
    return samples


def make_raw(
    raw_dir: Path, small: int = 24, large: int = 96, per_style: int = 8, broken: bool = True
) -> list[CatalogueRow]:
    """A small raw folder: twemoji-like small images, openmoji-like large ones, every stored mode,
    plus (if `broken`) one corrupt and one truncated file. Returns the catalogue rows written."""
    images: list[RawImage] = []
    for index in range(per_style):
        caption = CAPTIONS[index % len(CAPTIONS)]
        for style, size in (("twemoji", small), ("openmoji", large)):
            data = png_bytes(emoji_rgba(index * 2 + (style == "openmoji"), size))
            images.append((f"{style}-{index:04d}", caption, style, data))
    # Stored under the `png` kind whatever the format (one is TIFF): decoding goes by content.
    for name, (data, _) in mode_samples().items():
        images.append(
            ("mode-" + name.lower().replace(";", "").replace("-", ""), f"режим {name}", "modes", data)
        )
    if broken:
        images.append(("broken-corrupt", "сломанный файл", "broken", b"\x89PNG\r\n\x1a\nnot a png"))
        whole = png_bytes(emoji_rgba(99, large))
        images.append(("broken-truncated", "обрезанный файл", "broken", whole[: len(whole) // 2]))
    # Several small shards, so readers are exercised across shard boundaries.
    return write_raw(raw_dir, images, max_items=8)


def make_bulk_raw(
    raw_dir: Path, small_count: int, large_count: int, small: int = 72, large: int = 256
) -> int:
    """A catalogue the size of the offline one (for timing): `small_count` small + `large_count` large."""
    images: list[RawImage] = []
    for style, size, count in (("twemoji", small, small_count), ("openmoji", large, large_count)):
        for index in range(count):
            data = png_bytes(emoji_rgba(index + (0 if style == "twemoji" else 10**6), size))
            images.append((f"{style}-{index:05d}", f"эмодзи номер {index}", style, data))
    return len(write_raw(raw_dir, images))
