"""Atomic file writing and content hashing.

Every output goes to a temporary file in the destination folder first and is renamed into
place, so a killed stage never leaves a half-written file behind (rename is atomic on POSIX
within one filesystem, which is why the temporary lives beside the destination).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (md5 is what DVC records in dvc.lock)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha256")


@functools.cache
def _file_mode() -> int:
    """The mode a plain `open()` would give a new file: mkstemp's 0600 would surprise users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_beside(dest: str | os.PathLike[str]) -> Path:
    """A new empty file in `dest`'s folder, named so that `remove_stale_temporaries` finds it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp_name, _file_mode())
    return Path(tmp_name)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest`, on error it is removed."""
    dest = Path(dest)
    tmp = temporary_beside(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, readable Cyrillic, trailing newline (stable DVC hashes)."""
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(dest, dumps_json(obj))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporaries left by a killed run (names made by `atomic_path`). Returns the count."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def dumps_csv(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with "\n" line endings on every platform, so equal rows give equal bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv_atomic(
    dest: str | os.PathLike[str], header: Sequence[object], rows: Iterable[Sequence[object]]
) -> None:
    write_text_atomic(dest, dumps_csv(header, rows))
