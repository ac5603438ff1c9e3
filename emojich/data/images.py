"""Image normalisation for training: any readable file -> RGBA -> RGB on white plus a binary mask.

Everything here is a pure function of bytes or arrays, so the prepare stage can run it in worker
processes and tests can call it without touching the disk. Each image is handled as whole numpy
arrays; there are no per-pixel Python loops.

The prepared manifest (`data/prepared/manifest.csv`) is defined here too, since every later stage
reads it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from emojich.foundation.storage import write_csv_atomic

# The report's rule: pixels with alpha below this become white.
DEFAULT_ALPHA_THRESHOLD = 128
# Reject before decoding anything larger (4096 x 4096): a hostile or broken header must not
# allocate gigabytes.
DEFAULT_MAX_PIXELS = 1 << 24
# zlib level for our own PNGs. Fixed so the bytes (and so DVC hashes) never depend on a default;
# level 1 encodes about twice as fast as 6 for files only ~15% larger, and encoding ~16,000 PNGs
# is most of the prepare stage's time.
PNG_COMPRESS_LEVEL = 1

# Modes Pillow converts to RGBA faithfully, honouring a tRNS transparency entry where present.
_DIRECT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa"}
# 16- and 32-bit integer greyscale: Pillow's own conversion to 8 bits clips instead of scaling,
# which turns almost every 16-bit image white, so these are rescaled here.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class RejectedImage(Exception):
    """An image that cannot be used; `reason` is a short stable label counted in metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_rgba(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an (H, W, 4) uint8 RGBA array, whatever the stored mode.

    Raises `RejectedImage` with reason `unreadable`, `truncated`, `too-large`, `empty` or
    `unsupported-mode`; never anything else for bad input.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) on moderately large images; our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise RejectedImage("too-large", f"{width}x{height}")
            if width == 0 or height == 0:
                raise RejectedImage("empty", f"{width}x{height}")
            image.load()
    except RejectedImage:
        raise
    except UnidentifiedImageError as error:
        # Pillow's message embeds the buffer's memory address; keep details reproducible.
        raise RejectedImage("unreadable", "not a recognised image format") from error
    except Image.DecompressionBombError as error:
        raise RejectedImage("too-large", str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports a short read as OSError("image file is truncated ...") and broken
        # chunks as SyntaxError/ValueError, depending on the format.
        reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise RejectedImage(reason, str(error)) from error
    return to_rgba(image)


def to_rgba(image: Image.Image) -> np.ndarray:
    """Normalise a loaded Pillow image of any common mode to an (H, W, 4) uint8 RGBA array."""
    mode = image.mode
    if mode in _DIRECT_MODES:
        return np.asarray(image.convert("RGBA"))
    if mode in _WIDE_GREY_MODES:
        # Scale the 16-bit range to 8 bits with rounding (65535 -> 255); 32-bit "I" images come
        # from 16-bit PNGs in practice, so they are read on the same scale and clipped.
        grey = np.asarray(image, dtype=np.int64)
        grey8 = np.clip((grey + 128) // 257, 0, 255).astype(np.uint8)
        return grey_to_rgba(grey8)
    if mode == "CMYK":
        return np.asarray(image.convert("RGB").convert("RGBA"))
    if mode == "F":  # float images have no agreed range
        raise RejectedImage("unsupported-mode", mode)
    try:  # YCbCr, LAB, HSV and anything newer: let Pillow go through RGB
        return np.asarray(image.convert("RGB").convert("RGBA"))
    except (ValueError, OSError) as error:
        raise RejectedImage("unsupported-mode", mode) from error


def grey_to_rgba(grey: np.ndarray) -> np.ndarray:
    rgba = np.empty((*grey.shape, 4), dtype=np.uint8)
    rgba[..., :3] = grey[..., None]
    rgba[..., 3] = 255
    return rgba


def alpha_mask(rgba: np.ndarray, threshold: int = DEFAULT_ALPHA_THRESHOLD) -> np.ndarray:
    """Binary foreground mask (uint8, 0 or 255): alpha >= threshold, the complement of what turns white."""
    return np.where(rgba[..., 3] >= threshold, np.uint8(255), np.uint8(0))


def flatten_on_white(rgba: np.ndarray, threshold: int = DEFAULT_ALPHA_THRESHOLD) -> np.ndarray:
    """RGB with every pixel whose alpha is below `threshold` set to pure white.

    This is the report's rule, not alpha compositing: pixels at or above the threshold keep their
    stored colour unchanged. Encoders often leave arbitrary colours under alpha 0, which is why
    those pixels must be overwritten rather than blended.
    """
    return np.where(rgba[..., 3:] < threshold, np.uint8(255), rgba[..., :3])


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes with no metadata (no time, no text chunks), so equal pixels give equal bytes."""
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def decode_png_array(data: bytes, mode: str) -> np.ndarray:
    """Decode one of our own PNGs to a uint8 array in `mode` ("RGB", "RGBA" or "L")."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    rgb_png: bytes
    rgba_png: bytes
    mask_png: bytes
    width: int
    height: int


def prepare_image(
    data: bytes, threshold: int = DEFAULT_ALPHA_THRESHOLD, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreparedImage:
    """Raw file bytes -> the three PNGs the prepare stage stores. Raises `RejectedImage`."""
    rgba = decode_rgba(data, max_pixels)
    mask = alpha_mask(rgba, threshold)
    if not mask.any():
        # Fully transparent: it would become a blank white square with an empty mask.
        raise RejectedImage("blank", "no pixel reaches the alpha threshold")
    height, width = mask.shape
    return PreparedImage(
        rgb_png=encode_png(flatten_on_white(rgba, threshold)),
        rgba_png=encode_png(rgba),
        mask_png=encode_png(mask),
        width=width,
        height=height,
    )


# --- The prepared manifest -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class PreparedRow:
    id: str
    caption: str
    split: str  # "train" or "val"; every image of one caption shares it
    style: str
    source: str
    licence: str
    raw_sha256: str  # the catalogue's hash of the raw image
    rgb_sha256: str  # of the `<id>.rgb.png` member of the prepared shards, and so on
    rgba_sha256: str
    mask_sha256: str
    width: int
    height: int


PREPARED_COLUMNS = tuple(f.name for f in dataclasses.fields(PreparedRow))


def write_prepared_manifest(rows: list[PreparedRow], path: str | Path) -> Path:
    write_csv_atomic(path, PREPARED_COLUMNS, (dataclasses.astuple(row) for row in sorted(rows)))
    return Path(path)


def read_prepared_manifest(path: str | Path) -> list[PreparedRow]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(PREPARED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for record in reader:
            fields = {name: record[name] for name in PREPARED_COLUMNS}
            fields["width"], fields["height"] = int(fields["width"]), int(fields["height"])
            rows.append(PreparedRow(**fields))
        return rows
