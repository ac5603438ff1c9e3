"""tools/npm_fetch.py: pinned npm tarballs, served here from 127.0.0.1 (tests never reach a registry)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emojich.data.russian import CLDR_PINS, NPM_DIR
from tests.pipeline import ROOT, run
from tools.npm_fetch import MARKER, PinError, integrity_of, read_pins

FETCH = str(ROOT / "tools" / "npm_fetch.py")


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TARBALL = _tarball(
    {"build/lib.min.js": b"var lib = 1;", "LICENSE": b"BSD-3-Clause", "README.md": b"not wanted"}
)


@pytest.fixture
def registry() -> Iterator[tuple[str, list[str]]]:
    """A registry on 127.0.0.1 serving TARBALL at /lib/-/lib-1.0.0.tgz; the paths it was asked for."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            found = self.path == "/lib/-/lib-1.0.0.tgz"
            self.send_response(200 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(TARBALL)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()
    server.server_close()


def _pins(path: Path, base_url: str, integrity: str, files: list[str]) -> Path:
    entry = {
        "name": "lib",
        "version": "1.0.0",
        "licence": "BSD-3-Clause",
        "tarball": f"{base_url}/lib/-/lib-1.0.0.tgz",
        "integrity": integrity,
        "files": files,
    }
    path.write_text(json.dumps({"packages": [entry]}), encoding="utf-8")
    return path


def _fetch(pins: Path, into: Path, check: bool = True):
    return run([sys.executable, FETCH, "--into", str(into), str(pins)], cwd=ROOT, check=check)


def test_fetches_only_the_pinned_files_once(tmp_path: Path, registry: tuple[str, list[str]]) -> None:
    url, requests = registry
    pins = _pins(tmp_path / "pins.json", url, integrity_of(TARBALL), ["build/lib.min.js", "LICENSE"])
    first = _fetch(pins, tmp_path / "npm")
    assert "lib@1.0.0 (BSD-3-Clause) fetched and verified" in first.stdout
    folder = tmp_path / "npm" / "lib"
    assert (folder / "build/lib.min.js").read_bytes() == b"var lib = 1;"
    assert sorted(path.name for path in folder.iterdir()) == [MARKER, "LICENSE", "build"]
    assert "1 pinned package(s) already present" in _fetch(pins, tmp_path / "npm").stdout
    assert requests == ["/lib/-/lib-1.0.0.tgz"]  # the second run asked for nothing


def test_a_tarball_that_does_not_match_its_pin_is_refused(
    tmp_path: Path, registry: tuple[str, list[str]]
) -> None:
    url, _ = registry
    other = integrity_of(b"another release")
    result = _fetch(_pins(tmp_path / "pins.json", url, other, ["LICENSE"]), tmp_path / "npm", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not match the pin" in result.stderr
    assert not (tmp_path / "npm" / "lib").exists()  # nothing written from an unverified tarball


def test_a_file_missing_from_the_tarball_or_outside_the_package_is_an_error(
    tmp_path: Path, registry: tuple[str, list[str]]
) -> None:
    url, _ = registry
    missing = _pins(tmp_path / "a.json", url, integrity_of(TARBALL), ["build/other.js"])
    result = _fetch(missing, tmp_path / "npm", check=False)
    assert result.returncode == 2 and "no file 'build/other.js'" in result.stderr
    assert not (tmp_path / "npm" / "lib" / MARKER).exists()
    with pytest.raises(PinError, match="not a relative path"):
        read_pins(_pins(tmp_path / "b.json", url, integrity_of(TARBALL), ["../escape.js"]))


def test_setup_fetched_the_committed_pins() -> None:
    """What `make setup` put in the environment is what the committed pins name (no network)."""
    for pin_file, licence in (
        (CLDR_PINS, "Unicode-3.0"),
        (ROOT / "plots/vega_packages.json", "BSD-3-Clause"),
    ):
        for pin in read_pins(pin_file):
            assert pin.licence == licence
            assert pin.tarball.startswith("https://registry.npmjs.org/")
            assert (NPM_DIR / pin.name / MARKER).read_text(encoding="utf-8").strip() == pin.integrity
            assert all((NPM_DIR / pin.name / file).is_file() for file in pin.files)
