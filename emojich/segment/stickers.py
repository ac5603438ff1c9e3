"""Telegram stickers: 512 px RGBA images within 512 KB, their sidecars, and sticker packs.

Telegram's rules for static stickers: PNG or WEBP, one side exactly 512 px and the other at
most 512, at most 512 KB, with transparency. `check_telegram_sticker` tests exactly these, and
every sticker written here is re-encoded until it passes. A set's thumbnail is 100 x 100 and at
most 128 KB, in the format of the set's stickers (`make_thumbnail`, `thumbnail_problems`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from emojich.foundation.storage import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from torch import nn

    from emojich.segment.masking import MaskResult

STICKER_SIDE = 512
MAX_STICKER_BYTES = 512 * 1024
THUMBNAIL_SIDE = 100
MAX_THUMBNAIL_BYTES = 128 * 1024
FORMATS = ("webp", "png")
# The `made_by` of the sidecar of a sticker cut by `emojich sticker` (the bot's says emojich-bot;
# the pipeline's stickers stage writes none).
CLI_MAKER = "emojich sticker"

# Encodings tried in order until one fits; lossless first, as most emojis are flat colour and
# fit easily, then progressively lossier ones for noisy generations.
_WEBP_LOSSY_QUALITIES = (90, 80, 70, 60, 50, 40, 30, 20, 10)
_PNG_PALETTE_SIZES = (256, 128, 64, 32, 16)


def unblend_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Remove the white a semi-transparent edge pixel was blended with: c = (p - 255 (1 - a)) / a.

    Without this the anti-aliased outline keeps a white fringe that shows on dark chat themes.
    """
    a = alpha.astype(np.float32)[..., None] / 255
    colour = (rgb.astype(np.float32) - 255 * (1 - a)) / np.maximum(a, 1e-3)
    edge = (alpha > 0) & (alpha < 255)
    out = rgb.copy()
    out[edge] = np.clip(np.rint(colour[edge]), 0, 255).astype(np.uint8)
    return out


def make_sticker(
    rgb: np.ndarray, alpha: np.ndarray, side: int = STICKER_SIDE, decontaminate: bool = True
) -> Image.Image:
    """RGBA `side` x `side`: the longer side fitted to `side` exactly (LANCZOS), centred, padded transparent."""
    if rgb.shape[:2] != alpha.shape:
        raise ValueError(f"image {rgb.shape} and alpha {alpha.shape} differ in size")
    if decontaminate:
        rgb = unblend_white(rgb, alpha)
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    height, width = alpha.shape
    scale = side / max(height, width)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    if fitted != image.size:
        # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed colour into edges.
        image = image.resize(fitted, Image.Resampling.LANCZOS)
    if image.size != (side, side):
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    if image.getextrema()[3][0] == 255:
        # Encoders drop an alpha channel that is opaque everywhere (WEBP always, palette PNG too),
        # and Telegram requires one; a single corner pixel at 254 keeps it, invisibly.
        image.putpixel((0, 0), (*image.getpixel((0, 0))[:3], 254))
    return image


@dataclasses.dataclass
class Encoded:
    data: bytes
    format: str  # webp | png
    encoding: str  # e.g. webp-lossless, webp-q80, png, png-64-colours


def _candidates(image: Image.Image, fmt: str):
    if fmt == "webp":
        # Method 0, the fastest lossless effort: 15 ms a 512 px sticker against 129 ms at method 4,
        # for files of ~125 KB instead of ~80 KB, a quarter of Telegram's limit.
        yield "webp-lossless", {"format": "WEBP", "lossless": True, "quality": 80, "method": 0}
        for quality in _WEBP_LOSSY_QUALITIES:
            yield f"webp-q{quality}", {"format": "WEBP", "quality": quality, "method": 4}
    elif fmt == "png":
        yield "png", {"format": "PNG", "compress_level": 9}
        for colours in _PNG_PALETTE_SIZES:
            yield f"png-{colours}-colours", {"format": "PNG", "compress_level": 9, "palette": colours}
    else:
        raise ValueError(f"sticker format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def encode_sticker(image: Image.Image, fmt: str = "webp", max_bytes: int = MAX_STICKER_BYTES) -> Encoded:
    """The first encoding in the lossless-to-lossy ladder that is at most `max_bytes`."""
    sizes = []
    for name, options in _candidates(image, fmt):
        options = dict(options)
        palette = options.pop("palette", None)
        # FASTOCTREE is the quantizer Pillow offers for RGBA; it keeps alpha in the palette.
        source = image.quantize(palette, method=Image.Quantize.FASTOCTREE) if palette else image
        buffer = io.BytesIO()
        source.save(buffer, **options)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            return Encoded(data, fmt, name)
        sizes.append(f"{name}={len(data)}")
    raise ValueError(f"no {fmt} encoding fits in {max_bytes} bytes ({', '.join(sizes)})")


def _image_facts(data: bytes) -> tuple[str | None, tuple[int, int], str, dict] | str:
    """(format, size, mode, info) of an encoded image, or why it cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.size, image.mode, dict(image.info)
    except Exception as error:  # Pillow raises several types for unreadable files
        return f"unreadable image: {error}"


def _has_alpha(mode: str, info: dict) -> bool:
    return mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info


def sticker_problems(data: bytes) -> list[str]:
    """Every way an encoded file breaks Telegram's static sticker rules; empty when it is usable."""
    problems = []
    if len(data) > MAX_STICKER_BYTES:
        problems.append(f"file is {len(data)} bytes, over {MAX_STICKER_BYTES}")
    facts = _image_facts(data)
    if isinstance(facts, str):
        return [*problems, facts]
    fmt, (width, height), mode, info = facts
    if fmt not in ("PNG", "WEBP"):
        problems.append(f"format is {fmt}, not PNG or WEBP")
    if STICKER_SIDE not in (width, height):
        problems.append(f"size {width}x{height}: no side is exactly {STICKER_SIDE}")
    if max(width, height) > STICKER_SIDE:
        problems.append(f"size {width}x{height}: a side exceeds {STICKER_SIDE}")
    if not _has_alpha(mode, info):
        problems.append(f"mode {mode} has no alpha channel")
    return problems


def check_telegram_sticker(path: str | os.PathLike[str]) -> list[str]:
    """Every way the file breaks Telegram's static sticker rules; empty when it is usable."""
    return sticker_problems(Path(path).read_bytes())


def thumbnail_problems(data: bytes) -> list[str]:
    """Every way an encoded file breaks the rules for a static set's thumbnail (100 x 100, <= 128 KB)."""
    problems = []
    if len(data) > MAX_THUMBNAIL_BYTES:
        problems.append(f"thumbnail is {len(data)} bytes, over {MAX_THUMBNAIL_BYTES}")
    facts = _image_facts(data)
    if isinstance(facts, str):
        return [*problems, facts]
    fmt, size, _, _ = facts
    if fmt not in ("PNG", "WEBP"):
        problems.append(f"thumbnail format is {fmt}, not PNG or WEBP")
    if size != (THUMBNAIL_SIDE, THUMBNAIL_SIDE):
        problems.append(f"thumbnail size {size[0]}x{size[1]}, not {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE}")
    return problems


def make_thumbnail(sticker: Image.Image, fmt: str = "webp") -> Encoded:
    """A set thumbnail from a sticker: 100 x 100, transparent padding kept, same format as the set."""
    image = sticker.convert("RGBA")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    if image.size != (THUMBNAIL_SIDE, THUMBNAIL_SIDE):
        canvas = Image.new("RGBA", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (0, 0, 0, 0))
        canvas.paste(image, ((THUMBNAIL_SIDE - image.width) // 2, (THUMBNAIL_SIDE - image.height) // 2))
        image = canvas
    return encode_sticker(image, fmt, MAX_THUMBNAIL_BYTES)


def write_sticker(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray,
    max_bytes: int = MAX_STICKER_BYTES,
    side: int = STICKER_SIDE,
) -> Encoded:
    """Make, encode (format from the suffix) and atomically write one sticker."""
    fmt = Path(path).suffix.lower().lstrip(".")
    encoded = encode_sticker(make_sticker(rgb, alpha, side), fmt, max_bytes)
    write_bytes_atomic(path, encoded.data)
    return encoded


def sticker_sidecar(
    generation: dict | None, method: str, confidence: float | None, encoded: Encoded, **extra: object
) -> dict:
    """The generation sidecar (prompt, seed, sampling, checkpoint hashes) plus how the sticker was cut."""
    return {
        **(generation or {}),
        **extra,
        "mask_method": method,
        "confidence": None if confidence is None else round(float(confidence), 6),
        "sticker_sha256": sha256_bytes(encoded.data),
        "sticker_format": encoded.format,
        "sticker_encoding": encoded.encoding,
    }


# -- packs ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class PackEntry:
    file: str  # path of the sticker relative to the pack's sticker folder
    prompt: str
    score: float | None
    method: str
    confidence: float | None
    sha256: str


def checkerboard(width: int, height: int, square: int = 8) -> Image.Image:
    """Light grey / white checks, the usual backdrop that makes transparency visible."""
    ys, xs = np.indices((height, width))
    light = ((ys // square + xs // square) % 2).astype(bool)
    grey = np.where(light, 255, 204).astype(np.uint8)
    return Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA")


def preview_sheet(images: Sequence[Image.Image], cell: int = 128, columns: int = 8) -> Image.Image:
    """All stickers as `cell`-px thumbnails in a grid on a checkerboard (RGB)."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    sheet = checkerboard(columns * cell, rows * cell)
    for index, image in enumerate(images):
        thumb = image.convert("RGBA")
        thumb.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        row, column = divmod(index, columns)
        offset = (column * cell + (cell - thumb.width) // 2, row * cell + (cell - thumb.height) // 2)
        sheet.alpha_composite(thumb, offset)
    return sheet.convert("RGB")


def write_pack(
    entries: Sequence[PackEntry],
    stickers_dir: str | os.PathLike[str],
    pack_dir: str | os.PathLike[str],
    cell: int = 128,
    columns: int = 8,
) -> dict:
    """pack_dir/manifest.json and pack_dir/preview.png for stickers stored under `stickers_dir`."""
    stickers_dir, pack_dir = Path(stickers_dir), Path(pack_dir)
    entries = sorted(entries, key=lambda entry: entry.file)
    manifest = {
        "stickers_dir": os.path.relpath(stickers_dir, pack_dir),
        "count": len(entries),
        "stickers": [dataclasses.asdict(entry) for entry in entries],
    }
    write_json_atomic(pack_dir / "manifest.json", manifest)
    images = []
    for entry in entries:
        with Image.open(stickers_dir / entry.file) as image:
            images.append(image.convert("RGBA"))
    buffer = io.BytesIO()
    preview_sheet(images, cell, columns).save(buffer, format="PNG", compress_level=9)
    write_bytes_atomic(pack_dir / "preview.png", buffer.getvalue())
    return manifest


# -- one image, from the command line -------------------------------------------------------------


@dataclasses.dataclass
class StickerReport:
    method: str
    confidence: float | None
    encoding: str
    problems: list[str]
    note: str = ""  # why the method differs from the one asked for, if it does


def cut_sticker_file(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    method: str = "auto",
    model: nn.Module | None = None,
    size: int = 0,
    threshold: float = 0.99,
    **extra: object,
) -> tuple[MaskResult, Encoded]:
    """Cut the background of one image file with a loaded U-Net (or none: the contour method) and
    write the sticker (PNG or WEBP by `dest`'s suffix). With a generation sidecar beside `source`,
    a sticker sidecar is written beside `dest`, with `extra` in it."""
    from emojich.segment.masking import segment_images

    source, dest = Path(source), Path(dest)
    with Image.open(source) as image:
        rgb = np.asarray(image.convert("RGB"))
    result = segment_images([rgb], method, model, size, threshold)[0]
    encoded = write_sticker(dest, rgb, result.alpha)
    generation_path = source.with_suffix(".json")
    if generation_path.is_file():
        generation = json.loads(generation_path.read_text(encoding="utf-8"))
        sidecar = sticker_sidecar(
            generation, result.method, result.confidence, encoded, source_sha256=sha256_file(source), **extra
        )
        write_json_atomic(dest.with_suffix(".json"), sidecar)
    return result, encoded


def sticker_from_file(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    method: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    preset_name: str = "demo",
    threshold: float = 0.99,
) -> StickerReport:
    """Cut the background of one image and write it as a sticker (PNG or WEBP by `dest`'s suffix).

    With a generation sidecar (`source` with `.json`) beside the image, a sidecar is written
    beside the sticker too.
    """
    model, size, note = None, 0, ""
    # What `emojich lineage` follows from the sticker: who cut it, from which file, with which U-Net.
    extra: dict[str, object] = {"made_by": CLI_MAKER, "source_image": str(Path(source).resolve())}
    if method != "contour" and weights:
        from emojich.segment.unet import load_unet

        model, config = load_unet(weights, preset_name)
        size = config.size
        extra["unet_sha256"] = sha256_file(weights)
    elif method == "auto":
        note = "no U-Net weights given: using the contour method"
    result, encoded = cut_sticker_file(source, dest, method, model, size, threshold, **extra)
    if method == "auto" and result.method == "contour" and model is not None:
        note = f"U-Net confidence {result.confidence:.4f} is below {threshold}: using the contour method"
    return StickerReport(
        result.method, result.confidence, encoded.encoding, check_telegram_sticker(dest), note
    )
