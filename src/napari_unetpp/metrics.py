"""Segmentation scores: IoU / Dice (pixel), per class, and instance AP at IoU 0.5.

Why these: IoU and Dice are what biologists and the UNet++ paper report per
depth; the DSB 2018 score (matched instances at IoU >= 0.5, TP / (TP + FP + FN))
says whether touching nuclei were really separated, which pixel scores cannot.
All functions take numpy arrays and return plain floats (JSON-able for the
checkpoint's metrics table). An empty prediction of an empty truth scores 1.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy import sparse

__all__ = [
    "iou",
    "dice",
    "confusion_counts",
    "per_class_scores",
    "ClassScores",
    "average_precision",
    "matched_ious",
]


def _check_shapes(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction shape {pred.shape} and truth shape {truth.shape} differ; "
            "compare arrays of the same shape"
        )


def confusion_counts(
    pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of two binary masks, leaving out ``ignore`` pixels.

    Exposed so that scores over many tiles can be summed before dividing
    (a global IoU, not a mean of per-tile IoUs).
    """
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    _check_shapes(pred, truth)
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        pred, truth = pred[keep], truth[keep]
    tp = int(np.count_nonzero(pred & truth))
    return tp, int(np.count_nonzero(pred & ~truth)), int(np.count_nonzero(~pred & truth))


def iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of binary masks (1.0 when both are empty)."""
    tp, fp, fn = confusion_counts(pred, truth, ignore)
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


def dice(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice (F1) of binary masks (1.0 when both are empty)."""
    tp, fp, fn = confusion_counts(pred, truth, ignore)
    total = 2 * tp + fp + fn
    return 1.0 if total == 0 else 2 * tp / total


class ClassScores(TypedDict):
    """What :func:`per_class_scores` returns (a plain dict, typed per key)."""

    iou: dict[int, float]
    dice: dict[int, float]
    mean_iou: float
    mean_dice: float


def per_class_scores(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: np.ndarray | None = None
) -> ClassScores:
    """IoU and Dice of every class of two class maps, and their foreground means.

    Returns ``{"iou": {c: ...}, "dice": {c: ...}, "mean_iou": ..., "mean_dice": ...}``;
    the means are over foreground classes 1..C-1 (class 0 is background) present
    in either map, or over all classes when ``num_classes == 1`` (binary maps).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check_shapes(pred, truth)
    classes = range(max(num_classes, 2))
    ious = {c: iou(pred == c, truth == c, ignore) for c in classes}
    dices = {c: dice(pred == c, truth == c, ignore) for c in classes}
    keep = ~np.asarray(ignore, bool) if ignore is not None else np.ones(pred.shape, bool)
    present = [c for c in classes if c > 0 and ((pred == c) | (truth == c))[keep].any()]
    return {
        "iou": ious,
        "dice": dices,
        "mean_iou": float(np.mean([ious[c] for c in present])) if present else 1.0,
        "mean_dice": float(np.mean([dices[c] for c in present])) if present else 1.0,
    }


def matched_ious(pred_instances: np.ndarray, true_instances: np.ndarray) -> np.ndarray:
    """IoU matrix ``(n_true, n_pred)`` between instances (0 = background), via one sparse table."""
    pred, truth = np.asarray(pred_instances), np.asarray(true_instances)
    _check_shapes(pred, truth)
    _, p = np.unique(pred.ravel(), return_inverse=True)
    p_ids = np.unique(pred)
    t_ids = np.unique(truth)
    _, t = np.unique(truth.ravel(), return_inverse=True)
    overlap = sparse.coo_matrix(
        (np.ones(p.size, np.int64), (t.ravel(), p.ravel())), shape=(t_ids.size, p_ids.size)
    ).toarray()
    t_area, p_area = overlap.sum(axis=1), overlap.sum(axis=0)
    union = t_area[:, None] + p_area[None, :] - overlap
    table = overlap / np.maximum(union, 1)
    return table[t_ids != 0][:, p_ids != 0]


def average_precision(
    pred_instances: np.ndarray, true_instances: np.ndarray, threshold: float = 0.5
) -> float:
    """DSB 2018 instance score at one IoU threshold: TP / (TP + FP + FN).

    A predicted and a true object match when their IoU exceeds ``threshold``;
    at 0.5 and above a match is unique, so no assignment problem needs solving.
    Below 0.5 the matching is greedy by IoU.
    """
    table = matched_ious(pred_instances, true_instances)
    n_true, n_pred = table.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    tp = _count_matches(table, threshold)
    fp, fn = n_pred - tp, n_true - tp
    return tp / (tp + fp + fn)


def _count_matches(table: np.ndarray, threshold: float) -> int:
    if table.size == 0:
        return 0
    hits = table > threshold
    if threshold >= 0.5:
        return int(hits.sum())
    used_t, used_p, matches = set(), set(), 0
    for flat in np.argsort(-table, axis=None):
        t, p = np.unravel_index(flat, table.shape)
        if not hits[t, p]:
            break
        if t not in used_t and p not in used_p:
            used_t.add(t)
            used_p.add(p)
            matches += 1
    return matches
