"""The U-Net's training pairs streamed from the image shards, in bounded memory.

The paper profile trains on 246,089 images of 512 px: about 190 GB as arrays, so the set can
not be loaded. `ShardStream` reads the shards sequentially (WebDataset style), keeps the
wanted keys, decodes and resizes each pair to the network side as it goes, and shuffles
through a seeded buffer. Memory is the buffer plus the DataLoader's prefetch, whatever the
set's size.

Order, for reproducibility: per epoch the shards (and the in-memory extras, in chunks) are
visited in an order drawn from (seed, epoch); DataLoader worker w of W decodes the items at
positions w, w + W, ... of that sequence and shuffles them through its own buffer seeded from
(seed, epoch, w); the DataLoader interleaves the workers' batches in a fixed order. The same
seed and worker count give the same batches.

Hand-written rather than the `webdataset` library: the shards and their reader are already
ours (`emojich.foundation.shards`), and the three steps the stage needs (filter by split, decode and
resize, seeded buffer shuffle) are shorter than adapting a pipeline to them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from emojich.foundation.layout import MASK_KIND, RGB_KIND
from emojich.foundation.shards import shard_paths
from emojich.segment.pseudolabel import resize_images, resize_masks

# Extras (pseudo-labelled generated images, held in memory) are visited in chunks of this
# many, placed among the shards so that they spread over the epoch instead of trailing it.
_EXTRA_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    workers: int = 2  # DataLoader processes decoding PNGs; 0 = in the training process
    shuffle_buffer: int = 512  # pairs held for shuffling per worker

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int):
            raise ValueError(f"shuffle_buffer must be an integer >= 1, got {self.shuffle_buffer!r}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be an integer >= 1, got {self.shuffle_buffer!r}")


Pair = tuple[np.ndarray, np.ndarray]  # uint8 [S, S, 3], bool [S, S]


class ShardStream(IterableDataset):
    """(image, mask) pairs at side `side` of the keys `keys` in the shard folder, plus extras.

    Also what `run_pseudolabel` grows: `extended` adds accepted pseudo-labels (already at the
    network side) without touching the shards.
    """

    def __init__(
        self,
        folder: str | Path,
        keys: Sequence[str],
        side: int,
        config: StreamConfig | None = None,
        extra_images: np.ndarray | None = None,
        extra_masks: np.ndarray | None = None,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        super().__init__()
        self.folder, self.side = Path(folder), side
        self.keys = frozenset(keys)
        self.config = config or StreamConfig()
        self.extra_images = np.zeros((0, side, side, 3), np.uint8) if extra_images is None else extra_images
        self.extra_masks = np.zeros((0, side, side), bool) if extra_masks is None else extra_masks
        self.seed, self.epoch = seed, epoch
        self.shards = shard_paths(self.folder) if self.keys else []

    def __len__(self) -> int:
        return len(self.keys) + len(self.extra_images)

    def extended(self, images: np.ndarray, masks: np.ndarray) -> ShardStream:
        return ShardStream(
            self.folder,
            sorted(self.keys),
            self.side,
            self.config,
            np.concatenate([self.extra_images, images]),
            np.concatenate([self.extra_masks, masks]),
            self.seed,
            self.epoch,
        )

    def at(self, seed: int, epoch: int) -> ShardStream:
        """The same stream for another (seed, epoch): what `train_unet` iterates per epoch."""
        copy = ShardStream.__new__(ShardStream)
        copy.__dict__.update(self.__dict__)
        copy.seed, copy.epoch = seed, epoch
        return copy

    # -- iteration -----------------------------------------------------------------------------
    def _units(self) -> list[Path | range]:
        """Shards and extra chunks in this epoch's order (the same in every worker)."""
        extra = len(self.extra_images)
        units: list[Path | range] = [*self.shards]
        units += [range(start, min(start + _EXTRA_CHUNK, extra)) for start in range(0, extra, _EXTRA_CHUNK)]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
        return [units[i] for i in order]

    def _items(self, worker: int, workers: int) -> Iterator[Pair]:
        position = 0
        for unit in self._units():
            if isinstance(unit, range):
                for index in unit:
                    if position % workers == worker:
                        yield self.extra_images[index], self.extra_masks[index]
                    position += 1
                continue
            for read in _shard_items(unit, self.keys):
                if position % workers == worker:
                    yield self._decode(read())
                position += 1

    def _decode(self, members: dict[str, bytes]) -> Pair:
        image = _read(members[RGB_KIND], "RGB")
        mask = _read(members[MASK_KIND], "L")
        return resize_images([image], self.side)[0], resize_masks([mask], self.side)[0]

    def __iter__(self) -> Iterator[Pair]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        buffer: list[Pair] = []
        for pair in self._items(worker, workers):
            if len(buffer) < self.config.shuffle_buffer:
                buffer.append(pair)
                continue
            slot = int(rng.integers(len(buffer)))
            buffer[slot], pair = pair, buffer[slot]
            yield pair
        rng.shuffle(buffer)
        yield from buffer

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch as (images uint8 [B, S, S, 3], masks bool [B, S, S]) batches.

        A worker's last batch of the epoch may be short: the loss is a mean, and a tiny set
        still gives batches.
        """
        loader = DataLoader(
            self.at(seed, epoch),
            batch_size=batch_size,
            num_workers=self.config.workers,
            drop_last=False,
        )
        yield from loader


def _shard_items(shard: Path, keys: frozenset[str]) -> Iterator[Callable[[], dict[str, bytes]]]:
    """Per wanted key, in shard order, a function reading its image and mask.

    Members are read only when asked for: a worker reads the headers of every item (cheap) but
    the data of its own share only.
    """
    with tarfile.open(shard, mode="r:") as tar:
        key: str | None = None
        infos: dict[str, tarfile.TarInfo] = {}
        for info in tar:
            member_key, _, kind = info.name.partition(".")
            if member_key != key:
                if key in keys:
                    yield functools.partial(_extract, tar, infos)
                key, infos = member_key, {}
            infos[kind] = info
        if key in keys:
            yield functools.partial(_extract, tar, infos)


def _extract(tar: tarfile.TarFile, infos: dict[str, tarfile.TarInfo]) -> dict[str, bytes]:
    members = {}
    for kind in (RGB_KIND, MASK_KIND):
        handle = tar.extractfile(infos[kind])
        if handle is None:
            raise ValueError(f"{tar.name}: {infos[kind].name} is not a regular file")
        members[kind] = handle.read()
    return members


def _read(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))
