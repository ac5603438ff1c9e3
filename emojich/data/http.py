"""A polite HTTP client for crawling: robots.txt, per-host rate limits, retries and an on-disk cache.

One `PoliteClient` is shared by all crawl workers, so the rate limit and the robots rules hold for
the crawl as a whole, not per thread. Every response body that reaches the crawler has passed
through the cache, which is what makes a re-run cheap (conditional requests, 304s) and lets a
killed crawl resume without downloading anything twice.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import random
import re
import sqlite3
import threading
import time
import urllib.robotparser
from collections import Counter
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit

import requests

from emojich.foundation.storage import sha256_bytes

log = logging.getLogger(__name__)

# A server asking us to wait longer than this is treated as a refusal: blocking a worker for
# an hour helps nobody, and the next run (with the cache) picks the page up.
MAX_RETRY_AFTER_S = 300.0
# Emoji pages and images are small; anything bigger is a wrong link, not data.
MAX_BODY_BYTES = 32 << 20
# Response headers worth keeping in the cache: the rest (Date, Server, cookies) would only make
# cache files differ between otherwise identical runs.
_KEPT_HEADERS = ("content-type", "etag", "last-modified", "cache-control")
STAT_NAMES = ("requests", "downloads", "bytes_downloaded", "not_modified", "cache_fresh", "retries")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)


class FetchError(Exception):
    """A URL that will not be fetched; `reason` is the skip reason the crawler counts."""

    def __init__(self, reason: str, url: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.url = url


@dataclasses.dataclass(frozen=True)
class Response:
    url: str
    status: int
    headers: dict[str, str]  # lower-case names, only `_KEPT_HEADERS`
    body: bytes
    from_cache: bool  # True when no body crossed the network (fresh hit or 304)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", self.headers.get("content-type", ""), re.I)
        return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    user_agent: str
    allowed_hosts: tuple[str, ...]
    rate_limit_per_s: float = 2.0
    timeout_s: float = 10.0
    max_retries: int = 4
    backoff_base_s: float = 0.5


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(url: str, attempt: int, base_s: float) -> float:
    """Exponential back-off with jitter seeded by URL and attempt, so runs are reproducible
    while workers retrying different URLs still spread out."""
    jitter = random.Random(f"{url}#{attempt}").random()
    return base_s * (2**attempt) * (0.5 + jitter)


class HostRateLimiter:
    """Minimum interval between requests to one host, shared by all threads.

    Each caller reserves the next free slot under the lock and sleeps outside it, so waiting
    workers never block workers bound for other hosts.
    """

    def __init__(self, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next_slot: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_min_interval(self, host: str, seconds: float) -> None:
        """Slow one host down further, e.g. to honour its robots.txt Crawl-delay."""
        with self._lock:
            self._intervals[host] = max(self._interval, seconds)

    def defer(self, host: str, seconds: float) -> None:
        """Hold every worker off `host` for `seconds` (a 429/503 with Retry-After)."""
        with self._lock:
            self._next_slot[host] = max(self._next_slot.get(host, 0.0), time.monotonic() + seconds)

    def wait(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, 0.0))
            self._next_slot[host] = slot + self._intervals.get(host, self._interval)
        if slot > now:
            time.sleep(slot - now)


class HttpCache:
    """URL -> (status, kept headers, body), stored in one SQLite file in `folder`.

    One file rather than one per URL: the folder is a DVC output, and DVC checks a folder file
    by file on every `dvc repro`, so a large crawl's cache would make even a no-op slow. Each
    store is one SQLite transaction, so a killed crawl leaves every entry complete or absent
    (SQLite rolls a left-over journal back when the file is next opened); the stored body hash
    catches anything else. One connection behind a lock serves all crawl threads: stores are
    rare next to the rate limit.
    """

    FILE = "responses.sqlite"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.FILE
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as error:  # not a database at all: a cache can start again
            log.warning("discarding unreadable HTTP cache %s (%s)", self.path, error)
            self.path.unlink()
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # Autocommit (isolation_level=None): every statement is its own transaction.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (url TEXT PRIMARY KEY, meta TEXT NOT NULL, body BLOB NOT NULL)"
            )
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self, url: str) -> tuple[dict, bytes] | None:
        with self._lock:
            row = self._db.execute("SELECT meta, body FROM responses WHERE url = ?", (url,)).fetchone()
        if row is None:
            return None
        body = bytes(row[1])
        try:
            meta = json.loads(row[0])
        except ValueError:
            meta = {}
        if meta.get("url") != url or meta.get("sha256") != sha256_bytes(body):
            log.warning("discarding damaged cache entry for %s", url)
            return None
        return meta, body

    def store(self, url: str, status: int, headers: dict[str, str], body: bytes) -> None:
        meta = {
            "url": url,
            "status": status,
            "headers": headers,
            "stored_at": time.time(),
            "sha256": sha256_bytes(body),
        }
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (url, meta, body) VALUES (?, ?, ?)",
                (url, json.dumps(meta, sort_keys=True), body),
            )


def is_fresh(meta: dict, now: float | None = None) -> bool:
    """True when the stored Cache-Control max-age has not run out (no request needed)."""
    cache_control = meta.get("headers", {}).get("cache-control", "")
    if "no-cache" in cache_control.lower():
        return False
    match = _MAX_AGE.search(cache_control)
    if not match:
        return False
    now = time.time() if now is None else now
    return now - float(meta.get("stored_at", 0.0)) < int(match.group(1))


def _kept_headers(headers: requests.structures.CaseInsensitiveDict) -> dict[str, str]:
    return {name: headers[name] for name in _KEPT_HEADERS if name in headers}


class PoliteClient:
    """GET with robots.txt, host allow-list, rate limit, retries and the cache, safe across threads."""

    def __init__(self, config: ClientConfig, cache_dir: Path) -> None:
        self.config = config
        self.cache = HttpCache(cache_dir)
        self.limiter = HostRateLimiter(config.rate_limit_per_s)
        # Listed up front so the stats always have the same keys, zeros included.
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_NAMES, 0))
        self._allowed = {host.lower() for host in config.allowed_hosts}
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self._robots_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    # -- public -------------------------------------------------------------------------------

    def fetch(self, url: str) -> Response:
        """The response for `url`, or FetchError with the reason it was not fetched."""
        if host_of(url) not in self._allowed:
            raise FetchError("off_host", url)
        if not self._robots_allow(url):
            raise FetchError("robots_disallowed", url)
        return self._get(url)

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self.cache.close()

    # -- robots.txt ---------------------------------------------------------------------------

    def _robots_allow(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        # One lock for all hosts: robots.txt is fetched once per host, and a second worker
        # must not race past the check before the rules are known.
        with self._robots_lock:
            rules = self._robots.get(origin)
            if rules is None:
                rules = self._load_robots(origin)
                self._robots[origin] = rules
        return rules.can_fetch(self.config.user_agent, url)

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser:
        robots_url = f"{origin}/robots.txt"
        rules = urllib.robotparser.RobotFileParser(robots_url)
        try:
            response = self._get(robots_url)
        except FetchError as error:
            if error.reason.startswith("http_4"):
                rules.parse([])  # RFC 9309: no robots.txt (4xx) means everything is allowed
            else:
                # RFC 9309: an unreachable robots.txt means assume everything is disallowed.
                log.warning("robots.txt unreachable at %s (%s): not crawling that host", origin, error)
                rules.disallow_all = True
            return rules
        rules.parse(response.body.decode("utf-8", errors="replace").splitlines())
        delay = rules.crawl_delay(self.config.user_agent)
        if delay:
            self.limiter.set_min_interval(host_of(origin), float(delay))
        return rules

    # -- transport ----------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe, so each worker thread gets its own.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.config.user_agent
            self._local.session = session
            with self._stats_lock:
                self._sessions.append(session)
        return session

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += amount

    def _get(self, url: str) -> Response:
        cached = self.cache.load(url)
        if cached is not None and is_fresh(cached[0]):
            self._count("cache_fresh")
            meta, body = cached
            return Response(url, meta["status"], meta["headers"], body, from_cache=True)
        host = host_of(url)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
            self.limiter.wait(host)
            try:
                result = self._attempt(url, cached)
            except (requests.Timeout, requests.ConnectionError) as error:
                failure, retry_after = (
                    ("timeout" if isinstance(error, requests.Timeout) else "http_error"),
                    None,
                )
                log.info("%s on %s (attempt %d/%d)", type(error).__name__, url, attempt + 1, attempts)
            else:
                if isinstance(result, Response):
                    return result
                (status, retry_after), failure = result, "http_error"
                log.info("HTTP %d on %s (attempt %d/%d)", status, url, attempt + 1, attempts)
            if attempt + 1 < attempts:
                self._pause(url, host, attempt, retry_after)
        raise FetchError(failure, url, f"gave up after {attempts} attempts")

    def _pause(self, url: str, host: str, attempt: int, retry_after: float | None) -> None:
        if retry_after is None:
            time.sleep(backoff_delay(url, attempt, self.config.backoff_base_s))
        elif retry_after > MAX_RETRY_AFTER_S:
            raise FetchError("http_error", url, f"Retry-After {retry_after:.0f}s is too long")
        else:
            # Every worker backs off this host, not just this one; the next wait() sleeps it out.
            self.limiter.defer(host, retry_after)

    def _attempt(self, url: str, cached: tuple[dict, bytes] | None) -> Response | tuple[int, float | None]:
        """One request: a Response, or (status, Retry-After seconds) for a retryable failure."""
        headers = {}
        if cached is not None:
            meta = cached[0]["headers"]
            if "etag" in meta:
                headers["If-None-Match"] = meta["etag"]
            if "last-modified" in meta:
                headers["If-Modified-Since"] = meta["last-modified"]
        self._count("requests")
        with self._session().get(
            url, headers=headers, timeout=self.config.timeout_s, stream=True, allow_redirects=True
        ) as reply:
            if reply.url != url and host_of(reply.url) not in self._allowed:
                raise FetchError("off_host", url, f"redirected to {reply.url}")
            if reply.status_code == 304 and cached is not None:
                return self._revalidated(url, cached, reply)
            if reply.status_code in _RETRY_STATUSES:
                retry_after = None
                if reply.status_code in (429, 503):
                    retry_after = parse_retry_after(reply.headers.get("Retry-After"))
                return reply.status_code, retry_after
            if reply.status_code == 404:
                raise FetchError("http_404", url)
            if reply.status_code != 200:
                raise FetchError(
                    f"http_{reply.status_code}" if reply.status_code < 500 else "http_error", url
                )
            body = self._read_body(url, reply)
        kept = _kept_headers(reply.headers)
        self._count("downloads")
        self._count("bytes_downloaded", len(body))
        if "no-store" not in kept.get("cache-control", "").lower():
            self.cache.store(url, 200, kept, body)
        return Response(url, 200, kept, body, from_cache=False)

    def _revalidated(self, url: str, cached: tuple[dict, bytes], reply: requests.Response) -> Response:
        meta, body = cached
        headers = {**meta["headers"], **_kept_headers(reply.headers)}
        self._count("not_modified")
        # Re-stored so a new max-age counts from now: the next run may then skip the request.
        self.cache.store(url, meta["status"], headers, body)
        return Response(url, meta["status"], headers, body, from_cache=True)

    @staticmethod
    def _read_body(url: str, reply: requests.Response) -> bytes:
        chunks, size = [], 0
        for chunk in reply.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise FetchError("too_large", url, f"body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
