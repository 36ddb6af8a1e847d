"""Config dataclasses validate their values and round-trip through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unetpp.config import (
    DataConfig,
    ModelConfig,
    NormalizationConfig,
    PredictConfig,
    TrainConfig,
)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(num_classes=3, class_names=("background", "interior", "boundary")),
        DataConfig(normalization=NormalizationConfig.ct_window(), label_mode="sparse"),
        TrainConfig(patch_size=(32, 64, 64), iterations=5),
        PredictConfig(depths=(1, 3), tile_size=(128, 128)),
    ],
)
def test_round_trip_through_json(config):
    again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_model_config_keeps_only_the_widths_it_uses():
    assert ModelConfig(widths=(8, 16, 32, 64, 128), depth=2).widths == (8, 16, 32)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ModelConfig(spatial_dims=4), "spatial_dims"),
        (lambda: ModelConfig(depth=5), "needs 6 widths"),
        (lambda: ModelConfig(num_classes=2, class_names=("a",)), "class_names"),
        (lambda: NormalizationConfig(low=10, high=5), "below high"),
        (lambda: TrainConfig(validation_fraction=1.0), "validation_fraction"),
        (lambda: PredictConfig(overlap=1.0), "overlap"),
        (lambda: DataConfig(label_mode="scribble"), "label_mode"),
        (lambda: DataConfig(label_mode="sparse", class_values=(1,)), "label 1 means background"),
        (lambda: PredictConfig(threshold=1.5), "threshold"),
        (lambda: ModelConfig(threshold=0.0), "threshold must lie in"),
        (lambda: ModelConfig(threshold="0.7"), "threshold must be a number"),
        (lambda: PredictConfig(pixel_size=(4, 4, 4, 4)), "one per spatial"),
    ],
)
def test_bad_values_fail_where_they_are_written(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"iteratons": 10})


def test_ct_window_is_a_clipped_hounsfield_window():
    window = NormalizationConfig.ct_window(center=40, width=400)
    assert (window.mode, window.low, window.high, window.clip) == ("window", -160, 240, True)


@pytest.mark.parametrize(
    "cls, fields",
    [
        (DataConfig, {"channel_axis": "x"}),
        (DataConfig, {"class_values": [[1]]}),
        (NormalizationConfig, {"low": "a"}),
        (NormalizationConfig, {"clip": "no"}),  # truthy: it clipped
        (NormalizationConfig, {"min_foreground": "x"}),
        (ModelConfig, {"class_names": 5}),
        (ModelConfig, {"object_diameter": "x"}),
        (TrainConfig, {"freeze_norm": "x"}),  # truthy: it froze
    ],
)
def test_a_hostile_config_json_field_is_a_value_error(cls, fields):
    """A checkpoint's config.json or a run.json with a wrong type where a number, a flag or
    a list goes: a TypeError (a traceback in the CLI) or silently accepted before."""
    with pytest.raises(ValueError, match=f"{cls.__name__}.{next(iter(fields))} must be"):
        cls.from_dict(fields)


@pytest.mark.parametrize(
    "cls, fields",
    [
        (PredictConfig, {"rescale": np.float32(0.5), "overlap": np.float32(0.3)}),
        (PredictConfig, {"depth_tolerance": np.float32(0.1), "batch_size": np.int64(2)}),
        (PredictConfig, {"tta": np.bool_(True), "tile_size": np.array([64, 64])}),
        (ModelConfig, {"object_diameter": np.float32(18.1), "deep_supervision": np.bool_(1)}),
        (TrainConfig, {"learning_rate": np.float32(1e-3), "augment_scale": np.float32([1, 2])}),
        (TrainConfig, {"freeze_norm": np.bool_(False), "preserve_weight": np.float16(1)}),
        (NormalizationConfig, {"low": np.float32(1), "high": np.float32(99), "clip": np.bool_(1)}),
        (DataConfig, {"boundary_width": np.int64(2), "channel_axis": np.int32(-1)}),
    ],
)
def test_numpy_scalars_are_numbers_and_round_trip(cls, fields):
    """A value computed with numpy (a measured diameter, a layer's scale) is a number to a
    Python user: np.float32 and np.bool_ were refused as 'must be a number' / 'true or
    false' (np.float64 passed, being a float), and to_dict must stay plain JSON."""
    config = cls(**fields)
    text = json.dumps(config.to_dict(), allow_nan=False)
    assert type(config).from_dict(json.loads(text)) == config
    for name, value in fields.items():
        assert getattr(config, name) == pytest.approx(value if np.ndim(value) else value.item())


def test_the_models_threshold_round_trips_and_predict_defers_to_it():
    """``ModelConfig.threshold`` (chosen on validation by the zoo script) survives config.json;
    ``PredictConfig.threshold`` defaults to None, "the model's own"."""
    config = ModelConfig(num_classes=3, threshold=0.7)
    assert ModelConfig.from_dict(config.to_dict()).threshold == 0.7
    assert ModelConfig().threshold is None
    assert PredictConfig().threshold is None and PredictConfig(threshold=0.4).threshold == 0.4
