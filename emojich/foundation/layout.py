"""Where the image stages keep their images, and what each shard member holds.

Each of scrape, prepare and upscale writes its images as tar shards (see `emojich.foundation.shards`) in
`<stage folder>/images/`, named after the stage, one member per image and kind; its manifest
(CSV) carries one row per image with the sha256 of each member. Later stages look images up
by id, so this file is the one place the names live.
"""

IMAGES_DIR = "images"

RAW_PREFIX = "raw"
PREPARED_PREFIX = "prepared"
UPSCALED_PREFIX = "upscaled"

RAW_KIND = "png"  # the image as served (scrape), RGBA PNG
RGB_KIND = "rgb.png"  # RGB, pixels with alpha below the threshold made white
RGBA_KIND = "rgba.png"  # the normalised RGBA image (prepare only)
MASK_KIND = "mask.png"  # binary alpha as an L image: 255 where alpha >= threshold, else 0


def sequence_of(image_id: str) -> str | None:
    """The emoji sequence of an `entry_id` ('twemoji-1f44b-1f3fb' -> '👋🏻'), or None for other ids."""
    _, _, hexes = image_id.partition("-")
    try:
        return "".join(chr(int(part, 16)) for part in hexes.split("-")) if hexes else None
    except ValueError:
        return None
