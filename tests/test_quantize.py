"""int8 inference (quantize.py): the shipped EM model's labels, the ConvTranspose rewrite,
the cache, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unetpp import predictor, quantize
from napari_unetpp.cli import main
from napari_unetpp.config import DataConfig, PredictConfig
from napari_unetpp.inference import predict, predict_array
from napari_unetpp.model import UNetPlusPlus


def test_int8_keeps_the_shipped_em_models_labels_on_every_head(em_stack):
    """On a held-back EM crop, every head in int8 (one pass) labels >= 98 % of the pixels as
    float32 does, and its membrane IoU stays within 0.01 of float32's."""
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("em")
    image, membranes = em_stack[0][15, :256, :256], em_stack[1][15, :256, :256] > 0
    probs = {}
    for int8 in (False, True):
        config = PredictConfig(device="cpu", tile_size=(128, 128), mixed_precision=False, int8=int8)
        start = next(iter(predict(model, image, config, info.data)))
        assert ("(int8)" in start.message) == int8  # the start says the precision
        probs[int8] = predict_array(model, image, config, info.data)
    assert sorted(probs[True]) == [1, 2, 3, 4]
    for d in (1, 2, 3, 4):
        labels = {k: p[d] > 0.5 for k, p in probs.items()}
        iou = {k: (v & membranes).sum() / (v | membranes).sum() for k, v in labels.items()}
        assert (labels[True] == labels[False]).mean() >= 0.98, d
        assert abs(iou[True] - iou[False]) <= 0.01, d
        assert iou[False] > 0.6  # a real segmentation, not noise
        assert not np.array_equal(probs[True][d], probs[False][d])  # int8 really ran


def test_int8_covers_a_pruned_network_and_is_cached(em_stack, monkeypatch):
    """``pruned_depth`` runs the pruned network in int8; predicting the same image again
    reuses the int8 copy (no second calibration), a different image calibrates anew."""
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("em")
    built, make = [], quantize.int8_network
    monkeypatch.setattr(
        quantize, "int8_network", lambda *a, **k: built.append(a[1]) or make(*a, **k)
    )
    config = PredictConfig(device="cpu", tile_size=(64, 64), pruned_depth=2, int8=True)
    image = em_stack[0][16, :128, :128]
    first = predict_array(model, image, config, info.data)
    again = predict_array(model, image, config, info.data)
    assert sorted(first) == [2] and built == [(2,)]
    np.testing.assert_array_equal(first[2], again[2])
    predict_array(model, em_stack[0][17, :128, :128], config, info.data)
    assert built == [(2,), (2,)]


def test_shuffle_up_equals_the_transposed_convolution_in_float32():
    torch.manual_seed(0)
    up = torch.nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        expected = up(x)
        got = quantize.ShuffleUp(up)(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_int8_refuses_what_it_cannot_run_with_the_fix():
    net2d = UNetPlusPlus(widths=(4, 8), depth=1).eval()
    with pytest.raises(ValueError, match="CPU only.*device='cpu'"):
        predictor.prepare_int8(net2d, (1,), torch.device("cuda"))
    with pytest.raises(ValueError, match="CPU only.*int8=False"):
        predictor.prepare_int8(net2d, (1,), torch.device("mps"))
    net3d = UNetPlusPlus(widths=(4, 8), depth=1, spatial_dims=3)
    with pytest.raises(ValueError, match="2D models only.*int8=False"):
        predictor.prepare_int8(net3d, (1,), torch.device("cpu"))
    instance = UNetPlusPlus(widths=(4, 8), depth=1, norm="instance")
    with pytest.raises(ValueError, match="BatchNorm.*norm='batch'"):
        config = PredictConfig(device="cpu", int8=True)
        predict_array(instance, np.zeros((32, 32), "uint8"), config, DataConfig())
    with pytest.raises(ValueError, match="adaptive.*int8=False"):
        PredictConfig(int8=True, adaptive_depth=True)
    with pytest.raises(ValueError, match="int8 must be true or false"):
        PredictConfig(int8="yes")  # type: ignore[arg-type]


def test_int8_flag_is_recorded_and_replayed(tmp_path: Path, capsys, em_stack) -> None:
    """`predict --int8` runs in int8 and says so in run.json (so --config replays it)."""
    np.save(tmp_path / "em.npy", em_stack[0][15, :128, :128])
    argv = ["predict", "zoo:em", str(tmp_path / "em.npy"), "-q", "--no-check", "--depth", "1"]
    assert main([*argv, "--int8", "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    run = json.loads((tmp_path / "a" / "em_run.json").read_text())["predict"]
    assert run["int8"] is True


def test_calibration_uses_the_centre_of_each_tile_on_the_pooling_grid():
    x = torch.arange(2 * 64 * 48, dtype=torch.float32).reshape(2, 1, 64, 48)
    centre = quantize._centres(x, 16)
    torch.testing.assert_close(centre, x[:, :, 16:48, 16:32])
    assert quantize._centres(x[:, :, :16, :16], 16).shape == (2, 1, 16, 16)  # one cell: whole


def test_int8_refusal_names_why_the_dock_greys_its_switch(monkeypatch):
    """``int8_refusal``: None for a 2D batch-norm model on a CPU without bf16; else why not
    (a GPU, also through 'auto'; a CPU with bf16; a 3D model; instance norm)."""
    from napari_unetpp import devices

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    flat = UNetPlusPlus(widths=(4, 8), depth=1)
    assert quantize.int8_refusal(flat, "cpu") is None
    assert "2D models only" in str(
        quantize.int8_refusal(UNetPlusPlus(widths=(4, 8), depth=1, spatial_dims=3))
    )
    assert "BatchNorm" in str(
        quantize.int8_refusal(UNetPlusPlus(widths=(4, 8), depth=1, norm="instance"))
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("auto", "cuda"):
        assert "CPU only" in str(quantize.int8_refusal(flat, device))
    assert quantize.int8_refusal(flat, "cpu") is None
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert "bfloat16" in str(quantize.int8_refusal(flat, "cpu"))
