"""Where a weights file came from: `standin`, `published` or `selftrained`, read from its metadata.

Stand-in weights (`emojich.standins`) mark themselves: torch files with an entry `emojich_standin`
in the state dict's `_metadata`, `bpe.model` with one private-use character (U+10FFFD) in its
alphabet. Our own safetensors files carry `weights_origin` in their metadata, so the origin follows
the weights through the pipeline and every stage's metrics and every image's sidecar say it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

STANDIN_KEY = "emojich_standin"


ORIGIN_KEY = "weights_origin"
STANDIN, PUBLISHED, SELFTRAINED = "standin", "published", "selftrained"
# Private-use code point that marks a stand-in `bpe.model` (the last one Unicode allows).
STANDIN_CODEPOINT = 0x10FFFD


def combine(origins: Iterable[str]) -> str:
    """One stand-in input makes the result a stand-in result; else any published one makes it published."""
    found = set(origins)
    for origin in (STANDIN, PUBLISHED):
        if origin in found:
            return origin
    return SELFTRAINED


def marker_of(state: Mapping) -> dict | None:
    """The stand-in marker of a state dict (or of a container holding one), if any."""
    metadata = getattr(state, "_metadata", None) or {}
    if STANDIN_KEY in metadata:
        return dict(metadata[STANDIN_KEY])
    for value in state.values():
        if isinstance(value, Mapping) and not isinstance(value, torch.Tensor):
            found = marker_of(value)
            if found is not None:
                return found
    return None


def file_origin(path: str | os.PathLike[str] | None) -> str:
    """`standin` or `published` for a weights file given to a stage, `selftrained` for none.

    Reads only the metadata: torch files are memory-mapped, so a 5 GB checkpoint costs no RAM.
    """
    if not path:
        return SELFTRAINED
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_origin(path)
    if path.suffix == ".model":
        return STANDIN if STANDIN_CODEPOINT in yttm_alphabet(path) else PUBLISHED
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-zip) torch files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return STANDIN if isinstance(state, Mapping) and marker_of(state) is not None else PUBLISHED


def safetensors_origin(path: str | os.PathLike[str]) -> str:
    """The origin one of our stages wrote into a safetensors file's metadata (else self-trained)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get(ORIGIN_KEY, SELFTRAINED)


def yttm_alphabet(path: str | os.PathLike[str]) -> set[int]:
    """The code points a YouTokenToMe model file lists (see `TextTokenizer.from_yttm`)."""
    numbers = Path(path).read_text(encoding="utf-8").split()
    n_chars = int(numbers[0])
    return {int(numbers[2 + 2 * i]) for i in range(n_chars)}
