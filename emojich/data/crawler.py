"""Crawl a web emoji catalogue into `CatalogueRow`s and PNG shards under `raw_dir/images/`.

The crawl has three passes, each in a fixed order so that the output does not depend on
thread timing:

1. list pages (the start URLs and their `next_page` links), one after another: item links in
   the order they appear;
2. item pages, concurrently: a caption and the image elements on each;
3. images, concurrently: verified, converted to PNG where needed and kept in memory under an id
   made from the URL's hash.

Duplicates (same URL, or same PNG bytes) keep the first in that order. The images are then
written, in id order, as the shards `images/raw-00000.tar`, ... (see `catalogue.write_raw_images`).

Every problem is a counted, logged skip reason; only a bug or an interrupt stops the crawl. An
interrupted crawl leaves the previous shard set as it was (or none), never part of a new one,
and every fetched response is already in the on-disk HTTP cache (written atomically), so
running again resumes without downloading those again.

Selector syntax (params `scrape.web.selectors`), all CSS as understood by soupsieve:

- `item_link`: links on a list page to emoji pages (`href`).
- `next_page`: links on a list page to further list pages; empty means no pagination.
- `caption`: the element whose text is the caption; `CSS@attr` takes an attribute instead,
  e.g. `meta[property='og:title']@content`. Emoji and other symbols are dropped from it.
- `image`: image elements on an emoji page; the URL is the largest `srcset` candidate, else
  `data-srcset`, `data-src` or `data-original` (lazy loading), else `src` (or `content` for meta).
- `style`: `@attr` reads an attribute of the image element itself (e.g. `@data-vendor`); a CSS
  selector takes the text of the match nearest to the image (searched in the image's
  ancestors, innermost first); empty means the label "web".
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urldefrag, urljoin, urlsplit

from bs4 import BeautifulSoup, Tag
from PIL import Image, UnidentifiedImageError

from emojich.data.catalogue import CatalogueRow, normalise_caption, write_raw_images
from emojich.data.http import ClientConfig, FetchError, PoliteClient, Response, host_of, url_key
from emojich.foundation.progress import progress_bar
from emojich.foundation.storage import remove_stale_temporaries, sha256_bytes

log = logging.getLogger(__name__)

DEFAULT_STYLE = "web"
DEFAULT_LICENCE = "unknown: see the source page"
_ATTR_SUFFIX = re.compile(r"^(.*)@([A-Za-z_:][-\w:.]*)$", re.DOTALL)
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# Symbols, emoji modifiers, joiners and variation selectors: page titles often start with the
# emoji itself ("🪷 Лотос"), which is not part of the caption.
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Cs", "Co", "Mn"})
_SRCSET_CANDIDATE = re.compile(r"[\s,]*(\S+)([^,]*)")
_LAZY_ATTRIBUTES = ("data-src", "data-original", "src", "content")

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass
class Selectors:
    item_link: str
    next_page: str = ""
    caption: str = ""
    image: str = "img"
    style: str = ""


@dataclasses.dataclass
class WebConfig:
    start_urls: list[str]
    allowed_hosts: list[str]
    selectors: Selectors
    rate_limit_per_s: float = 2
    max_concurrency: int = 4
    timeout_s: float = 10
    max_retries: int = 4
    max_pages: int = 20000
    max_image_pixels: int = 4096 * 4096
    backoff_base_s: float = 0.5
    licence: str = DEFAULT_LICENCE


@dataclasses.dataclass(frozen=True)
class ImageRef:
    url: str
    caption: str
    style: str


@dataclasses.dataclass(frozen=True)
class FetchedImage:
    ref: ImageRef
    row_id: str
    png: bytes
    sha256: str


class Skip(Exception):
    """An item that is dropped for a counted reason (not a failure of the crawl)."""

    def __init__(self, reason: str, url: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.url = url


# -- public entry point -----------------------------------------------------------------------


def crawl(
    config: WebConfig, raw_dir: Path, cache_dir: Path, user_agent: str, progress: bool = True
) -> tuple[list[CatalogueRow], Counter[str], dict]:
    """Write image shards under raw_dir/images/ and return rows, skip reasons (Counter reason->count),
    extra stats.

    The raw shards belong to the crawl: each run replaces the whole set with exactly the
    returned rows' images, so nothing is left from an earlier run with other settings.
    """
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A killed run can leave temporaries behind; they are never valid data.
    stale = remove_stale_temporaries(raw_dir) + remove_stale_temporaries(cache_dir)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", stale)

    client = PoliteClient(_client_config(config, user_agent), cache_dir)
    skipped: Counter[str] = Counter()
    try:
        with ThreadPoolExecutor(max_workers=max(1, config.max_concurrency)) as pool:
            item_urls, list_pages = discover_items(client, config, skipped)
            budget = max(0, config.max_pages - list_pages)
            _skip_many(skipped, "max_pages", item_urls[budget:])
            refs = collect_images(pool, client, config, item_urls[:budget], skipped, progress)
            fetched = fetch_images(pool, client, config, refs, skipped, progress)
    finally:
        client.close()

    # Deduplicated in crawl order (first wins), written in id order (as the shards require).
    unique = sorted(_dedup_rows(fetched, config.licence, skipped), key=lambda item: item[0].id)
    rows, shards = write_raw_images(raw_dir, unique)
    extra = {
        "list_pages": list_pages,
        "item_pages": min(len(item_urls), budget),
        "image_urls": len(refs),
        "http": dict(sorted(client.stats.items())),
    }
    log.info(
        "crawl: %d images in %d shards, %d skipped %s",
        len(rows),
        len(shards),
        sum(skipped.values()),
        dict(skipped),
    )
    return rows, skipped, extra


def _client_config(config: WebConfig, user_agent: str) -> ClientConfig:
    return ClientConfig(
        user_agent=user_agent,
        allowed_hosts=tuple(config.allowed_hosts),
        rate_limit_per_s=config.rate_limit_per_s,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
        backoff_base_s=config.backoff_base_s,
    )


# -- pass 1: list pages -----------------------------------------------------------------------


def discover_items(client: PoliteClient, config: WebConfig, skipped: Counter[str]) -> tuple[list[str], int]:
    """Item URLs in first-seen order, following pagination; returns them and the list pages used.

    Sequential on purpose: the next page is only known once the current one is parsed, and a
    fixed order keeps the duplicate rule ("first wins") reproducible.
    """
    hosts = {host.lower() for host in config.allowed_hosts}
    queue = [_clean_url(url) for url in config.start_urls]
    seen_pages: set[str] = set(queue)
    items: dict[str, None] = {}  # an ordered set
    seen_links: set[str] = set()  # items and rejected links, so each is counted once
    pages = 0
    while queue:
        url = queue.pop(0)
        if pages >= config.max_pages:
            _skip_many(skipped, "max_pages", [url, *queue])
            break
        soup = _fetch_soup(client, url, skipped)
        pages += 1
        if soup is None:
            continue
        for link in select_links(soup, url, config.selectors.item_link):
            if link not in seen_links:
                seen_links.add(link)
                if _on_allowed_host(link, hosts, skipped):
                    items[link] = None
        for link in select_links(soup, url, config.selectors.next_page):
            if link not in seen_pages and _on_allowed_host(link, hosts, skipped):
                seen_pages.add(link)
                queue.append(link)
    return list(items), pages


def select_links(soup: BeautifulSoup, base_url: str, css: str) -> list[str]:
    """Absolute, fragment-free URLs of `href`s matched by `css`, first-seen order, no repeats."""
    if not css:
        return []
    links: dict[str, None] = {}
    for element in soup.select(css):
        href = element.get("href")
        if isinstance(href, str) and href.strip() and not href.startswith(("javascript:", "mailto:")):
            links[_clean_url(urljoin(base_url, href.strip()))] = None
    return list(links)


# -- pass 2: item pages -----------------------------------------------------------------------


def collect_images(
    pool: ThreadPoolExecutor,
    client: PoliteClient,
    config: WebConfig,
    item_urls: list[str],
    skipped: Counter[str],
    progress: bool,
) -> list[ImageRef]:
    """Image references from all item pages, in page order then document order, URLs unique."""

    def visit(url: str) -> list[ImageRef] | Skip | FetchError:
        try:
            return parse_item_page(_fetch_page(client, url), config.selectors)
        except (Skip, FetchError) as error:
            return error

    refs: dict[str, ImageRef] = {}
    for outcome in _ordered_map(pool, visit, item_urls, "pages", progress):
        if isinstance(outcome, Exception):
            _skip(skipped, outcome.reason, outcome.url)
            continue
        for ref in outcome:
            if ref.url in refs:
                _skip(skipped, "duplicate_image", ref.url)
            else:
                refs[ref.url] = ref
    return list(refs.values())


def parse_item_page(page: tuple[str, BeautifulSoup], selectors: Selectors) -> list[ImageRef]:
    """The page's caption attached to each of its images; Skip when either is missing."""
    url, soup = page
    caption = extract_caption(soup, selectors.caption)
    if not caption:
        raise Skip("no_caption", url)
    if not _CYRILLIC.search(caption):
        raise Skip("caption_not_russian", url, caption)
    refs = []
    for element in soup.select(selectors.image or "img"):
        source = image_source(element)
        if source:
            refs.append(
                ImageRef(_clean_url(urljoin(url, source)), caption, extract_style(element, selectors.style))
            )
    if not refs:
        raise Skip("no_images", url)
    return refs


def extract_caption(soup: BeautifulSoup, spec: str) -> str:
    css, attribute = split_attribute(spec or "h1")
    element = soup.select_one(css) if css else None
    if element is None:
        return ""
    raw = element.get(attribute, "") if attribute else element.get_text(" ", strip=True)
    return clean_caption(raw if isinstance(raw, str) else " ".join(raw))


def clean_caption(text: str) -> str:
    """NFC text without emoji, symbols or invisible joiners, then `normalise_caption`."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    return normalise_caption(kept)


def extract_style(image: Tag, spec: str) -> str:
    css, attribute = split_attribute(spec)
    if not css and attribute:
        value = image.get(attribute, "")
        label = value if isinstance(value, str) else " ".join(value)
    elif css:
        label = _nearest_text(image, css, attribute)
    else:
        label = ""
    return normalise_caption(label) or DEFAULT_STYLE


def _nearest_text(image: Tag, css: str, attribute: str | None) -> str:
    # Innermost container first, so on a page of vendor cards each image gets its own card's label.
    for container in image.parents:
        match = container.select_one(css)
        if match is not None:
            value = match.get(attribute, "") if attribute else match.get_text(" ", strip=True)
            return value if isinstance(value, str) else " ".join(value)
    return ""


def split_attribute(spec: str) -> tuple[str, str | None]:
    """`"css@attr"` -> (css, attr); `"@attr"` -> ("", attr); `"css"` -> (css, None)."""
    match = _ATTR_SUFFIX.match(spec.strip())
    if match:
        return match.group(1).strip(), match.group(2)
    return spec.strip(), None


def image_source(element: Tag) -> str | None:
    """The best URL of an image element: largest srcset candidate, else lazy-load attributes, else src."""
    for attribute in ("srcset", "data-srcset"):
        value = element.get(attribute)
        if isinstance(value, str) and (best := largest_srcset_candidate(value)):
            return best
    for attribute in _LAZY_ATTRIBUTES:
        value = element.get(attribute)
        # data: URIs are the placeholders lazy loaders put in src, never the real image.
        if isinstance(value, str) and value.strip() and not value.strip().startswith("data:"):
            return value.strip()
    return None


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL with the largest descriptor ("480w" or "2x"; none means 1x); width beats density."""
    best: tuple[tuple[bool, float], str] | None = None
    for url, descriptor in _srcset_candidates(srcset):
        if url.startswith("data:"):
            continue
        try:
            size = (descriptor.endswith("w"), float(descriptor[:-1]))
        except ValueError:
            continue
        if best is None or size > best[0]:
            best = (size, url)
    return best[1] if best else None


def _srcset_candidates(srcset: str) -> Iterator[tuple[str, str]]:
    # A URL runs to the next whitespace (commas inside it, as in data: URIs, are kept); the
    # descriptor after it runs to the next comma. Splitting on every comma would cut URLs.
    for match in _SRCSET_CANDIDATE.finditer(srcset):
        url = match.group(1)
        descriptor = (match.group(2) or "").strip()
        if url.endswith(",") and not descriptor:
            url = url.rstrip(",")
        yield url, descriptor or "1x"


# -- pass 3: images ---------------------------------------------------------------------------


def fetch_images(
    pool: ThreadPoolExecutor,
    client: PoliteClient,
    config: WebConfig,
    refs: list[ImageRef],
    skipped: Counter[str],
    progress: bool,
) -> list[FetchedImage]:
    """Fetch and verify every image into memory; results in `refs` order, failures counted."""

    def fetch(ref: ImageRef) -> FetchedImage | Skip | FetchError:
        try:
            png = to_png(client.fetch(ref.url), config.max_image_pixels)
            return FetchedImage(ref, image_id(ref.url), png, sha256_bytes(png))
        except (Skip, FetchError) as error:
            return error

    fetched = []
    for outcome in _ordered_map(pool, fetch, refs, "images", progress):
        if isinstance(outcome, Exception):
            _skip(skipped, outcome.reason, outcome.url)
        else:
            fetched.append(outcome)
    return fetched


def image_id(url: str) -> str:
    """Stable id, safe as a file and shard member name. Never built from the URL's path, so
    `../` cannot escape."""
    host = re.sub(r"[^a-z0-9-]", "-", host_of(url).replace(".", "-")) or "host"
    return f"{host}-{url_key(url)[:16]}"


def to_png(response: Response, max_pixels: int) -> bytes:
    """PNG bytes of a verified image: PNGs as served, other formats converted to RGBA PNG.

    The declared size is checked right after the header is read and before any pixel data is
    decoded, so a tiny file claiming to be enormous costs nothing.
    """
    if not response.content_type.startswith("image/"):
        raise Skip("not_image", response.url, response.content_type or "no content type")
    try:
        with Image.open(io.BytesIO(response.body)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise Skip("too_large", response.url, f"{width}x{height}")
            image.load()
            if image.format == "PNG":
                return response.body
            out = io.BytesIO()
            image.convert("RGBA").save(out, format="PNG")
            return out.getvalue()
    except Image.DecompressionBombError as error:
        raise Skip("too_large", response.url, str(error)) from error
    except UnidentifiedImageError as error:
        raise Skip("unsupported_image", response.url, response.content_type) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise Skip("corrupt_image", response.url, str(error)) from error


def _dedup_rows(
    fetched: list[FetchedImage], licence: str, skipped: Counter[str]
) -> list[tuple[CatalogueRow, bytes]]:
    """A row (image_path and sha256 still to fill in) and PNG bytes for the first of each image."""
    unique, seen = [], set()
    for image in fetched:
        if image.sha256 in seen:
            _skip(skipped, "duplicate_image", image.ref.url)
            continue
        seen.add(image.sha256)
        row = CatalogueRow(
            id=image.row_id,
            caption=image.ref.caption,
            image_path="",
            source=image.ref.url,
            style=image.ref.style,
            sha256="",
            licence=licence,
        )
        unique.append((row, image.png))
    return unique


# -- helpers ----------------------------------------------------------------------------------


def _fetch_page(client: PoliteClient, url: str) -> tuple[str, BeautifulSoup]:
    response = client.fetch(url)
    if response.content_type not in ("text/html", "application/xhtml+xml", ""):
        raise Skip("not_html", url, response.content_type)
    return url, parse_html(response)


def _fetch_soup(client: PoliteClient, url: str, skipped: Counter[str]) -> BeautifulSoup | None:
    try:
        return _fetch_page(client, url)[1]
    except (Skip, FetchError) as error:
        _skip(skipped, error.reason, url)
        return None


def parse_html(response: Response) -> BeautifulSoup:
    """Parse with the charset from Content-Type when given; otherwise Beautiful Soup reads the
    page's own <meta charset> (or sniffs), which is what Russian windows-1251 sites rely on."""
    return BeautifulSoup(response.body, "html.parser", from_encoding=response.charset)


def _clean_url(url: str) -> str:
    return urldefrag(url.strip())[0]


def _on_allowed_host(url: str, hosts: set[str], skipped: Counter[str]) -> bool:
    if urlsplit(url).scheme in ("http", "https") and host_of(url) in hosts:
        return True
    _skip(skipped, "off_host", url)
    return False


def _skip(skipped: Counter[str], reason: str, url: str) -> None:
    skipped[reason] += 1
    level = logging.WARNING if reason in ("http_error", "timeout", "corrupt_image") else logging.INFO
    log.log(level, "skip %s: %s", reason, url)


def _skip_many(skipped: Counter[str], reason: str, urls: Iterable[str]) -> None:
    for url in urls:
        _skip(skipped, reason, url)


def _ordered_map(
    pool: ThreadPoolExecutor, func: Callable[[T], R], items: list[T], unit: str, progress: bool
) -> Iterator[R]:
    """`pool.map` (results in input order, whatever order they finish in) with a progress bar."""
    results = pool.map(func, items)
    yield from progress_bar(
        results, desc=f"fetch {unit}", total=len(items), unit=unit, disable=not progress, leave=False
    )
