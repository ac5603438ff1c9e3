"""Pseudo-labelling rounds: grow the U-Net's training set with its own confident predictions.

The report's procedure: train on the real emojis (true alpha), predict on generated images,
add those whose confidence is at least 0.99 with their predicted masks, retrain, and repeat
until the validation score plateaus. Images never accepted are left to the contour fallback.

Round 0 trains on the real set alone; round r >= 1 continues from round r-1's weights for a
bounded number of steps on the grown set. Every round then scores the validation set (true
alpha) and labels the generated images not yet accepted. An accepted image keeps the mask of
the round that accepted it: re-labelling it later would let the model drift on its own labels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emojich.foundation.progress import progress_bar
from emojich.segment.metrics import mask_scores
from emojich.segment.unet import predict, predict_many, to_network_input
from emojich.train.loop import epoch_order

# How many pending generated images are predicted at once: probabilities at 512 px take 1 MB
# each, so only the accepted ones are kept, as uint8, between chunks.
_LABEL_CHUNK = 256


@dataclasses.dataclass
class SegmentationSet:
    """Images uint8 [N, H, W, 3] (white-composited RGB) and binary masks bool [N, H, W] (True = opaque)."""

    images: np.ndarray
    masks: np.ndarray

    def __post_init__(self) -> None:
        if self.images.shape[:3] != self.masks.shape:
            raise ValueError(f"images {self.images.shape} and masks {self.masks.shape} do not pair up")
        self.masks = self.masks.astype(bool)

    def __len__(self) -> int:
        return len(self.images)

    def extended(self, images: np.ndarray, masks: np.ndarray) -> SegmentationSet:
        return SegmentationSet(np.concatenate([self.images, images]), np.concatenate([self.masks, masks]))

    def resized(self, side: int) -> SegmentationSet:
        return SegmentationSet(resize_images(self.images, side), resize_masks(self.masks, side))


def resize_images(images: Sequence[np.ndarray] | np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, side, side, 3]; INTER_AREA so that thin outlines survive shrinking."""
    out = np.empty((len(images), side, side, 3), np.uint8)
    for index, image in enumerate(images):
        out[index] = image if image.shape[:2] == (side, side) else _resize(image, side)
    return out


def resize_masks(masks: Sequence[np.ndarray] | np.ndarray, side: int) -> np.ndarray:
    """Bool [N, side, side] from bool/uint8 (0/255) or float probability masks; cut at one half."""
    out = np.empty((len(masks), side, side), bool)
    for index, mask in enumerate(masks):
        unit = mask.astype(np.float32) / (255 if mask.dtype == np.uint8 else 1)
        out[index] = (unit if unit.shape == (side, side) else _resize(unit, side)) >= 0.5
    return out


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    shrinking = array.shape[0] > side or array.shape[1] > side
    return cv2.resize(array, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# -- training -------------------------------------------------------------------------------------


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy (per pixel) plus soft Dice on the opaque class (per batch).

    Dice keeps small emojis from being drowned by background pixels; CE gives well-calibrated
    per-pixel probabilities, which the confidence threshold relies on.
    """
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
        foreground = torch.sigmoid(logits[:, 0])
    else:
        ce = F.cross_entropy(logits, target.long())
        foreground = torch.softmax(logits, dim=1)[:, 1]
    target = target.float()
    overlap = (foreground * target).sum()
    dice = 1 - (2 * overlap + 1) / (foreground.sum() + target.sum() + 1)
    return ce + dice, {"ce": ce.detach(), "dice": dice.detach()}


class BatchSource(Protocol):
    """A training set too large for memory (`emojich.segment.stream.ShardStream`)."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, seed: int, epoch: int
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def extended(self, images: np.ndarray, masks: np.ndarray) -> BatchSource: ...


def _memory_batches(
    dataset: SegmentationSet, batch: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches of an in-memory set: epoch e in `epoch_order(seed, e)`, the last partial batch dropped."""
    per_epoch = max(len(dataset) // batch, 1)
    for step in itertools.count():
        epoch, position = divmod(step, per_epoch)
        indices = epoch_order(len(dataset), seed, epoch)[position * batch : (position + 1) * batch].numpy()
        yield dataset.images[indices], dataset.masks[indices]


def _stream_batches(dataset: BatchSource, batch: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for epoch in itertools.count():
        for images, masks in dataset.batches(batch, seed, epoch):
            yield images.numpy(), masks.numpy()


def train_unet(
    model: nn.Module,
    dataset: SegmentationSet | BatchSource,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 42,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[float]:
    """Train `steps` AdamW steps on random horizontal flips of `dataset`; returns the losses.

    Deterministic under `seed`: the example order is `epoch_order(seed, epoch)` (a stream's
    own seeded order), the flips come from a seeded generator and the global RNG is forked, so
    callers' random state is untouched.
    """
    if len(dataset) == 0:
        raise ValueError("the segmentation training set is empty")
    if steps <= 0:
        return []
    device = torch.device(device) if device is not None else next(model.parameters()).device
    in_memory = isinstance(dataset, SegmentationSet)
    size = size or (dataset.images.shape[1] if in_memory else None)
    if size is None:
        raise ValueError("a streamed training set needs the network side `size`")
    batch = min(batch_size, len(dataset))
    source = _memory_batches(dataset, batch, seed) if in_memory else _stream_batches(dataset, batch, seed)
    flips = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # Cosine decay within the call: each round is a bounded fine-tune that should settle.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.05)
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = progress_bar(range(steps), desc="train U-Net", disable=not progress, leave=False)
        for _, (images, masks) in zip(bar, source, strict=False):
            inputs = to_network_input(images, size, device)
            target = torch.from_numpy(masks).to(device)
            if target.shape[-2:] != (size, size):
                target = F.interpolate(target[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
            flip = torch.rand(len(images), generator=flips) < 0.5
            inputs[flip] = inputs[flip].flip(-1)
            target[flip] = target[flip].flip(-1)
            loss, _ = dice_ce_loss(model(inputs), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        source.close()  # a stream's DataLoader workers stop here, not whenever it is collected
    model.eval()
    return losses


def evaluate(
    model: nn.Module,
    val_set: SegmentationSet,
    size: int,
    batch_size: int = 16,
    tolerance: int = 2,
    threshold: float = 0.99,
) -> dict[str, float]:
    """Mean IoU and boundary F of the U-Net's mask (P >= 0.5) against true alpha, and the share
    of real validation images whose confidence reaches `threshold` (`confident`).

    `confident` says how reachable the threshold is at this input size on images the U-Net does
    segment well: the pixels on either side of an outline are never certain, and at 128 px they
    are a far larger share of an image than at the report's 512 px.
    """
    if len(val_set) == 0:
        return {"iou": float("nan"), "boundary_f": float("nan"), "confident": float("nan")}
    probs, confidence = predict(model, val_set.images, batch_size, size)
    scores = mask_scores(probs >= 0.5, val_set.masks, tolerance)
    return {**scores, "confident": float((confidence >= threshold).mean())}


# -- rounds ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class RoundLabels:
    accepted: np.ndarray  # bool [N]
    confidence: np.ndarray  # float32 [N]
    alphas: list[np.ndarray]  # uint8 [H, W] per image: round(P(opaque) * 255)


def label_round(
    model: nn.Module, images: Sequence[np.ndarray], threshold: float, size: int, batch_size: int = 16
) -> RoundLabels:
    """Predict on `images` and accept exactly those with confidence >= `threshold`."""
    probs, confidence = predict_many(model, images, batch_size, size)
    alphas = [np.rint(p * 255).astype(np.uint8) for p in probs]
    return RoundLabels(confidence >= threshold, confidence, alphas)


@dataclasses.dataclass
class RoundRecord:
    round: int
    accepted_new: int
    accepted_total: int
    val_iou: float
    val_boundary_f: float
    fallback: int  # generated images still below the threshold after this round
    val_confident: float = math.nan  # share of real validation images at or above the threshold


def should_stop(
    history: Sequence[RoundRecord] | Sequence[float], min_delta: float, patience: int, max_rounds: int
) -> bool:
    """Stop after `max_rounds` pseudo-label rounds, or when the last `patience` rounds did not beat
    the best score before them by at least `min_delta`. `history[0]` is round 0 (real data only).

    A score that is NaN (no validation set) cannot show a plateau; then only `max_rounds` stops.
    """
    scores = [r.val_iou if isinstance(r, RoundRecord) else float(r) for r in history]
    if len(scores) - 1 >= max_rounds:
        return True
    if patience < 1 or len(scores) <= patience or any(math.isnan(s) for s in scores):
        return False
    best_before = max(scores[:-patience])
    return max(scores[-patience:]) < best_before + min_delta


@dataclasses.dataclass
class PseudoLabelConfig:
    threshold: float = 0.99  # the report's confidence threshold
    max_rounds: int = 4  # pseudo-label rounds after round 0
    min_delta: float = 0.002  # validation IoU gain that counts as improvement
    patience: int = 1
    steps_initial: int = 300  # round 0, on the real set
    steps_per_round: int = 100  # each later round, continuing from the previous weights
    batch_size: int = 16
    lr: float = 1e-3
    predict_batch_size: int = 32
    boundary_tolerance: int = 2
    seed: int = 42


@dataclasses.dataclass
class PseudoLabelResult:
    history: list[RoundRecord]
    confidence: np.ndarray  # float32 [M]: at acceptance, or from the last round for the rest
    accepted_round: np.ndarray  # int [M]: round that accepted the image, -1 = never (fallback)
    alphas: dict[int, np.ndarray]  # accepted image index -> uint8 alpha at the image's size

    @property
    def accepted(self) -> np.ndarray:
        return self.accepted_round >= 0


def run_pseudolabel(
    model: nn.Module,
    train_set: SegmentationSet | BatchSource,
    val_set: SegmentationSet,
    generated: Sequence[np.ndarray],
    config: PseudoLabelConfig,
    size: int,
    progress: bool = True,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> PseudoLabelResult:
    """Run rounds until `should_stop`; `train_set` must already be at the network side `size`."""
    count = len(generated)
    accepted_round = np.full(count, -1, np.int64)
    confidence = np.zeros(count, np.float32)
    alphas: dict[int, np.ndarray] = {}
    history: list[RoundRecord] = []
    current = train_set
    for round_index in range(config.max_rounds + 1):
        train_unet(
            model,
            current,
            config.steps_initial if round_index == 0 else config.steps_per_round,
            config.batch_size,
            config.lr,
            seed=config.seed + round_index,
            size=size,
            progress=progress,
        )
        scores = evaluate(
            model, val_set, size, config.predict_batch_size, config.boundary_tolerance, config.threshold
        )
        pending = np.flatnonzero(accepted_round < 0)
        new: list[int] = []
        for start in range(0, len(pending), _LABEL_CHUNK):
            chunk = pending[start : start + _LABEL_CHUNK]
            labels = label_round(
                model, [generated[i] for i in chunk], config.threshold, size, config.predict_batch_size
            )
            confidence[chunk] = labels.confidence
            for position in np.flatnonzero(labels.accepted):
                index = int(chunk[position])
                alphas[index] = labels.alphas[position]
                accepted_round[index] = round_index
                new.append(index)
        if new:
            current = current.extended(
                resize_images([generated[i] for i in new], size), resize_masks([alphas[i] for i in new], size)
            )
        record = RoundRecord(
            round=round_index,
            accepted_new=len(new),
            accepted_total=int((accepted_round >= 0).sum()),
            val_iou=scores["iou"],
            val_boundary_f=scores["boundary_f"],
            fallback=len(pending) - len(new),
            val_confident=scores["confident"],
        )
        history.append(record)
        if on_round:
            on_round(record)
        # With nothing left to label, further rounds would only retrain on an unchanged set.
        if record.fallback == 0 or should_stop(history, config.min_delta, config.patience, config.max_rounds):
            break
    return PseudoLabelResult(history, confidence, accepted_round, alphas)
