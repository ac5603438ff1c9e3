"""Fetch pinned files from npm registry tarballs, checked against their pinned integrity.

    python tools/npm_fetch.py --into .venv/share/emojich/npm PIN.json [PIN.json ...]

Each pin file is committed JSON: `{"packages": [{"name", "version", "licence", "tarball",
"integrity", "files"}, ...]}`. `integrity` is the registry's Subresource Integrity string
(`sha512-<base64>`, as in `npm view NAME@VERSION dist.integrity` and package-lock files); a tarball
whose hash differs is refused. Only the listed `files` (paths inside the package) are written, to
`INTO/<name>/<file>`, each through a temporary file and a rename; `INTO/<name>/.integrity` is written
last and makes a second run a no-op for that package.

Standard library only, so `make setup` can run it before anything else is installed. Written here
because no Python library fetches single npm tarballs by pin; npm itself is not part of the set-up.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

MARKER = ".integrity"
TIMEOUT_S = 60
ATTEMPTS = 3


class PinError(Exception):
    """A pin file that cannot be used, or a tarball that does not match its pin."""


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str
    version: str
    licence: str
    tarball: str
    integrity: str
    files: tuple[str, ...]

    def __post_init__(self) -> None:
        algorithm, _, digest = self.integrity.partition("-")
        if algorithm not in {"sha256", "sha384", "sha512"} or not digest:
            raise PinError(f"{self.name}: integrity must be 'sha512-<base64>', got {self.integrity!r}")
        for file in self.files:
            path = PurePosixPath(file)
            # A pin names files inside the package; nothing may land outside INTO/<name>/.
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise PinError(f"{self.name}: file {file!r} is not a relative path inside the package")


def read_pins(path: Path) -> list[Pin]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            Pin(
                name=entry["name"],
                version=entry["version"],
                licence=entry["licence"],
                tarball=entry["tarball"],
                integrity=entry["integrity"],
                files=tuple(entry["files"]),
            )
            for entry in data["packages"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PinError(f"{path}: not a pin file ({error})") from error


def integrity_of(data: bytes, algorithm: str = "sha512") -> str:
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")


def verify(pin: Pin, data: bytes) -> None:
    algorithm = pin.integrity.partition("-")[0]
    actual = integrity_of(data, algorithm)
    if actual != pin.integrity:
        raise PinError(
            f"{pin.name}@{pin.version}: tarball integrity {actual} does not match the pin {pin.integrity}"
        )


def download(url: str) -> bytes:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except OSError as error:
            if attempt == ATTEMPTS:
                raise PinError(f"{url}: {error}") from error
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def extract(pin: Pin, data: bytes, dest: Path) -> list[Path]:
    """Write the pin's files out of the tarball (npm packs everything under `package/`)."""
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for file in pin.files:
            try:
                member = archive.extractfile(f"package/{file}")
            except KeyError:
                member = None
            if member is None:
                raise PinError(f"{pin.name}@{pin.version}: no file {file!r} in the tarball")
            target = dest / file
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(member.read())
            partial.replace(target)
            written.append(target)
    return written


def is_fetched(pin: Pin, dest: Path) -> bool:
    marker = dest / MARKER
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8").strip() == pin.integrity
        and all((dest / file).is_file() for file in pin.files)
    )


def fetch(pin: Pin, into: Path, get: Callable[[str], bytes] = download) -> bool:
    """Make INTO/<name>/ hold the pin's files; False when it already did."""
    dest = into / pin.name
    if is_fetched(pin, dest):
        return False
    (dest / MARKER).unlink(missing_ok=True)  # a half-updated folder never looks complete
    data = get(pin.tarball)
    verify(pin, data)
    extract(pin, data, dest)
    (dest / MARKER).write_text(pin.integrity + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--into", type=Path, required=True, help="folder that receives <name>/<file>")
    parser.add_argument("pins", type=Path, nargs="+", help="committed pin files (JSON)")
    args = parser.parse_args(argv)
    present = 0
    try:
        for pin_file in args.pins:
            for pin in read_pins(pin_file):
                if fetch(pin, args.into):
                    print(f"npm: {pin.name}@{pin.version} ({pin.licence}) fetched and verified")
                else:
                    present += 1
    except PinError as error:
        print(f"npm_fetch: {error}", file=sys.stderr)
        return 2
    if present:
        print(f"npm: {present} pinned package(s) already present in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
