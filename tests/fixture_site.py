"""A small scripted web site on 127.0.0.1 for crawler tests.

Each path maps to a `Route`: a body and content type, optional extra headers, an optional
delay, and an optional script of responses (e.g. 429 then 500) served before the normal one.
Static routes send an ETag and Last-Modified and answer conditional requests with 304, like a
well-behaved server. Every request is logged with its status and arrival time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import struct
import threading
import time
import zlib
from urllib.parse import urlsplit

from PIL import Image

LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


@dataclasses.dataclass
class Route:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    script: list[tuple[int, dict[str, str]]] = dataclasses.field(default_factory=list)
    validators: bool = True  # send Last-Modified (and ETag) and honour conditional requests
    send_etag: bool = True

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclasses.dataclass
class LoggedRequest:
    path: str
    at: float  # time.monotonic() when the request arrived
    headers: dict[str, str]
    status: int = 0  # 0 while the answer is being prepared (logged on arrival, not on completion)


class FixtureSite:
    """`with FixtureSite() as site: site.add("/a.html", Route(b"..."))`; URLs from `site.url()`."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, route: Route) -> None:
        self.routes[path] = route

    def page(self, path: str, html: str, **kwargs) -> None:
        self.add(path, Route(html.encode("utf-8"), **kwargs))

    def image(self, path: str, body: bytes, content_type: str = "image/png", **kwargs) -> None:
        self.add(path, Route(body, content_type, **kwargs))

    def log(self, path: str | None = None, since: int = 0) -> list[LoggedRequest]:
        with self._lock:
            entries = self.requests[since:]
        return [entry for entry in entries if path is None or entry.path == path]

    def mark(self) -> int:
        with self._lock:
            return len(self.requests)

    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def start(self) -> FixtureSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FixtureSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(site: FixtureSite) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            entry = LoggedRequest(path, time.monotonic(), dict(self.headers.items()))
            site.record(entry)
            entry.status = self._respond(site.routes.get(path))

        def _respond(self, route: Route | None) -> int:
            try:
                if route is None:
                    return self._send(404, {"Content-Type": "text/plain"}, b"not found")
                if route.delay_s:
                    time.sleep(route.delay_s)
                if route.script:
                    status, headers = route.script.pop(0)
                    return self._send(status, {"Content-Type": "text/plain", **headers}, b"try again")
                headers = {"Content-Type": route.content_type, **route.headers}
                if route.validators:
                    headers["Last-Modified"] = LAST_MODIFIED
                    if route.send_etag:
                        headers["ETag"] = route.etag
                    if self._not_modified(route):
                        return self._send(304, headers, b"")
                return self._send(route.status, headers, route.body)
            except (BrokenPipeError, ConnectionResetError):
                return -1  # the client gave up (a timeout test): nothing to answer

        def _not_modified(self, route: Route) -> bool:
            if route.send_etag and "If-None-Match" in self.headers:
                return self.headers["If-None-Match"] == route.etag
            return self.headers.get("If-Modified-Since") == LAST_MODIFIED

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> int:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and status != 304:
                self.wfile.write(body)
            return status

        def log_message(self, format: str, *args: object) -> None:
            pass  # the site keeps its own log; stderr noise would hide test output

    return Handler


# -- image bytes ------------------------------------------------------------------------------


def png_bytes(colour: tuple[int, int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, colour).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=90)
    return out.getvalue()


def truncated_png() -> bytes:
    """A real PNG cut in the middle of its pixel data: the header reads, decoding fails."""
    out = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(out, format="PNG")
    data = out.getvalue()
    return data[: len(data) // 2]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR declares `width` x `height` (valid CRCs throughout)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
