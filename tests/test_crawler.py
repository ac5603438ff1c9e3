"""The web crawler against a scripted site on 127.0.0.1: every awkward case ends in a counted skip."""

from __future__ import annotations

import dataclasses
import email.utils
import io
import itertools
import sqlite3
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from PIL import Image

from emojich.data import crawler
from emojich.data.catalogue import CatalogueRow, catalogue_to_csv
from emojich.data.crawler import (
    Selectors,
    WebConfig,
    clean_caption,
    crawl,
    extract_style,
    image_id,
    largest_srcset_candidate,
    split_attribute,
)
from emojich.data.http import HttpCache, Response, parse_retry_after
from emojich.foundation.layout import IMAGES_DIR, RAW_KIND, RAW_PREFIX
from emojich.foundation.params import from_dict, load_params
from emojich.foundation.shards import ShardReader, ShardWriter, member_ref, shard_paths
from emojich.foundation.storage import sha256_bytes
from tests.fixture_site import (
    FixtureSite,
    Route,
    jpeg_bytes,
    png_bytes,
    png_claiming,
    truncated_png,
)

USER_AGENT = "emojich-test/0.1 (+https://example.invalid)"
RED, GREEN, BLUE, GOLD = (255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (255, 200, 0, 255)


def emoji_page(caption: str, images: str, charset_meta: str = "") -> str:
    return f"<html><head>{charset_meta}</head><body><h1>{caption}</h1>{images}</body></html>"


def build_site(site: FixtureSite) -> None:
    site.page("/robots.txt", "User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    # Two list pages: relative links, a fragment, a repeat, an off-host and a disallowed link.
    site.page(
        "/list/1.html",
        """<ul>
        <li><a class="e" href="../emoji/smile.html">1</a></li>
        <li><a class="e" href="/emoji/smile.html#top">1 again</a></li>
        <li><a class="e" href="/emoji/heart.html">2</a></li>
        <li><a class="e" href="star.html">wrong base on purpose: /list/star.html is a 404</a></li>
        <li><a class="e" href="/emoji/star.html">3</a></li>
        <li><a class="e" href="http://elsewhere.invalid/emoji/x.html">off host</a></li>
        <li><a class="e" href="/private/secret.html">disallowed</a></li>
        <li><a class="e" href="/emoji/english.html">english</a></li>
        </ul><a class="next" href="2.html">next</a>""",
    )
    site.page(
        "/list/2.html",
        """<a class="e" href="/emoji/problems.html">4</a>
        <a class="e" href="/emoji/cp1251-header.html">5</a>
        <a class="e" href="/emoji/cp1251-meta.html">6</a>
        <a class="e" href="/emoji/retries.html">7</a>
        <a class="e" href="/emoji/smile.html">repeat</a>""",
    )
    site.page("/emoji/smile.html", emoji_page("😀 Улыбка", '<img src="/img/smile.png" data-vendor="apple">'))
    site.page(
        "/emoji/heart.html",
        emoji_page("Сердце", '<img src="data:image/gif;base64,R0lGOD" data-src="../img/heart.png">'),
    )
    site.page(
        "/emoji/star.html",
        emoji_page(
            "Звезда",
            '<div class="card"><span class="vendor">Google</span>'
            '<img srcset="/img/star-small.png 1x, /img/star-big.png 2x" src="/img/star-small.png"></div>',
        ),
    )
    site.page("/emoji/english.html", emoji_page("Smile", '<img src="/img/english.png">'))
    site.page(
        "/emoji/problems.html",
        emoji_page(
            "Проблемы",
            """<img src="/img/dup-of-smile.png"><img src="/img/missing.png"><img src="/img/notimage.png">
            <img src="/img/truncated.png"><img src="/img/bomb.png"><img src="../../x.png">
            <img src="http://elsewhere.invalid/y.png"><img src="/private/z.png"><img src="/img/photo.jpg">
            <img src="/img/smile.png">""",
        ),
    )
    site.add(
        "/emoji/cp1251-header.html",
        Route(
            emoji_page("Ёлка", '<img src="/img/tree.png">').encode("cp1251"),
            "text/html; charset=windows-1251",
        ),
    )
    site.add(
        "/emoji/cp1251-meta.html",
        Route(
            emoji_page("Снеговик", '<img src="/img/snowman.png">', '<meta charset="windows-1251">').encode(
                "cp1251"
            ),
            "text/html",
        ),
    )
    site.page(
        "/emoji/retries.html",
        emoji_page(
            "Ожидание",
            '<img src="/img/ratelimited.png"><img src="/img/flaky.png"><img src="/img/slow.png">'
            '<img src="/img/fresh.png">',
        ),
    )
    site.image("/img/smile.png", png_bytes(RED))
    site.image("/img/dup-of-smile.png", png_bytes(RED))
    site.image("/img/heart.png", png_bytes(GREEN))
    site.image("/img/star-small.png", png_bytes(BLUE, (4, 4)))
    site.image("/img/star-big.png", png_bytes(BLUE, (16, 16)))
    site.image("/img/english.png", png_bytes((1, 2, 3, 255)))
    site.image("/img/notimage.png", b"<html>login</html>", "text/html")
    site.image("/img/truncated.png", truncated_png())
    site.image("/img/bomb.png", png_claiming(50_000, 50_000))
    site.image("/x.png", png_bytes((9, 9, 9, 255)))
    site.image("/private/z.png", png_bytes((8, 8, 8, 255)))
    site.image("/img/photo.jpg", jpeg_bytes((0, 128, 255)), "image/jpeg")
    site.image("/img/tree.png", png_bytes((0, 100, 0, 255)))
    site.image("/img/snowman.png", png_bytes((250, 250, 250, 255)))
    site.image("/img/ratelimited.png", png_bytes(GOLD), script=[(429, {"Retry-After": "1"})])
    site.image("/img/flaky.png", png_bytes((5, 5, 5, 255)), script=[(500, {})])
    site.image("/img/slow.png", png_bytes((6, 6, 6, 255)), delay_s=1.2)
    site.image("/img/fresh.png", png_bytes((7, 7, 7, 255)), headers={"Cache-Control": "max-age=3600"})


def make_config(site: FixtureSite, *start_paths: str, **overrides) -> WebConfig:
    config = WebConfig(
        start_urls=[site.url(path) for path in start_paths or ("/list/1.html",)],
        allowed_hosts=["127.0.0.1"],
        selectors=Selectors(
            item_link="a.e", next_page="a.next", caption="h1", image="img", style="@data-vendor"
        ),
        rate_limit_per_s=500,
        max_concurrency=4,
        timeout_s=0.5,
        max_retries=2,
        backoff_base_s=0.01,
    )
    return dataclasses.replace(config, **overrides)


@dataclasses.dataclass
class Run:
    rows: list[CatalogueRow]
    skipped: Counter[str]
    extra: dict
    raw_dir: Path
    since: int  # site log index where this run started

    def row(self, path_suffix: str) -> CatalogueRow:
        (match,) = [row for row in self.rows if row.source.endswith(path_suffix)]
        return match

    def files(self) -> dict[str, bytes]:
        """Every file in the images folder (the shards), by name."""
        return {p.name: p.read_bytes() for p in sorted((self.raw_dir / IMAGES_DIR).iterdir())}

    def image(self, row: CatalogueRow) -> bytes:
        """The row's image, read from the shard member its image_path names."""
        with ShardReader(self.raw_dir / IMAGES_DIR) as reader:
            shard = reader.shard_of(row.id, RAW_KIND)
            assert row.image_path == member_ref(Path(IMAGES_DIR) / shard.name, row.id, RAW_KIND)
            return reader.read(row.id, RAW_KIND)


def run_crawl(site: FixtureSite, config: WebConfig, raw_dir: Path, cache_dir: Path) -> Run:
    since = site.mark()
    rows, skipped, extra = crawl(config, raw_dir, cache_dir, USER_AGENT, progress=False)
    return Run(rows, skipped, extra, raw_dir, since)


@pytest.fixture(scope="module")
def site():
    with FixtureSite() as running:
        build_site(running)
        yield running


@pytest.fixture(scope="module")
def first(site, tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("first")
    return run_crawl(site, make_config(site), root / "raw", root / "cache")


@pytest.fixture(scope="module")
def second(site, first) -> Run:
    """The same crawl again with the same cache into a fresh raw folder."""
    return run_crawl(site, make_config(site), first.raw_dir.parent / "raw2", first.raw_dir.parent / "cache")


# -- the full crawl ---------------------------------------------------------------------------


def test_pagination_relative_links_and_dedup(site, first):
    captions = {row.caption for row in first.rows}
    assert {"Улыбка", "Сердце", "Звезда", "Проблемы", "Ёлка", "Снеговик", "Ожидание"} <= captions
    # Linked three times (once with a fragment), fetched once.
    assert len(site.log("/emoji/smile.html", first.since)) == 1
    assert first.extra["list_pages"] == 2
    assert first.skipped["http_404"] >= 1  # /list/star.html (relative to the list page)


def test_lazy_data_src_and_largest_srcset(site, first):
    assert first.row("/img/heart.png").caption == "Сердце"
    assert first.row("/img/star-big.png").caption == "Звезда"
    assert not site.log("/img/star-small.png", first.since)


def test_style_from_attribute_and_default(first):
    assert first.row("/img/smile.png").style == "apple"
    assert first.row("/img/heart.png").style == "web"


def test_duplicate_image_keeps_first(first):
    red = [row for row in first.rows if row.sha256 == first.row("/img/smile.png").sha256]
    assert len(red) == 1
    assert first.skipped["duplicate_image"] == 2  # same bytes at another URL; same URL on another page


def test_problem_images_are_counted_skips(site, first):
    assert first.skipped["not_image"] == 1
    assert first.skipped["corrupt_image"] == 1
    assert first.skipped["too_large"] == 1
    assert first.skipped["http_404"] == 2  # /img/missing.png and /list/star.html
    assert first.skipped["caption_not_russian"] == 1
    assert not any("/img/english.png" in row.source for row in first.rows)


def test_off_host_and_robots_are_never_fetched(site, first):
    assert first.skipped["off_host"] == 2
    assert first.skipped["robots_disallowed"] == 2  # a page link and an image
    assert not [entry for entry in site.log(since=first.since) if entry.path.startswith("/private/")]
    assert site.log("/robots.txt", first.since)[0].headers["User-Agent"] == USER_AGENT


def test_dot_dot_url_cannot_escape_raw_dir(first):
    row = first.row("/x.png")
    assert row.image_path == f"images/{RAW_PREFIX}-00000.tar:{row.id}.png"
    assert row.id == image_id(row.source)
    root = first.raw_dir.parent
    outside = [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(first.raw_dir)]
    outside = [p for p in outside if not p.is_relative_to(root / "cache")]
    assert outside == []
    # Member names are bare "<id>.png": unpacking a shard cannot write outside its folder either.
    with tarfile.open(first.raw_dir / IMAGES_DIR / f"{RAW_PREFIX}-00000.tar") as tar:
        names = tar.getnames()
    assert names == sorted(f"{row.id}.png" for row in first.rows)
    assert not [name for name in names if "/" in name or ".." in name]


def test_images_are_only_shards_that_hold_exactly_the_rows(first):
    assert sorted(first.files()) == [f"{RAW_PREFIX}-00000.tar"]
    assert [row.id for row in first.rows] == sorted(row.id for row in first.rows)
    for row in first.rows:
        assert row.sha256 == sha256_bytes(first.image(row))


def test_windows_1251_pages(first):
    assert first.row("/img/tree.png").caption == "Ёлка"  # charset in Content-Type
    assert first.row("/img/snowman.png").caption == "Снеговик"  # only <meta charset>


def test_jpeg_is_converted_to_rgba_png(first):
    stored = first.image(first.row("/img/photo.jpg"))
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.mode) == ("PNG", "RGBA")


def test_png_bytes_are_kept_as_served(site, first):
    stored = first.image(first.row("/img/heart.png"))
    assert stored == site.routes["/img/heart.png"].body


def test_retry_after_is_honoured(site, first):
    hits = site.log("/img/ratelimited.png", first.since)
    assert [hit.status for hit in hits] == [429, 200]
    assert hits[1].at - hits[0].at >= 0.95
    assert first.row("/img/ratelimited.png")


def test_server_error_then_success(site, first):
    assert [hit.status for hit in site.log("/img/flaky.png", first.since)] == [500, 200]
    assert first.row("/img/flaky.png")


def test_slow_response_times_out(site, first):
    assert first.skipped["timeout"] == 1
    assert len(site.log("/img/slow.png", first.since)) == 3  # max_retries=2
    assert not any(row.source.endswith("/img/slow.png") for row in first.rows)


def test_stats_count_network_fetches(first):
    assert first.extra["http"]["downloads"] > 0
    assert first.extra["http"].get("cache_fresh", 0) == 0


# -- cache and determinism --------------------------------------------------------------------


def test_second_run_downloads_nothing_and_is_identical(site, first, second):
    log = site.log(since=second.since)
    assert [entry.path for entry in log if entry.status == 200] == []
    assert any(entry.status == 304 for entry in log)
    assert not site.log("/img/fresh.png", second.since)  # max-age: served from the cache unasked
    assert second.extra["http"]["downloads"] == 0
    assert second.extra["http"]["cache_fresh"] >= 1
    assert second.rows == first.rows
    assert catalogue_to_csv(second.rows) == catalogue_to_csv(first.rows)
    assert second.files() == first.files()


def test_the_cache_is_one_file_however_many_urls(first):
    cache = first.raw_dir.parent / "cache"
    assert [path.name for path in cache.rglob("*") if path.is_file()] == [HttpCache.FILE]
    assert first.extra["http"]["downloads"] > 10


def test_damaged_or_unreadable_cache_entries_are_fetched_again(tmp_path, caplog):
    with FixtureSite() as site:
        site.page("/list.html", '<a class="e" href="/e.html">e</a>')
        site.page("/e.html", emoji_page("Кот", '<img src="/cat.png">'))
        site.image("/cat.png", png_bytes(RED))
        config = make_config(site, "/list.html")
        first = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        cache = HttpCache(tmp_path / "cache")
        with sqlite3.connect(cache.path) as db:  # one body changed behind the cache's back
            db.execute("UPDATE responses SET body = ? WHERE url LIKE '%/cat.png'", (b"not the image",))
        cache.close()
        since = site.mark()
        again = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        assert [e.status for e in site.log("/cat.png", since)] == [200]  # unconditional: no stale ETag
        assert "discarding damaged cache entry" in caplog.text and again.rows == first.rows

        (tmp_path / "cache" / HttpCache.FILE).write_bytes(b"this is not a database" * 100)
        since = site.mark()
        third = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        assert "discarding unreadable HTTP cache" in caplog.text and third.rows == first.rows
        assert [e.status for e in site.log("/cat.png", since)] == [200]
        assert third.extra["http"]["downloads"] >= 3  # list, item page and image fetched again


def test_if_modified_since_alone_revalidates(tmp_path):
    with FixtureSite() as site:
        site.page("/list.html", '<a class="e" href="/e.html">e</a>')
        site.page("/e.html", emoji_page("Кот", '<img src="/cat.png">'))
        site.image("/cat.png", png_bytes(RED))
        site.routes["/cat.png"].send_etag = False
        config = make_config(site, "/list.html")
        run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        since = site.mark()
        rerun = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        statuses = {entry.status for entry in site.log(since=since) if entry.path != "/robots.txt"}
        assert statuses == {304}
        assert len(rerun.rows) == 1


# -- interrupt and resume ---------------------------------------------------------------------


def build_clean_site(site: FixtureSite, count: int = 8) -> None:
    links = "".join(f'<a class="e" href="/e/{i}.html">{i}</a>' for i in range(count))
    site.page("/clean.html", links)
    for i in range(count):
        site.page(f"/e/{i}.html", emoji_page(f"Эмодзи номер {i}", f'<img src="/i/{i}.png">'))
        site.image(f"/i/{i}.png", png_bytes((i * 20, 0, 0, 255)))


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, calls: int) -> None:
    """Make `owner.name` raise KeyboardInterrupt (as Ctrl-C would) on its call number `calls + 1`."""
    real = getattr(owner, name)
    count = Counter()

    def interrupted(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


def test_interrupted_crawl_resumes_to_the_same_result(tmp_path, monkeypatch):
    with FixtureSite() as site:
        build_clean_site(site)
        config = make_config(site, "/clean.html", max_concurrency=2)
        baseline = run_crawl(site, config, tmp_path / "baseline", tmp_path / "cache-baseline")

        # Killed while fetching images: no shard was written yet, so there is none.
        _interrupt_after(monkeypatch, crawler, "to_png", 3)
        with pytest.raises(KeyboardInterrupt):
            run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        monkeypatch.undo()
        assert shard_paths(tmp_path / "raw" / IMAGES_DIR) == []
        assert list(tmp_path.rglob("*.tmp")) == []
        # What a kill in the middle of an atomic write leaves behind.
        (tmp_path / "raw" / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / IMAGES_DIR / f".{RAW_PREFIX}-00000.tar.x1y2.tmp").write_bytes(b"half a tar")
        (tmp_path / "cache" / ".entry.bin.tmp").write_bytes(b"half")

        since = site.mark()
        resumed = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        downloaded = {entry.path for entry in site.log(since=since) if entry.status == 200}

    assert resumed.rows == baseline.rows
    assert catalogue_to_csv(resumed.rows) == catalogue_to_csv(baseline.rows)
    assert resumed.files() == baseline.files()
    assert list(tmp_path.rglob("*.tmp")) == []
    assert len(resumed.rows) == len({row.id for row in resumed.rows}) == 8
    # Pages and images fetched before the interruption came from the cache.
    assert len([path for path in downloaded if path.startswith("/i/")]) < 8


def test_interrupted_shard_writing_keeps_the_previous_set(tmp_path, monkeypatch):
    with FixtureSite() as site:
        build_clean_site(site)
        config = make_config(site, "/clean.html")
        previous = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        files = previous.files()

        # One more image, so the next run writes a different set; it is killed after three members.
        build_clean_site(site, count=9)
        _interrupt_after(monkeypatch, ShardWriter, "add", 3)
        with pytest.raises(KeyboardInterrupt):
            run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        monkeypatch.undo()
        assert previous.files() == files
        assert list(tmp_path.rglob("*.tmp")) == []

        resumed = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
    assert len(resumed.rows) == 9
    assert resumed.files() != files
    assert [row.sha256 for row in resumed.rows] == [sha256_bytes(resumed.image(row)) for row in resumed.rows]


# -- politeness and limits --------------------------------------------------------------------


def test_rate_limit_spaces_requests_to_a_host(tmp_path):
    with FixtureSite() as site:
        build_clean_site(site, count=4)
        config = make_config(site, "/clean.html", rate_limit_per_s=10, max_concurrency=4)
        run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        times = sorted(entry.at for entry in site.log())
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) == 10  # robots, list, 4 pages, 4 images
    # Spacing is measured at the server, so connection set-up jitter (a few ms) is tolerated.
    assert min(gaps) >= 0.07
    assert times[-1] - times[0] >= 0.85


def test_missing_robots_txt_allows_everything(tmp_path):
    with FixtureSite() as site:
        build_clean_site(site, count=2)
        run = run_crawl(site, make_config(site, "/clean.html"), tmp_path / "raw", tmp_path / "cache")
        assert site.log("/robots.txt")[0].status == 404
    assert len(run.rows) == 2
    assert "robots_disallowed" not in run.skipped


def test_max_pages_cuts_the_crawl(tmp_path):
    with FixtureSite() as site:
        build_clean_site(site, count=5)
        config = make_config(site, "/clean.html", max_pages=3)
        run = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
        pages = [entry for entry in site.log() if entry.path.endswith(".html")]
    assert len(pages) == 3
    assert run.skipped["max_pages"] == 3
    assert len(run.rows) == 2


def test_header_size_limit_applies_before_decoding(tmp_path):
    with FixtureSite() as site:
        build_clean_site(site, count=1)
        site.image("/i/0.png", png_claiming(300, 300))  # undecodable body: only the header is read
        config = make_config(site, "/clean.html", max_image_pixels=100 * 100)
        run = run_crawl(site, config, tmp_path / "raw", tmp_path / "cache")
    assert run.skipped["too_large"] == 1


# -- parsing helpers --------------------------------------------------------------------------


def test_largest_srcset_candidate():
    assert largest_srcset_candidate("a.png 1x, b.png 3x, c.png 2x") == "b.png"
    assert largest_srcset_candidate("a.png 100w,b.png 400w , c.png 200w") == "b.png"
    assert largest_srcset_candidate("only.png") == "only.png"
    assert largest_srcset_candidate("data:image/gif;base64,R0,lG 1x") is None
    assert largest_srcset_candidate("data:image/gif;base64,R0,lG 1x, real.png 2x") == "real.png"
    assert largest_srcset_candidate("a,b.png 1x,c.png 2x") == "c.png"


def test_split_attribute():
    assert split_attribute("@data-vendor") == ("", "data-vendor")
    assert split_attribute("meta[property='og:title']@content") == ("meta[property='og:title']", "content")
    assert split_attribute("a[href*='@x']") == ("a[href*='@x']", None)
    assert split_attribute(".vendor") == (".vendor", None)


def test_clean_caption_drops_emoji_and_joiners():
    assert clean_caption("🧑\u200d🚀  Космонавт\u00a0в\nкосмосе ") == "Космонавт в космосе"
    assert clean_caption("👍🏽 Большой палец вверх") == "Большой палец вверх"


def test_style_from_nearest_css_label():
    soup = BeautifulSoup(
        '<div class="c"><b class="v">Apple</b><img id="a"></div><div class="c"><b class="v">Google</b><img id="g"></div>',
        "html.parser",
    )
    assert extract_style(soup.select_one("#a"), ".v") == "Apple"
    assert extract_style(soup.select_one("#g"), ".v") == "Google"
    assert extract_style(soup.select_one("#g"), "") == "web"


def test_retry_after_accepts_seconds_and_dates():
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after("soon") is None


def test_web_config_from_params():
    config = from_dict(
        WebConfig,
        {
            "start_urls": ["https://e.invalid/"],
            "allowed_hosts": ["e.invalid"],
            "selectors": {"item_link": "a"},
        },
    )
    assert isinstance(config.selectors, Selectors)
    assert config.selectors.image == "img"


def test_shipped_profile_reads_an_emojipedia_shaped_page():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    config = from_dict(WebConfig, params["scrape"]["web"])
    source = "https://em-content.zobj.net/source/apple/391/grinning-face_1f600.png"
    thumb = "https://em-content.zobj.net/thumbs/120/apple/391/smiling-face_263a-fe0f.png"
    html = (
        '<html><head><meta property="og:title" content="😀 Улыбающееся лицо"></head><body><main>'
        f'<img src="{source}" srcset="{source} 2x" alt="apple"><img src="{thumb}" alt="related">'
        '<a href="/ru/smileys">Смайлики</a></main></body></html>'
    )
    page = Response("https://emojipedia.org/ru/x", 200, {"content-type": "text/html"}, html.encode(), False)
    refs = crawler.parse_item_page(
        ("https://emojipedia.org/ru/x", crawler.parse_html(page)), config.selectors
    )
    assert [(ref.url, ref.caption, ref.style) for ref in refs] == [(source, "Улыбающееся лицо", "web")]
    soup = crawler.parse_html(page)
    assert crawler.select_links(soup, page.url, config.selectors.item_link) == [
        "https://emojipedia.org/ru/smileys"
    ]
