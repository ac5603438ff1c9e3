"""The scraped catalogue: one row per image, shared by the offline builder and the web crawler.

`data/raw/captions.csv` is the table every later stage reads. Rows are sorted by id and written
with fixed formatting so an unchanged source gives a byte-identical file, which lets DVC skip
everything downstream.

The images themselves live in `data/raw/images/raw-00000.tar`, `raw-00001.tar`, ... (see
`emojich.foundation.shards`), one member `<id>.png` per row, written in id order by `write_raw_images`;
a row's `image_path` names its member, e.g. `images/raw-00000.tar:twemoji-1f600.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from emojich.foundation.layout import IMAGES_DIR, RAW_KIND, RAW_PREFIX
from emojich.foundation.shards import ShardWriter, member_ref
from emojich.foundation.storage import dumps_csv, sha256_bytes, write_json_atomic, write_text_atomic

CAPTIONS_FILE = "captions.csv"
STATS_FILE = "stats.json"

_SPACES = re.compile(r"\s+")


class SourceUnavailable(Exception):
    """A source the params ask for is not on this machine: one line for the user, no catalogue."""


@dataclasses.dataclass(frozen=True, order=True)
class CatalogueRow:
    id: str  # stable, filesystem-safe: "<style>-<code points>" offline, "<host>-<url hash>" on the web
    caption: str  # Russian, Unicode NFC, stripped, single spaces
    image_path: str  # shard member, relative to the raw folder: "images/raw-00000.tar:twemoji-1f600.png"
    source: str  # URL, or "package==version:U+1F600"
    style: str  # vendor or style label, e.g. "twemoji"
    sha256: str  # of the image bytes as stored (the shard member)
    licence: str


COLUMNS = tuple(f.name for f in dataclasses.fields(CatalogueRow))


def normalise_caption(text: str) -> str:
    """NFC, strip, collapse inner whitespace. Case is kept: the text tokenizer lower-cases."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def catalogue_to_csv(rows: Iterable[CatalogueRow]) -> str:
    return dumps_csv(COLUMNS, (dataclasses.astuple(row) for row in sorted(rows)))


def write_raw_images(
    raw_dir: str | Path, images: Iterable[tuple[CatalogueRow, bytes]]
) -> tuple[list[CatalogueRow], list[Path]]:
    """Write PNG bytes as the raw shards, replacing the previous set only once all are written.

    `images` must come in strictly increasing id order (the shard writer refuses anything else,
    repeats included), which is what makes the shards byte-identical for an unchanged source.
    Returns the rows with `image_path` and `sha256` filled in, and the shards written.
    """
    rows: list[CatalogueRow] = []
    shards: dict[Path, None] = {}  # an ordered set
    with ShardWriter(Path(raw_dir) / IMAGES_DIR, RAW_PREFIX) as writer:
        for row, png in images:
            shard = writer.add(row.id, {RAW_KIND: png})
            shards[shard] = None
            ref = member_ref(Path(IMAGES_DIR) / shard.name, row.id, RAW_KIND)
            rows.append(dataclasses.replace(row, image_path=ref, sha256=sha256_bytes(png)))
    return rows, list(shards)


def write_catalogue(rows: Iterable[CatalogueRow], raw_dir: str | Path) -> Path:
    rows = list(rows)
    ids = Counter(row.id for row in rows)
    duplicated = [row_id for row_id, count in ids.items() if count > 1]
    if duplicated:
        raise ValueError(f"duplicate catalogue ids: {', '.join(sorted(duplicated)[:5])}")
    dest = Path(raw_dir) / CAPTIONS_FILE
    write_text_atomic(dest, catalogue_to_csv(rows))
    return dest


def read_catalogue(path: str | Path) -> list[CatalogueRow]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [CatalogueRow(**{name: record[name] for name in COLUMNS}) for record in reader]


def catalogue_stats(rows: list[CatalogueRow], skipped: Counter[str], **extra: object) -> dict:
    """Counts for `stats.json`: images, distinct captions, per style, and skips by reason."""
    return {
        "images": len(rows),
        "captions": len({row.caption for row in rows}),
        "styles": dict(sorted(Counter(row.style for row in rows).items())),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        **extra,
    }


def write_stats(stats: dict, raw_dir: str | Path) -> Path:
    dest = Path(raw_dir) / STATS_FILE
    write_json_atomic(dest, stats)
    return dest
