"""Checks on what a person passes to `emojich`, made before any model loads.

Each failed check raises `InputError` with one sentence naming the argument and the path; the
command prints it as one line on stderr and exits 2. Checking first means a typo costs a second,
not the minutes of loading (or sampling) that would come before the error otherwise.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class InputError(ValueError):
    """An argument that cannot work, said in one line."""


def check_input_file(path: str | os.PathLike[str], name: str) -> Path:
    """`path` is a readable, non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name} {path}: no such file")
    if path.is_dir():
        raise InputError(f"{name} {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"{name} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{name} {path} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{name} {path} is empty")
    return path


def check_image_file(path: str | os.PathLike[str], name: str) -> Path:
    """`path` is a file Pillow recognises as an image (only the header is read)."""
    from PIL import Image, UnidentifiedImageError

    path = check_input_file(path, name)
    try:
        with Image.open(path) as image:
            image.verify()
    # Pillow reports damaged files as any of these, depending on the format's plugin.
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name} {path} is not an image Pillow can read ({error})") from error
    return path


def check_input_folder(path: str | os.PathLike[str], name: str) -> Path:
    """`path` is an existing folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name} {path}: no such folder")
    if not path.is_dir():
        raise InputError(f"{name} {path} is a file, not a folder")
    return path


def check_output_file(path: str | os.PathLike[str], name: str, suffixes: Iterable[str] | None = None) -> Path:
    """`path` can be written: the right suffix, not a folder, and its folder can be made or written."""
    path = Path(path)
    if suffixes is not None:
        allowed = tuple(suffixes)
        if path.suffix.lower() not in allowed:
            raise InputError(f"{name} {path} must end in {' or '.join(allowed)}")
    if path.is_dir():
        raise InputError(f"{name} {path} is a folder; give a file name")
    _check_creatable(path.parent, name, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {name} {path} (permission denied)")
    return path


def check_output_folder(path: str | os.PathLike[str], name: str) -> Path:
    """`path` is a folder that exists and can be written, or one that can be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{name} {path} is a file, not a folder")
    _check_creatable(path, name, path)
    return path


def check_count(value: int, name: str, upper: int, how_to_raise: str) -> int:
    """1 <= `value` <= `upper`; the message says how the bound is raised."""
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    if value > upper:
        raise InputError(f"{name} {value} is above the limit of {upper}; {how_to_raise}")
    return value


def _check_creatable(folder: Path, name: str, path: Path) -> None:
    """`folder` exists and is writable, or its nearest existing ancestor is, so it can be made."""
    existing = folder.absolute()
    while not existing.exists():  # also False below a regular file (NotADirectoryError)
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {name} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {name} {path}: no permission to write in {existing}")
    _probe(existing, name, path)


def _probe(folder: Path, name: str, path: Path) -> None:
    """Make and remove an empty file in `folder`.

    Permission bits are not the whole answer: root passes `os.access` everywhere, and /proc, /sys
    or a read-only mount refuse new files whatever the bits say. Trying is the only sure check,
    and it costs a millisecond instead of the sampling that would come before the error.
    """
    try:
        handle, probe = tempfile.mkstemp(prefix=".emojich-probe-", dir=folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(f"cannot write {name} {path}: {folder} takes no new files ({reason})") from None
    os.close(handle)
    os.unlink(probe)
