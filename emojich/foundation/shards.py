"""Image sets stored as a few tar shards instead of one file per image.

Why shards: DVC checks a directory output file by file, against its state database, once as
one stage's output and again as the next stage's dependency. With ~12k images in each of
several folders, a no-op `dvc repro` spent seconds on those lookups; a handful of shards per
folder costs almost nothing.

Format, WebDataset style, so `tar` and `webdataset` read it as well as this module:

- `<folder>/<prefix>-00000.tar`, `<prefix>-00001.tar`, ...: plain POSIX tar files;
- members `<key>.<kind>` (kind such as `png` or `rgb.png`), all members of one key together,
  keys in strictly increasing order across the shards;
- a shard is closed when it holds `max_items` keys or `max_bytes` of payload, so the split
  depends on the content alone;
- fixed headers (mtime 0, uid/gid 0, no user names, mode 0644): equal content gives
  byte-identical shards, which is what lets DVC skip everything downstream.

One image on the command line: `emojich extract data/prepared/images <id> --kind rgb.png`, or
`tar -xOf data/prepared/images/prepared-00000.tar <id>.rgb.png > x.png` when the shard is known.

Written with the standard library's `tarfile`, which is all the format needs: fixed headers
and an index of member offsets are a few lines on top of it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from emojich.foundation.storage import remove_stale_temporaries, temporary_beside

SHARD_SUFFIX = ".tar"
DEFAULT_MAX_ITEMS = 2048
DEFAULT_MAX_BYTES = 64 << 20

# Keys and kinds become file names when a shard is unpacked: no dots in keys (the WebDataset
# key/kind split is at the first dot), no separators, nothing that could climb out of a folder.
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KIND = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")


class ShardError(ValueError):
    """A shard folder that is not what this module writes, or a missing key/kind."""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ShardError(f"shard key {key!r}: only letters, digits, '-' and '_' are allowed")
    return key


def _check_kind(kind: str) -> str:
    if not _KIND.fullmatch(kind):
        raise ShardError(f"shard member kind {kind!r}: lower-case words joined by dots, such as 'rgb.png'")
    return kind


def shard_paths(folder: str | Path) -> list[Path]:
    """The folder's shards in order; no folder means no shards."""
    folder = Path(folder)
    return sorted(folder.glob(f"*{SHARD_SUFFIX}")) if folder.is_dir() else []


def member_ref(shard: str | Path, key: str, kind: str) -> str:
    """`<shard path>:<member>`, the way manifests and lineage name one image inside a shard."""
    return f"{Path(shard).as_posix()}:{key}.{kind}"


class ShardWriter:
    """Writes `(key, {kind: bytes})` items into shards; the whole set appears at once.

    Keys must come in strictly increasing order, which makes the output independent of how the
    caller scheduled its work. Finished shards wait as temporaries beside their final names;
    a clean exit renames them all into place and deletes shards of the same prefix that this
    run did not write (left by a larger earlier run). An error, or a process killed before those
    renames, leaves the folder's previous shards untouched (temporaries from a kill are removed by
    the next run); only a kill during the renames themselves could leave two runs' shards mixed.
    """

    def __init__(
        self,
        folder: str | Path,
        prefix: str,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")
        self.folder = Path(folder)
        self.prefix = check_key(prefix)
        self.max_items, self.max_bytes = max_items, max_bytes
        self._finished: list[tuple[Path, Path]] = []  # (temporary, final name)
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._items = self._bytes = 0
        self._last_key: str | None = None

    def __enter__(self) -> ShardWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _shard_name(self, index: int) -> Path:
        return self.folder / f"{self.prefix}-{index:05d}{SHARD_SUFFIX}"

    def add(self, key: str, members: Mapping[str, bytes]) -> Path:
        """Append one item; returns the path its shard will have once the writer is closed."""
        check_key(key)
        if self._last_key is not None and key <= self._last_key:
            raise ShardError(f"shard keys must be strictly increasing: {key!r} after {self._last_key!r}")
        if not members:
            raise ShardError(f"{key}: an item needs at least one member")
        self._last_key = key
        if self._tar is None:
            self._tmp = temporary_beside(self._shard_name(len(self._finished)))
            # Closed in _finish_shard or abort: a shard spans many add() calls.
            self._tar = tarfile.open(self._tmp, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for kind in sorted(members):
            data = members[kind]
            info = tarfile.TarInfo(f"{key}.{_check_kind(kind)}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)
        self._items += 1
        shard = self._shard_name(len(self._finished))
        if self._items >= self.max_items or self._bytes >= self.max_bytes:
            self._finish_shard()
        return shard

    def close(self) -> list[Path]:
        """Publish every shard, delete stale ones of this prefix; returns the shards written."""
        self._finish_shard()
        written = []
        for tmp, dest in self._finished:
            os.replace(tmp, dest)
            written.append(dest)
        self._finished = []
        keep = set(written)
        for path in shard_paths(self.folder):
            if path not in keep and path.name.startswith(f"{self.prefix}-"):
                path.unlink()
        return written

    def abort(self) -> None:
        """Drop everything written so far; the folder keeps its previous shards."""
        if self._tar is not None:
            self._tar.close()
        unfinished = [self._tmp] if self._tmp is not None else []
        for tmp in [tmp for tmp, _ in self._finished] + unfinished:
            tmp.unlink(missing_ok=True)
        self._finished = []
        self._tar = self._tmp = None

    def _finish_shard(self) -> None:
        if self._tar is None or self._tmp is None:
            return
        self._tar.close()  # writes the end-of-archive blocks
        self._finished.append((self._tmp, self._shard_name(len(self._finished))))
        self._tar = self._tmp = None
        self._items = self._bytes = 0


def write_shards(
    folder: str | Path,
    prefix: str,
    items: Iterable[tuple[str, Mapping[str, bytes]]],
    max_items: int = DEFAULT_MAX_ITEMS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Path]:
    """Write all items (sorted by key here) and return key -> shard path."""
    located = {}
    with ShardWriter(folder, prefix, max_items, max_bytes) as writer:
        for key, members in sorted(items, key=lambda item: item[0]):
            located[key] = writer.add(key, members)
    return located


def _split_member(name: str) -> tuple[str, str]:
    key, dot, kind = name.partition(".")
    if not dot or not _KEY.fullmatch(key) or not _KIND.fullmatch(kind):
        raise ShardError(f"unexpected shard member {name!r}: expected '<key>.<kind>'")
    return key, kind


@dataclass(frozen=True)
class _Member:
    shard: Path
    offset: int
    size: int


class ShardReader:
    """Random access to a shard folder by key, from an index of the tar headers.

    Building the index reads only the 512-byte headers, not the images. File handles are opened
    on first use and kept until `close()` (or the end of a `with` block).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._index: dict[str, dict[str, _Member]] = {}
        self._handles: dict[Path, BinaryIO] = {}
        for shard in shard_paths(self.folder):
            with tarfile.open(shard, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        raise ShardError(f"{shard}: member {info.name!r} is not a regular file")
                    key, kind = _split_member(info.name)
                    kinds = self._index.setdefault(key, {})
                    if kind in kinds:
                        raise ShardError(f"{shard}: {info.name} is stored twice")
                    kinds[kind] = _Member(shard, info.offset_data, info.size)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return sorted(self._index)

    def kinds(self, key: str) -> list[str]:
        return sorted(self._index.get(key, ()))

    def has(self, key: str, kind: str) -> bool:
        return kind in self._index.get(key, {})

    def shard_of(self, key: str, kind: str) -> Path:
        return self._member(key, kind).shard

    def ref(self, key: str, kind: str) -> str:
        """`<shard path>:<key>.<kind>`, see `member_ref`."""
        return member_ref(self.shard_of(key, kind), key, kind)

    def read(self, key: str, kind: str) -> bytes:
        member = self._member(key, kind)
        handle = self._handles.get(member.shard)
        if handle is None:
            handle = self._handles[member.shard] = open(member.shard, "rb")  # noqa: SIM115 - kept open
        handle.seek(member.offset)
        data = handle.read(member.size)
        if len(data) != member.size:
            raise ShardError(f"{member.shard}: {key}.{kind} is truncated")
        return data

    def _member(self, key: str, kind: str) -> _Member:
        try:
            return self._index[key][kind]
        except KeyError:
            raise ShardError(f"{self.folder}: no member {key}.{kind}") from None


def iter_shards(folder: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Every item in key order, read sequentially: `(key, {kind: bytes})`."""
    for shard in shard_paths(folder):
        key: str | None = None
        members: dict[str, bytes] = {}
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                member_key, kind = _split_member(info.name)
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                handle = tar.extractfile(info)
                if handle is None:
                    raise ShardError(f"{shard}: member {info.name!r} is not a regular file")
                members[kind] = handle.read()
        if key is not None:
            yield key, members
