"""Scale end to end: resampling helpers, object diameters, configs, predict at the model's scale."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unetpp import metrics as M
from napari_unetpp import scale as S
from napari_unetpp.config import DataConfig, ModelConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus

# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    ("shape", "dims", "channel_axis", "zoom"),
    [
        ((33, 47), 2, None, (0.37, 1.9)),  # 2D, odd sizes
        ((3, 33, 47), 2, None, (0.5, 2.0)),  # a stack for a 2D model (slice-wise)
        ((9, 17, 23), 3, None, (1.7, 0.6, 0.33)),  # 3D
        ((33, 47, 3), 2, -1, (0.51, 1.49)),  # 2D with channels last
        ((2, 9, 17, 23), 3, 0, (2.0, 0.5, 1.3)),  # 3D with channels first
        ((4, 2, 31, 29), 2, 1, (3.1, 0.27)),  # time, channels, YX
    ],
)
def test_resample_round_trip_shapes_are_exact(shape, dims, channel_axis, zoom):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    axes = S.spatial_axes(len(shape), dims, channel_axis)
    small = S.resample(image, zoom, axes)
    expected = list(shape)
    for axis, size in zip(axes, S.scaled_shape([shape[a] for a in axes], zoom), strict=True):
        expected[axis] = size
    assert small.shape == tuple(expected)
    assert S.resample_to(small, shape, axes).shape == shape
    if channel_axis is not None:  # channels are never mixed: each one is resampled alone
        one = S.resample(np.take(image, [1], axis=channel_axis), zoom, axes)
        np.testing.assert_allclose(np.take(small, [1], axis=channel_axis), one, atol=1e-6)


def test_resample_keeps_values_where_it_should():
    flat = np.full((20, 30), 7.0, np.float32)
    np.testing.assert_allclose(S.resample(flat, (0.3, 2.2), (0, 1)), 7.0, atol=1e-5)
    labels = np.zeros((20, 30), np.uint16)
    labels[5:15, 5:12], labels[2:8, 20:28] = 3, 9
    up = S.resample(labels, (2.0, 2.0), (0, 1), order=0)
    assert up.dtype == np.uint16 and set(np.unique(up)) == {0, 3, 9}
    with pytest.raises(ValueError, match="except on axes"):
        S.resample_to(flat, (10, 31), (0,))


def test_resample_reads_and_writes_block_by_block():
    """A zarr output is written plane by plane (big stacks never sit in memory twice)."""
    import zarr

    image = np.random.default_rng(1).random((3, 21, 19)).astype(np.float32)
    target = zarr.zeros((3, 42, 38), dtype="float32", chunks=(1, 42, 38))
    S.resample_to(image, (3, 42, 38), (1, 2), out=target)
    np.testing.assert_allclose(target[...], S.resample(image, (2, 2), (1, 2)), atol=1e-6)


def test_pixel_size_to_zoom_converts_units_and_picks_model_axes():
    assert S.zoom_from_pixel_size((1.0, 1.0), (3.0, 3.0)) == pytest.approx((1 / 3, 1 / 3))
    # a layer's ZYX scale for a 2D model: the in-plane sizes, converted um -> nm
    assert S.zoom_from_pixel_size((0.05, 0.008, 0.008), (4.0, 4.0), "um", "nm") == pytest.approx(
        (2.0, 2.0)
    )
    assert S.zoom_from_pixel_size((2.0,), (4.0, 4.0, 4.0)) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="one per spatial axis"):
        S.model_axes_pixel_size((1.0, 1.0), 3)
    with pytest.raises(ValueError, match="unknown pixel unit"):
        S.convert_pixel_size((1.0,), "inch", "mm")
    with pytest.raises(ValueError, match="unit"):
        S.check_zoom(S.zoom_from_pixel_size((1.0, 1.0), (3.0, 3.0), "um", "mm"))
    with pytest.raises(ValueError, match=r"zoom \(2\.5e-25, 2\.5e-25\)"):  # was "(0.0, 0.0)"
        S.check_zoom(S.zoom_from_pixel_size((1e-30, 1e-30), (4.0, 4.0), "mm", "nm"))


# --------------------------------------------------------------------------- diameters


def _disc(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_median_object_diameter_of_discs_and_spheres():
    labels = np.zeros((100, 100), np.int32)
    for k, (centre, radius) in enumerate((((20, 20), 8), ((60, 30), 10), ((50, 75), 12)), 1):
        labels[_disc(labels.shape, centre, radius)] = k
    d = S.median_object_diameter(labels)
    print("median diameter of discs of radius 8, 10, 12:", d)
    assert d == pytest.approx(20.0, abs=0.5)
    assert S.foreground_diameter(labels > 0) == pytest.approx(d)
    ball = _disc((30, 30, 30), (15, 15, 15), 6).astype(np.uint8)
    assert S.median_object_diameter(ball) == pytest.approx(12.0, abs=0.6)
    assert np.isnan(S.median_object_diameter(np.zeros((5, 5), np.int32)))


def test_auto_rescale_decisions():
    big = np.full(20, 40.0)
    factor, why = S.auto_rescale(20.0, big)
    assert factor == pytest.approx(0.5) and "40.0 px" in why
    assert S.auto_rescale(20.0, np.full(20, 21.0))[0] == 1.0  # close enough
    assert S.auto_rescale(20.0, np.full(3, 60.0))[0] == 1.0  # too few objects
    assert S.auto_rescale(20.0, np.full(20, 400.0))[0] == S.AUTO_CLAMP[0]
    assert S.auto_rescale(20.0, np.full(20, 4.0))[0] == S.AUTO_CLAMP[1]  # 5x, clamped
    assert S.auto_rescale(20.0, np.full(20, 12.0))[0] == 1.0  # smaller: not enlarged


# --------------------------------------------------------------------------- configs


def test_config_scale_fields_validate_and_old_files_load():
    old = ModelConfig().to_dict()
    for key in ("pixel_size", "pixel_unit", "object_diameter"):
        old.pop(key)
    assert ModelConfig.from_dict(old).pixel_size == ()
    ct = ModelConfig(num_classes=6, pixel_size=(3, 3), pixel_unit="mm")
    assert ModelConfig.from_dict(ct.to_dict()) == ct
    for bad, match in (
        (dict(pixel_size=(3.0,), pixel_unit="mm"), "2 value"),
        (dict(pixel_size=(3.0, 3.0)), "pixel_unit"),
        (dict(pixel_unit="mm"), "pixel_size is empty"),
        (dict(object_diameter=0.0), "object_diameter"),
    ):
        with pytest.raises(ValueError, match=match):
            ModelConfig(**bad)
    assert PredictConfig.from_dict(
        PredictConfig(pixel_size=(1, 2), rescale="auto").to_dict()
    ) == PredictConfig(pixel_size=(1.0, 2.0), rescale="auto")
    for bad, match in (
        (dict(rescale=0.0), "0.1..10"),
        (dict(rescale=float("nan")), "0.1..10"),
        (dict(rescale="big"), "'auto'"),
        (dict(pixel_size=(-1.0,)), "positive"),
        (dict(pixel_size=()), "positive"),
        (dict(pixel_size="2"), "positive"),
        (dict(pixel_size=(1.0, "x")), "positive"),
        (dict(pixel_size=object()), "positive"),
        (dict(pixel_unit="m"), "pixel_unit"),
    ):
        with pytest.raises(ValueError, match=match):
            PredictConfig(**bad)
    # "one for all" as a plain number (a float, numpy's too), as the message promises
    assert PredictConfig(pixel_size=2.0).pixel_size == (2.0,)
    assert PredictConfig(pixel_size=np.float32(0.5)).pixel_size == (0.5,)


# --------------------------------------------------------------------------- predict (tiny net)


def _net(spatial_dims=2, in_channels=1, **scale):
    net = UNetPlusPlus(
        in_channels=in_channels, widths=(4, 8, 16), depth=2, spatial_dims=spatial_dims
    ).eval()
    net.config = net.config.replace(**scale)
    return net


CPU = dict(device="cpu", mixed_precision=False)


@pytest.mark.parametrize(
    ("shape", "dims", "channel_axis", "tile"),
    [
        ((37, 45), 2, None, (64, 64)),
        ((3, 37, 45), 2, None, (64, 64)),
        ((2, 37, 45), 2, 0, (64, 64)),
        ((11, 19, 21), 3, None, (16, 32, 32)),
    ],
)
def test_predict_with_pixel_size_returns_the_input_grid(shape, dims, channel_axis, tile):
    channels = 2 if channel_axis is not None else 1
    net = _net(dims, channels, pixel_size=(2.0,) * dims, pixel_unit="um")
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    data = DataConfig(channel_axis=channel_axis)
    result = predict_array(
        net, image, PredictConfig(pixel_size=(1.0,), tile_size=tile, **CPU), data
    )
    expected = tuple(s for a, s in enumerate(shape) if a != channel_axis)
    assert {d: p.shape for d, p in result.items()} == {1: expected, 2: expected}
    assert result.scale["zoom"] == [0.5] * dims and result.complete
    plain = predict_array(net, image, PredictConfig(tile_size=tile, **CPU), data)
    assert plain.scale is None


def test_predict_scale_one_or_unknown_model_scale_changes_nothing():
    net = _net()
    image = np.random.default_rng(3).random((40, 52)).astype(np.float32)
    plain = predict_array(net, image, PredictConfig(**CPU), DataConfig())
    same = predict_array(net, image, PredictConfig(rescale=1.0, **CPU), DataConfig())
    ignored = predict_array(net, image, PredictConfig(pixel_size=(0.3,), **CPU), DataConfig())
    for d in plain:
        np.testing.assert_array_equal(plain[d], same[d])
        np.testing.assert_array_equal(plain[d], ignored[d])
    assert "no training pixel size" in ignored.scale["note"]
    with pytest.raises(ValueError, match="object_diameter"):
        predict_array(net, image, PredictConfig(rescale="auto", **CPU), DataConfig())


def test_rescaled_and_adaptive_zarr_outputs_are_marked_complete_and_keep_their_maps(tmp_path):
    """Resampled (and adaptive-depth) stores carry the completeness mark readers check, and
    an adaptive run's depth-used and disagreement maps come back on the input's grid."""
    from napari_unetpp.files import read_array

    net = _net(pixel_size=(2.0, 2.0), pixel_unit="um")
    image = np.random.default_rng(5).random((2, 33, 41)).astype(np.float32)
    for name, extra in (("rescaled", {}), ("adaptive", {"adaptive_depth": True})):
        config = PredictConfig(pixel_size=(1.0,), tile_size=(32, 32), **extra, **CPU)
        store = tmp_path / f"{name}.zarr"
        result = predict_array(net, image, config, DataConfig(), out=store)
        assert result.complete
        assert read_array(store).shape[-2:] == (33, 41)  # not refused as "incomplete"
    assert result.depth_map.shape == image.shape
    assert set(np.unique(result.depth_map)) <= {1, 2}
    assert result.disagreement.shape == image.shape


def test_predict_rescaled_to_zarr(tmp_path):
    net = _net()
    image = np.random.default_rng(4).random((2, 33, 41)).astype(np.float32)
    result = predict_array(
        net, image, PredictConfig(rescale=1.7, **CPU), DataConfig(), out=tmp_path / "p.zarr"
    )
    assert result.path == tmp_path / "p.zarr"
    assert all(a.shape == image.shape for a in result.values())
    in_memory = predict_array(net, image, PredictConfig(rescale=1.7, **CPU), DataConfig())
    np.testing.assert_allclose(result[2][...], in_memory[2], atol=1e-6)


# --------------------------------------------------------------------------- real data


def _nuclei_pair(data_dir, image_id):
    from skimage import io

    from napari_unetpp.normalization import rgb_to_grey

    image = io.imread(data_dir / "nuclei_dsb2018" / "images" / f"{image_id}.png")
    if image.ndim == 3:
        image = rgb_to_grey(image)
    return image, tifffile.imread(data_dir / "nuclei_dsb2018" / "labels" / f"{image_id}.tif")


def test_nuclei_upscaled_2x_scores_near_native_with_auto_rescale(data_dir):
    """The issue's case: nuclei larger than DSB's shatter; auto rescale measures and fixes it."""
    from napari_unetpp import zoo
    from napari_unetpp.postprocess import probabilities_to_labels

    model, info = zoo.load_pretrained("nuclei")
    held_back = "4590d7d47f521df6"  # fluorescence, 23 nuclei of ~20 px in this crop
    assert held_back in zoo.NUCLEI_HELD_OUT_IDS
    image, truth = _nuclei_pair(data_dir, held_back)
    image, truth = image[:128, :128], truth[:128, :128]
    big = S.resample(image, (2, 2), (0, 1))
    big_truth = S.resample_to(truth, big.shape, (0, 1), order=0)
    config = PredictConfig(pruned_depth=4, **CPU)

    def score(img, ref, **scale):
        result = predict_array(model, img, config.replace(**scale), info.data)
        labels = probabilities_to_labels(result[4], model.config, info.data)
        return M.iou(labels > 0, ref > 0), M.average_precision(labels, ref, 0.5), result.scale

    native_iou, native_ap, _ = score(image, truth)
    shifted_iou, shifted_ap, _ = score(big, big_truth)
    auto_iou, auto_ap, used = score(big, big_truth, rescale="auto")
    print(
        f"IoU / AP50: native {native_iou:.3f} / {native_ap:.3f}, 2x {shifted_iou:.3f} / "
        f"{shifted_ap:.3f}, 2x auto {auto_iou:.3f} / {auto_ap:.3f}; {used['note']}"
    )
    assert used["passes"] == 2 and 0.4 <= used["zoom"][0] <= 0.65
    assert auto_iou >= native_iou - 0.03  # the floor for nuclei at 2x
    assert auto_ap > shifted_ap  # the shattered nuclei are whole again


def test_auto_rescale_ignores_specks_of_large_dim_nuclei_and_still_enlarges_tiny_ones(data_dir):
    """Large, dim, noisy nuclei (a held-back image at 2x: ~79 px against the model's 18 px):
    the first pass finds mostly specks and fragments of a few px, whose median once asked
    for a 2.75x enlargement (IoU 0.06); nuclei really shrunk to ~6 px are still enlarged."""
    from napari_unetpp import zoo
    from napari_unetpp.postprocess import probabilities_to_labels

    model, info = zoo.load_pretrained("nuclei")
    config = PredictConfig(pruned_depth=4, **CPU)
    ids = {i[:8]: i for i in zoo.NUCLEI_HELD_OUT_IDS}

    def run(image_id, crop, factor):
        image, truth = _nuclei_pair(data_dir, ids[image_id])
        image = S.resample(image[crop], (factor, factor), (0, 1))
        truth = S.resample_to(truth[crop], image.shape, (0, 1), order=0)
        scores = {}
        for rescale in (None, "auto"):
            result = predict_array(model, image, config.replace(rescale=rescale), info.data)
            labels = probabilities_to_labels(result[4], model.config, info.data)
            scores[rescale] = (M.iou(labels > 0, truth > 0), (result.scale or {}).get("zoom"))
        print(image_id, factor, scores)
        return scores

    large = run("14004203", (slice(0, 256), slice(0, 320)), 2.0)
    assert large["auto"][1][0] < 0.5  # shrunk, not enlarged
    assert large["auto"][0] > large[None][0] + 0.3 and large["auto"][0] > 0.8
    tiny = run("2e172afb", (slice(None), slice(None)), 0.45)  # 41 nuclei of ~6 px
    assert tiny["auto"][1][0] > 2.0  # enlarged toward the training size


def test_auto_rescale_finds_the_size_of_dim_noisy_large_nuclei_and_smooths_them(data_dir):
    """The users' hidden data (issue 14): nuclei 2x DSB's size, dim (8 photons at the
    brightest), noisy, 16-bit, in a mostly empty field. The first pass finds thousands of
    noise specks and fragments; the half-size probe still finds mostly noise blobs
    (median 12 px), which auto took for tiny nuclei merging and enlarged 4x on the whole
    1024 x 1024 field (IoU 0.002), or, on this crop, kept the scale (IoU 0.04). The quarter
    probe finds the nuclei whole; the noisy shrink is smoothed enough to segment them."""
    import sys
    from pathlib import Path

    from napari_unetpp import zoo
    from napari_unetpp.postprocess import probabilities_to_labels

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_dim_size import hostile

    model, info = zoo.load_pretrained("nuclei")
    ids = {i[:8]: i for i in zoo.NUCLEI_HELD_OUT_IDS}
    image, truth = _nuclei_pair(data_dir, ids["573a657d"])  # 27 nuclei of ~17 px
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    field, truth = hostile(image, truth, 2.0, photons=8.0, field=512)
    config = PredictConfig(pruned_depth=4, **CPU)
    scores = {}
    for rescale in (None, "auto"):
        result = predict_array(model, field, config.replace(rescale=rescale), info.data)
        labels = probabilities_to_labels(result[4], model.config, info.data)
        scores[rescale] = M.iou(labels > 0, truth > 0), result.scale
    auto_iou, used = scores["auto"]
    print(f"IoU none {scores[None][0]:.3f}, auto {auto_iou:.3f}; {used}")
    assert 0.35 <= used["zoom"][0] <= 0.65  # the nuclei are ~35 px: shrunk about 2x
    assert used["smoothing_sigma"][0] > 0.5  # more than half of skimage's sigma (0.27 px)
    assert auto_iou > 0.6 and auto_iou > scores[None][0] + 0.4


def test_drop_specks_leaves_out_noise_sized_objects():
    d = np.array([1.0, 2.9, 3.0, 4.5, 10.0, 60.0])
    assert S.drop_specks(d, 18.0).tolist() == [3.0, 4.5, 10.0, 60.0]  # a sixth of 18 px
    assert S.drop_specks(d, None).tolist() == d.tolist()  # no training size: nothing to judge


def test_ct_at_1mm_scores_near_native_with_pixel_size(data_dir):
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("ct")
    assert model.config.pixel_size == (3.0, 3.0) and model.config.pixel_unit == "mm"
    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[1:4]  # held-back slices
    liver = tifffile.imread(data_dir / "ct_totalseg" / "organs.tif")[1:4] == 5
    fine = S.resample(ct, (3, 3), (1, 2))
    fine_liver = S.resample_to(liver, fine.shape, (1, 2), order=0)
    config = PredictConfig(pruned_depth=4, **CPU)

    def liver_dice(img, ref, **scale):
        result = predict_array(model, img, config.replace(**scale), info.data)
        return M.dice(result[4].argmax(0) == 1, ref)

    native = liver_dice(ct, liver)
    given = liver_dice(fine, fine_liver, pixel_size=(1.0, 1.0))
    unknown = liver_dice(fine, fine_liver)
    print(
        f"liver Dice native {native:.3f}, 1 mm with pixel size {given:.3f}, without {unknown:.3f}"
    )
    assert given >= native - 0.03
    assert unknown < given - 0.2


def test_a_noisy_1mm_ct_is_smoothed_before_it_is_shrunk_and_a_clean_one_is_not(data_dir):
    """A real 1 mm scan carries per-pixel noise; shrunk to the CT model's 3 mm without
    smoothing (nnU-Net's way) it reached the model undiminished: 30 HU took the liver Dice of
    the held-back slices from 0.92 to 0.74 (benchmarks/bench_ct_user.py smoothing)."""
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("ct")
    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[1:4]  # held-back slices
    liver = tifffile.imread(data_dir / "ct_totalseg" / "organs.tif")[1:4] == 5
    fine = S.resample(ct, (3, 3), (1, 2))
    fine_liver = S.resample_to(liver, fine.shape, (1, 2), order=0)
    noisy = fine + np.random.default_rng(0).normal(0, 30, fine.shape).astype(np.float32)
    config = PredictConfig(pruned_depth=4, pixel_size=(1.0, 1.0), **CPU)
    scores, sigmas = [], []
    for image in (fine, noisy):
        result = predict_array(model, image, config, info.data)
        scores.append(M.dice(result[4].argmax(0) == 1, fine_liver))
        sigmas.append(result.scale["smoothing_sigma"])
    native = predict_array(model, ct, config.replace(pixel_size=None), info.data)
    native_dice = M.dice(native[4].argmax(0) == 1, liver)
    print(f"liver Dice native {native_dice:.3f}, 1 mm clean {scores[0]:.3f}, 30 HU {scores[1]:.3f}")
    assert sigmas[0] == [0.0, 0.0]  # a clean scan is shrunk as it is
    assert sigmas[1] == pytest.approx([0.5, 0.5])  # half of skimage's (3 - 1) / 2
    assert scores[0] >= native_dice - 0.03
    assert scores[1] >= native_dice - 0.08


# --------------------------------------------------------------------------- CLI


def test_cli_scale_flags_and_run_json(tmp_path, data_dir):
    """--diameter D becomes rescale = model diameter / D; run.json records what was used."""
    import json

    from napari_unetpp import zoo
    from napari_unetpp.cli import main

    image, _ = _nuclei_pair(data_dir, zoo.NUCLEI_HELD_OUT_IDS[0])
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[:96, :96]))
    common = ["predict", "zoo:nuclei", str(path), "--depth", "2", "--device", "cpu", "-q"]
    assert main([*common, "--out", str(tmp_path / "a"), "--diameter", "36.24"]) == 0
    run = json.loads((tmp_path / "a" / "cells_run.json").read_text())
    assert run["predict"]["rescale"] == pytest.approx(0.5)
    assert run["scale"]["zoom"] == pytest.approx([0.5, 0.5])
    assert tifffile.imread(tmp_path / "a" / "cells_labels.tif").shape == (96, 96)
    assert main([*common, "--out", str(tmp_path / "b"), "--rescale", "auto"]) == 0
    run = json.loads((tmp_path / "b" / "cells_run.json").read_text())
    assert run["predict"]["rescale"] == "auto" and run["scale"]["objects"] > 0
    print("auto on a native crop:", run["scale"]["note"])
    # errors the user can fix, as one line and exit status 2 (no traceback)
    assert main([*common, "--out", str(tmp_path / "c"), "--rescale", "2", "--diameter", "9"]) != 0
    assert main([*common, "--out", str(tmp_path / "c"), "--rescale", "50"]) != 0
    assert (
        main(
            ["predict", "zoo:em", str(path), "--out", str(tmp_path / "d"), "--diameter", "9", "-q"]
        )
        != 0
    )


def test_run_json_records_the_diameter_given(tmp_path, data_dir):
    """`predict --diameter D` was recorded only as the rescale factor it became (0.5 for
    36.24 px on the nuclei model): run.json now keeps the diameter given, and for
    `--diameter auto` the word and the diameter it estimated."""
    import json

    from napari_unetpp import zoo
    from napari_unetpp.cli import main

    image, _ = _nuclei_pair(data_dir, zoo.NUCLEI_HELD_OUT_IDS[0])
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[:96, :96]))
    common = ["predict", "zoo:nuclei", str(path), "--depth", "2", "--device", "cpu", "-q"]

    def record(folder: str, *flags: str) -> dict:
        assert main([*common, "--out", str(tmp_path / folder), *flags]) == 0
        return json.loads((tmp_path / folder / "cells_run.json").read_text())

    given = record("a", "--diameter", "36.24")
    assert given["diameter"] == {"given": 36.24}
    assert given["predict"]["rescale"] == pytest.approx(0.5)  # the factor, as before
    auto = record("b", "--diameter", "auto")
    assert auto["diameter"]["given"] == "auto" and auto["predict"]["rescale"] == "auto"
    assert auto["diameter"]["estimated"] == auto["scale"]["measured_diameter"] > 0
    assert record("c", "--rescale", "0.5")["diameter"] is None


def test_training_pairs_are_resampled_to_the_models_pixel_size() -> None:
    """Fine-tuning a 4 nm model on 2 nm images trains at 4 nm, where it will predict."""
    from napari_unetpp.scale import training_scale

    image = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 20:40] = 2  # sparse: 0 stays "unlabelled", ids stay ids
    labels[0:4, 0:4] = 1
    unknown = np.zeros((8, 8), np.uint8)
    images, label_list, size, unit, notes = training_scale(
        [image, unknown],
        [labels, unknown],
        [((0.002, 0.002), "um"), None],
        (4.0, 4.0),
        "nm",
        spatial_dims=2,
    )
    assert images[0].shape == (20, 30) and label_list[0].shape == (20, 30)
    assert set(np.unique(label_list[0])) == {0, 1, 2}
    assert images[1] is unknown and label_list[1] is unknown  # no pixel size: as it is
    assert size == (4.0, 4.0) and unit == "nm" and len(notes) == 1


def test_a_new_model_takes_the_first_known_pixel_size() -> None:
    from napari_unetpp.scale import training_scale

    stack = np.zeros((3, 16, 16), np.float32)
    _, labels, size, unit, _ = training_scale(
        [stack, stack],
        [stack.astype(np.uint8), stack.astype(np.uint8)],
        [((3.0, 1.0, 1.0), "mm"), ((2.0, 2.0), "mm")],
        (),
        "",
        spatial_dims=2,
    )
    assert size == (1.0, 1.0) and unit == "mm"  # a 2D model: the in-plane size
    assert labels[0].shape == (3, 16, 16) and labels[1].shape == (3, 32, 32)


def test_auto_rescale_measures_on_the_deepest_head_whatever_depth_is_labelled(data_dir):
    """The Segment dock runs every depth and labels from the Depth slider's (the nuclei
    model's recommended L3); its command.sh replays that with ``--depth 3``, the pruned
    network. Auto object size measured the objects on the deepest head of the first run
    and on head 3 of the second: on a 1024 x 1024 dim nuclei image 34.0 px against
    33.8 px, another zoom, and the replayed labels differed from the dock's on 0.3 % of
    the pixels (QA session 14). Both measure on the deepest head, as "Estimate size" does."""
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("nuclei")
    image, _ = _nuclei_pair(data_dir, "4590d7d47f521df6")
    big = S.resample(image[:128, :128], (2, 2), (0, 1))
    every = predict_array(model, big, PredictConfig(rescale="auto", **CPU), info.data)
    pruned = predict_array(
        model, big, PredictConfig(rescale="auto", pruned_depth=2, **CPU), info.data
    )
    assert every.scale["passes"] == pruned.scale["passes"] == 2
    assert pruned.scale["measured_diameter"] == every.scale["measured_diameter"]
    assert pruned.scale["zoom"] == every.scale["zoom"]
    assert list(pruned) == [2]
    np.testing.assert_array_equal(pruned[2], every[2])  # the labels' head, as the dock's


def test_auto_rescale_does_not_probe_an_image_smaller_than_one_object() -> None:
    """A 2 x 2 image of the values 1..4 in the Segment dock (auto object size on for the
    nuclei model): the half-size probe of the measurement ran on one pixel and warned "the
    image has no contrast (every sampled pixel is 2.5)", which is not the image's
    (QA session 14). An image whose half size holds no whole training-sized object is
    not probed."""
    import warnings

    net = _net(object_diameter=18.0)
    image = np.array([[1, 2], [3, 4]], np.uint16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = predict_array(net, image, PredictConfig(rescale="auto", **CPU), DataConfig())
    assert result[max(result)].shape[-2:] == (2, 2)
    assert not [w for w in seen if "no contrast" in str(w.message)], [str(w.message) for w in seen]
