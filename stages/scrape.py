"""Stage `scrape`: build data/raw/ from the offline catalogue or the web.

Output:

- `images/raw-00000.tar`, `raw-00001.tar`, ...: tar shards (see `emojich.foundation.shards`) holding one
  member `<id>.png` per image, bytes as served (web) or as rendered (offline), ids in order;
  the offline builder also keeps `images/.offline_manifest.json` to reuse unchanged images;
- `captions.csv`: one row per image, its `image_path` naming the shard member relative to
  data/raw/ (`images/raw-00000.tar:<id>.png`) and `sha256` the hash of that member's bytes;
- `stats.json`: the stage's provenance: counts, skip reasons, sources and package versions;
- `metrics/scrape.json`: the counts a person compares (images, captions, skipped).

The web crawler's HTTP cache (`data/cache/http/`) is no output: it is resume state, kept between
runs outside DVC's view, so the stage stays eligible for DVC's run-cache.

`scrape.source` picks the offline catalogue built from what `make setup` installs (default) or the
web crawler configured in `scrape.web`. A source the params ask for that is not on this machine
(Debian's Noto font, or CLDR's names before `make setup`) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from pathlib import Path

from emojich.data.catalogue import (
    STATS_FILE,
    CatalogueRow,
    SourceUnavailable,
    catalogue_stats,
    write_catalogue,
)
from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.records import METRICS_DIR, pick, write_records
from emojich.foundation.storage import remove_stale_temporaries

RAW_DIR = Path("data/raw")
# Resume state of the web crawl, outside every output: a `persist` output would keep the stage
# out of DVC's run-cache.
HTTP_CACHE_DIR = Path("data/cache/http")
METRICS_FILE = METRICS_DIR / "scrape.json"

log = logging.getLogger("stages.scrape")


@dataclasses.dataclass
class ScrapeParams:
    source: str = "offline"
    user_agent: str = "emojich-scraper"
    offline: dict = dataclasses.field(default_factory=dict)
    web: dict = dataclasses.field(default_factory=dict)


def scrape(
    params: ScrapeParams, raw_dir: Path = RAW_DIR, cache_dir: Path = HTTP_CACHE_DIR
) -> tuple[list[CatalogueRow], Counter[str], dict]:
    if params.source == "offline":
        from emojich.data.offline import OfflineConfig, build_offline_catalogue

        config = from_dict(OfflineConfig, params.offline, "scrape.offline")
        return build_offline_catalogue(config, raw_dir)
    if params.source == "web":
        from emojich.data.crawler import WebConfig, crawl

        config = from_dict(WebConfig, params.web, "scrape.web")
        return crawl(config, raw_dir, cache_dir, user_agent=params.user_agent)
    raise ValueError(f"scrape.source must be 'offline' or 'web', got {params.source!r}")


def summary(stats: dict) -> dict:
    """The counts a person compares between runs; sources and versions stay in stats.json."""
    return pick(stats, ("images", "captions", "skipped_total"))


def main() -> None:
    setup_logging()
    params = from_dict(ScrapeParams, load_section("scrape"), "scrape")
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(RAW_DIR)
    try:
        rows, skipped, extra = scrape(params)
    except SourceUnavailable as error:
        print(f"scrape: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    # Cache hits and download counts differ between runs; they go to the log, not the DVC metric.
    http_counts = extra.pop("http", None)
    if http_counts:
        log.info("http: %s", http_counts)
    write_catalogue(rows, RAW_DIR)
    stats = catalogue_stats(rows, skipped, source=params.source, **extra)
    write_records(METRICS_FILE, summary(stats), RAW_DIR / STATS_FILE, stats)
    log.info(
        "%d images, %d captions, %d skipped %s",
        stats["images"],
        stats["captions"],
        stats["skipped_total"],
        stats["skipped"],
    )


if __name__ == "__main__":
    main()
