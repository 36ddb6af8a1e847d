"""IoU / Dice with ignore masks, per-class scores, DSB-style instance AP."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp import metrics


def test_iou_and_dice_simple():
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 1, 0], bool)
    assert metrics.iou(pred, truth) == pytest.approx(1 / 3)
    assert metrics.dice(pred, truth) == pytest.approx(0.5)
    assert metrics.iou(np.zeros(3), np.zeros(3)) == 1.0


def test_ignore_mask_removes_pixels():
    pred = np.array([1, 1, 0, 0])
    truth = np.array([1, 0, 1, 0])
    ignore = np.array([0, 1, 1, 0], bool)
    assert metrics.iou(pred, truth, ignore) == 1.0
    assert metrics.dice(pred, truth, ignore) == 1.0


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        metrics.iou(np.zeros(2), np.zeros(3))


def test_per_class_scores():
    pred = np.array([0, 1, 1, 2, 2, 0])
    truth = np.array([0, 1, 2, 2, 2, 0])
    scores = metrics.per_class_scores(pred, truth, 3)
    assert scores["iou"][1] == pytest.approx(0.5)
    assert scores["iou"][2] == pytest.approx(2 / 3)
    assert scores["mean_iou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scores["dice"][2] == pytest.approx(0.8)


def test_average_precision_dsb_style():
    truth = np.zeros((20, 20), int)
    truth[0:5, 0:5] = 1
    truth[10:15, 10:15] = 2
    truth[0:4, 15:19] = 3
    pred = np.zeros_like(truth)
    pred[0:5, 0:5] = 7  # perfect match
    pred[10:15, 10:12] = 8  # IoU 0.4 -> no match: FP and FN
    pred[18:20, 0:2] = 9  # false positive
    # TP 1, FP 2 (8, 9), FN 2 (2, 3)
    assert metrics.average_precision(pred, truth) == pytest.approx(1 / 5)
    assert metrics.average_precision(truth, truth) == 1.0
    assert metrics.average_precision(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert metrics.average_precision(np.zeros_like(truth), truth) == 0.0


def test_average_precision_low_threshold_matches_one_to_one():
    truth = np.zeros((4, 8), int)
    truth[:, :4] = 1
    truth[:, 4:] = 2
    pred = np.ones_like(truth)  # one object covering both: IoU 0.5 with each
    assert metrics.average_precision(pred, truth, threshold=0.3) == pytest.approx(1 / 2)
