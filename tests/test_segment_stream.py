"""The U-Net's training pairs streamed from shards: every wanted pair once per epoch, seeded order."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from emojich.foundation.layout import MASK_KIND, RGB_KIND, UPSCALED_PREFIX
from emojich.foundation.shards import shard_paths, write_shards
from emojich.segment.stream import ShardStream, StreamConfig


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path):
    """30 pairs in 4 shards; pair i is filled with grey level 5 i, its mask opaque iff i is odd."""
    items = []
    for i in range(30):
        image = np.full((12, 12, 3), 5 * i, np.uint8)
        mask = np.full((12, 12), 255 * (i % 2), np.uint8)
        items.append((f"e{i:02d}", {RGB_KIND: _png(image), MASK_KIND: _png(mask)}))
    write_shards(tmp_path, UPSCALED_PREFIX, items, max_items=8)
    assert len(shard_paths(tmp_path)) == 4
    return tmp_path


def _ids(images: np.ndarray) -> list[int]:
    return [int(image[0, 0, 0]) // 5 for image in images]


def _epoch(stream: ShardStream, seed: int, epoch: int, batch: int = 4) -> tuple[list[int], list[bool]]:
    ids, opaque = [], []
    for images, masks in stream.batches(batch, seed, epoch):
        assert images.shape[1:] == (6, 6, 3) and masks.shape[1:] == (6, 6)  # resized to the side
        ids += _ids(images.numpy())
        opaque += masks.numpy().all(axis=(1, 2)).tolist()
    return ids, opaque


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_streams_each_wanted_pair_once_in_a_seeded_order(shards, workers):
    train = [f"e{i:02d}" for i in range(30) if i % 10]  # e00, e10, e20 are "val"
    stream = ShardStream(shards, train, side=6, config=StreamConfig(workers=workers, shuffle_buffer=5))
    assert len(stream) == 27

    ids, opaque = _epoch(stream, seed=1, epoch=0)
    assert sorted(ids) == [i for i in range(30) if i % 10]
    assert opaque == [bool(i % 2) for i in ids]  # each mask travels with its image
    assert _epoch(stream, seed=1, epoch=0)[0] == ids  # reproducible
    assert _epoch(stream, seed=1, epoch=1)[0] != ids  # reshuffled per epoch
    assert _epoch(stream, seed=2, epoch=0)[0] != ids
    assert ids != sorted(ids)


def test_pseudo_labels_join_the_stream(shards):
    stream = ShardStream(shards, ["e01", "e02"], side=6, config=StreamConfig(workers=0, shuffle_buffer=2))
    extra_images = np.stack([np.full((6, 6, 3), 5 * i, np.uint8) for i in (40, 41, 42)])
    grown = stream.extended(extra_images, np.ones((3, 6, 6), bool))
    assert len(stream) == 2 and len(grown) == 5
    ids, opaque = _epoch(grown, seed=0, epoch=0, batch=2)
    assert Counter(ids) == Counter([1, 2, 40, 41, 42])
    assert [o for i, o in zip(ids, opaque, strict=True) if i >= 40] == [True] * 3


@pytest.mark.parametrize(("field", "value"), [("workers", -1), ("shuffle_buffer", 0)])
def test_bad_stream_settings_are_clear_errors(field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer"):
        StreamConfig(**{field: value})
