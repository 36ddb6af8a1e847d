"""Pruning: exact sub-networks, per-depth evaluation table, depth recommendation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_unetpp import pruning
from napari_unetpp.config import DataConfig, ModelConfig
from napari_unetpp.model import UNetPlusPlus


def _model(num_classes: int = 1) -> UNetPlusPlus:
    torch.manual_seed(0)
    return UNetPlusPlus(num_classes=num_classes, widths=(4, 8, 16, 32), depth=3).eval()


def test_prune_equals_head_of_full_model():
    model = _model()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        for d in (1, 2, 3):
            small = pruning.prune(model, d)
            torch.testing.assert_close(small(x)[d], full[d])
            assert small.num_parameters() == model.num_parameters(d)


def test_evaluate_depths_table_layout_and_scores():
    labels = np.zeros((48, 48), np.uint8)
    labels[disk((24, 24), 10)] = 1
    image = labels.astype(np.float32) + 0.1
    table = pruning.evaluate_depths(_model(), [image], [labels], DataConfig(), tile_size=(32, 32))
    assert sorted(table) == [1, 2, 3]
    for row in table.values():
        assert 0 <= row["iou"] <= 1 and 0 <= row["dice"] <= 1
        assert row["parameters"] > 0 and row["ms_per_mpx"] > 0
    assert table[1]["parameters"] < table[2]["parameters"] < table[3]["parameters"]


def test_score_tiles_perfect_and_ignored_pixels():
    class Oracle(torch.nn.Module):
        """Predicts the truth hidden in the input (channel 0 > 0.5), at every depth."""

        head_depths = (1, 2)

        def forward(self, x):
            logits = (x[:, :1] - 0.5) * 10
            return {1: logits, 2: -logits}

    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    truth[:, 0] = -1
    tiles = [(t[None].astype(np.float32), t) for t in truth]
    scores, loss = pruning.score_tiles(Oracle(), tiles, num_classes=1)
    assert loss is None
    assert scores[1]["iou"] == pytest.approx(1.0)
    assert scores[2]["iou"] < 0.1


def test_multiclass_and_instance_scores():
    model = _model(num_classes=3)
    rng = np.random.default_rng(0)
    tiles = [(rng.random((1, 16, 16)).astype(np.float32), rng.integers(0, 3, (16, 16)))]
    scores, _ = pruning.score_tiles(model, tiles, num_classes=3)
    fg, _ = pruning.score_tiles(model, tiles, num_classes=3, foreground_only=True)
    assert set(scores) == {1, 2, 3} and set(fg) == {1, 2, 3}
    assert all(0 <= s["iou"] <= 1 for s in scores.values())


def test_recommend_depth_shallowest_within_tolerance():
    table = {"1": {"iou": 0.80}, "2": {"iou": 0.895}, "3": {"iou": 0.90}, "4": {"iou": 0.899}}
    assert pruning.recommend_depth(table) == 2
    assert pruning.recommend_depth(table, tolerance=0.0) == 3
    assert pruning.recommend_depth(table, tolerance=0.2) == 1
    assert pruning.recommend_depth({1: {"iou": None}, 2: {"iou": None}}) == 2
    with pytest.raises(ValueError):
        pruning.recommend_depth({})


def test_gflop_per_mpx_is_the_exact_count():
    """Depth 1 of widths (4, 8), counted by hand (2 FLOP per multiply-add, per output pixel):
    X00 1->4->4: 72 + 288; X10 at 1/4 of the pixels 4->8->8: (576 + 1152) / 4;
    X01 up 8->4 (k2 s2): 64, then 8->4->4: 576 + 288; head 4->1: 8. Sum 1728 FLOP/px."""
    config = ModelConfig(widths=(4, 8, 16), depth=2)
    assert pruning.gflop_per_mpx(config, 1) == pytest.approx(1.728)
    model = UNetPlusPlus.from_config(config)
    assert pruning.gflop_per_mpx(model, 1, (64, 64)) == pytest.approx(1.728)  # any tile
    assert pruning.gflop_per_mpx(model, 2) > 2 * pruning.gflop_per_mpx(model, 1)
    paper = [pruning.gflop_per_mpx(ModelConfig(), d) for d in (1, 2, 3, 4)]
    print("paper widths GFLOP/Mpx L1..L4:", [round(g, 1) for g in paper])
    assert paper[3] / paper[1] == pytest.approx(3.35, abs=0.01)  # the FLOP ratios
    assert paper[3] / paper[0] == pytest.approx(8.56, abs=0.01)
    with pytest.raises(ValueError, match="no head at depth 3"):
        pruning.gflop_per_mpx(config, 3)


def test_median_seconds_warms_up_and_takes_the_median():
    calls: list[int] = []
    durations = iter([0.0, 0.03, 0.0, 0.0])  # warm-up, then one disturbed run of three

    def run() -> None:
        calls.append(1)
        end = time.perf_counter() + next(durations)
        while time.perf_counter() < end:
            pass

    seconds = pruning.median_seconds(run, repeats=3, warmup=1)
    assert len(calls) == 4
    assert seconds < 0.02  # the disturbed run does not set the result (it would as a mean)


def test_depth_costs_pair_exact_flops_with_a_measured_time():
    costs = pruning.depth_costs(_model(), tile_shape=(32, 32), repeats=2)
    assert sorted(costs) == [1, 2, 3]
    for d, row in costs.items():
        assert row["gflop_per_mpx"] == pruning.gflop_per_mpx(_model(), d, (32, 32))
        assert row["ms_per_mpx"] > 0
        assert row["gflop_s"] == pytest.approx(row["gflop_per_mpx"] / row["ms_per_mpx"] * 1e3)
