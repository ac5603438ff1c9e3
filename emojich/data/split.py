"""Train/validation split by caption, stable under additions.

Each caption is placed by a hash of (seed, caption) rather than by shuffling the whole list, so
adding or removing one emoji never moves any other caption between the sets, and the split is
the same on every machine and Python version. Splitting by caption (not by image) keeps every
rendering of one caption (twemoji, openmoji, ...) on the same side: otherwise validation would
measure memorisation of a prompt already seen in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from emojich.data.catalogue import normalise_caption

TRAIN = "train"
VALIDATION = "val"
SPLITS = (TRAIN, VALIDATION)


def caption_key(caption: str) -> str:
    """What makes two captions "the same": the text tokenizer lower-cases, so case is ignored."""
    return normalise_caption(caption).casefold()


def caption_bucket(caption: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the caption and the seed alone."""
    digest = hashlib.sha256(f"{seed}\x00{caption_key(caption)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_captions(captions: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Map each distinct caption key to TRAIN or VALIDATION.

    A caption goes to validation when its bucket is below `val_fraction`. On tiny sets that rule
    can leave one side empty; then the caption with the lowest (or highest) bucket is moved, which
    still depends only on the captions and the seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    buckets = {caption_key(c): caption_bucket(c, seed) for c in captions}
    splits = {key: VALIDATION if bucket < val_fraction else TRAIN for key, bucket in buckets.items()}
    if len(buckets) >= 2 and val_fraction > 0:
        ordered = sorted(buckets, key=lambda key: (buckets[key], key))
        if VALIDATION not in splits.values():
            splits[ordered[0]] = VALIDATION
        if TRAIN not in splits.values():
            splits[ordered[-1]] = TRAIN
    return splits


def split_of(caption: str, splits: dict[str, str]) -> str:
    return splits[caption_key(caption)]
