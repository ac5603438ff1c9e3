"""Mask agreement scores: intersection over union and the boundary F-score.

Both take binary masks [H, W] or batches [N, H, W] and return a float or an array [N].
IoU alone hides edge quality (a mask one pixel too fat on a large emoji still scores ~0.97),
which is exactly what a sticker outline shows, so the boundary F-score is reported beside it:
boundary pixels of one mask count as matched when the other mask's boundary lies within
`tolerance` pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

# OpenCV morphology handles at most this many channels in one call.
_CV_MAX_CHANNELS = 128


def _as_batch(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 2:
        return mask[None], True
    if mask.ndim != 3:
        raise ValueError(f"expected a mask [H, W] or [N, H, W], got shape {mask.shape}")
    return mask, False


def _result(values: np.ndarray, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


def iou(pred: np.ndarray, target: np.ndarray) -> float | np.ndarray:
    """|pred ∩ target| / |pred ∪ target|; two empty masks agree perfectly (1.0)."""
    pred, single = _as_batch(pred)
    target, _ = _as_batch(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    inter = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    return _result(np.where(union > 0, inter / np.maximum(union, 1), 1.0), single)


def _morph(op, masks: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Apply a cv2 morphology op to every mask of [N, H, W] (masks become channels)."""
    out = np.empty_like(masks)
    for start in range(0, len(masks), _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(masks[start : start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        result = op(chunk, kernel)
        out[start : start + _CV_MAX_CHANNELS] = (result[..., None] if result.ndim == 2 else result).transpose(
            2, 0, 1
        )
    return out


def boundaries(masks: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of each mask; the image frame itself is not a boundary."""
    masks, _ = _as_batch(masks)
    as_u8 = masks.astype(np.uint8)
    # cv2.erode pads with the maximum value by default, so a mask touching the frame is not
    # eroded there: an emoji cut off by the image edge has no outline along that edge.
    eroded = _morph(cv2.erode, as_u8, np.ones((3, 3), np.uint8))
    return masks & ~eroded.astype(bool)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def boundary_f_score(pred: np.ndarray, target: np.ndarray, tolerance: int = 2) -> float | np.ndarray:
    """F1 of boundary precision and recall at `tolerance` px; 1.0 when neither has a boundary."""
    pred, single = _as_batch(pred)
    target, _ = _as_batch(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    pred_edge, target_edge = boundaries(pred), boundaries(target)
    kernel = _disk(tolerance)
    near_target = _morph(cv2.dilate, target_edge.astype(np.uint8), kernel).astype(bool)
    near_pred = _morph(cv2.dilate, pred_edge.astype(np.uint8), kernel).astype(bool)
    pred_count = pred_edge.sum(axis=(1, 2))
    target_count = target_edge.sum(axis=(1, 2))
    precision = (pred_edge & near_target).sum(axis=(1, 2)) / np.maximum(pred_count, 1)
    recall = (target_edge & near_pred).sum(axis=(1, 2)) / np.maximum(target_count, 1)
    f_score = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0
    )
    f_score = np.where((pred_count == 0) & (target_count == 0), 1.0, f_score)
    return _result(f_score, single)


def mask_scores(pred: np.ndarray, target: np.ndarray, tolerance: int = 2) -> dict[str, float]:
    """Mean IoU and boundary F over a batch (what rounds.csv and metrics.json report)."""
    pred, _ = _as_batch(pred)
    target, _ = _as_batch(target)
    if len(pred) == 0:
        return {"iou": float("nan"), "boundary_f": float("nan")}
    return {
        "iou": float(np.mean(iou(pred, target))),
        "boundary_f": float(np.mean(boundary_f_score(pred, target, tolerance))),
    }
