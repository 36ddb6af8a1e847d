"""Camera defect pixels (issue 14): hot and dead pixels neither set the range nor reach the model.

Real held-back DSB images made into camera data (``benchmarks/bench_camera.py``): uint16
x200, 12-bit x16, Poisson counts with a bias; hot pixels at 65535 or 4095, dead ones at 0.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_unetpp import zoo
from napari_unetpp.config import NormalizationConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.normalization import intensity_range

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_camera import defect_pixels, photons, saturated, uint16  # noqa: E402
from bench_intensity import held_back  # noqa: E402

NORM = NormalizationConfig()  # the shipped models' percentile normalisation
#: 0.5 % hot pixels at 65535 took these from IoU 0.827 and 0.818 (clean) to 0.390 and 0.336
#: before hot pixels were recognised; now they match the clean image's to 0.001.
IOU_IMAGES = ("00071198d059ba7f", "d6a880b1f6056f30")
#: How far below the clean image's foreground IoU the hot-pixel copy may fall.
IOU_FLOOR = 0.02


@pytest.fixture(scope="module")
def pairs(data_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return dict(zip(zoo.NUCLEI_HELD_OUT_IDS, held_back(), strict=True))


@pytest.fixture(scope="module")
def fluorescence(pairs) -> list[np.ndarray]:
    """The held-back images with a dark background (bright nuclei)."""
    return [image for image, _ in pairs.values() if np.median(image) < 100]


@pytest.fixture(scope="module")
def brightfield(pairs) -> list[np.ndarray]:
    return [image for image, _ in pairs.values() if np.median(image) > 100]


def _foreground_iou(model, info, image: np.ndarray, labels: np.ndarray, **predict) -> float:
    depth = info.metrics["best_depth"]
    config = PredictConfig(depths=(depth,), device="cpu", **predict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = predict_array(model, image, config, info.data)[depth].argmax(0) > 0
    truth = labels > 0
    return float((pred & truth).sum() / (pred | truth).sum())


def test_hot_pixels_do_not_blind_the_nuclei_model(pairs) -> None:
    """The reported failure: 0.5 % hot pixels at 65535 on a real uint16 fluorescence image
    made the 99.8th percentile 65535 and the spikes themselves swamped the network."""
    model, info = zoo.load_pretrained("nuclei")
    for image_id in IOU_IMAGES:
        image, labels = pairs[image_id]
        clean = _foreground_iou(model, info, uint16(image), labels)
        hot = _foreground_iou(model, info, defect_pixels(uint16(image), 0.005, 65535), labels)
        print(f"{image_id}: clean {clean:.3f}, 0.5 % hot pixels {hot:.3f}")
        assert hot >= clean - IOU_FLOOR


def test_hot_pixels_are_repaired_before_the_image_is_resampled(pairs) -> None:
    """A zoomed prediction (``rescale``, a pixel size) resamples the image first, which smears
    each hot pixel over its neighbours' levels: it is repaired before."""
    model, info = zoo.load_pretrained("nuclei")
    image, labels = pairs[IOU_IMAGES[0]]
    clean = _foreground_iou(model, info, uint16(image), labels, rescale=0.5)
    hostile = defect_pixels(uint16(image), 0.005, 65535)
    hot = _foreground_iou(model, info, hostile, labels, rescale=0.5)
    print(f"at 0.5x: clean {clean:.3f}, 0.5 % hot pixels {hot:.3f}")
    assert hot >= clean - IOU_FLOOR


def test_predict_says_what_it_did_with_hot_pixels(pairs) -> None:
    model, info = zoo.load_pretrained("nuclei")
    image = defect_pixels(uint16(pairs[IOU_IMAGES[0]][0]), 0.005, 65535)
    config = PredictConfig(depths=(1,), device="cpu")
    with pytest.warns(UserWarning, match=r"about 328 isolated hot pixels \(0.5 %, above \d+"):
        predict_array(model, image, config, info.data)


def test_hot_dead_and_saturated_copies_of_real_images(fluorescence, brightfield) -> None:
    """Each held-back image: its range without the defects is its clean range (the defects
    overwrote 0.5-2 % of its pixels, so up to a few grey levels), and the repaired pixels
    hold their row neighbours' values; saturated nuclei (blobs at 65535 with a continuous
    tail below) are no defects and keep the top of the range."""
    from napari_unetpp.defects import repair_rows
    from napari_unetpp.normalization import range_and_defects

    cases = []
    for image in fluorescence:
        cases += [
            (uint16(image), 0.005, 65535),
            (uint16(image), 0.02, 65535),
            (photons(image, 1000), 0.005, 0),  # dead pixels below a camera bias of 100
        ]
        if image.max() < 240:  # 12-bit data: 4095 lies above the nuclei (4080 is no gap)
            cases.append((uint16(image, 16), 0.005, 4095))
    cases += [(uint16(image), 0.005, 0) for image in brightfield]  # bright background
    for clean, fraction, value in cases:
        hostile = defect_pixels(clean, fraction, value)
        (low, high), defects = range_and_defects(hostile, NORM)
        assert defects is not None
        share = (defects.hot if value else defects.dead) / defects.sampled
        assert share == pytest.approx(fraction, rel=0.1)
        clean_low, clean_high = intensity_range(clean, NORM)
        step = 16 if value == 4095 else 200 if clean.max() > 2000 else 1
        assert abs(low - clean_low) <= 2 * step and abs(high - clean_high) <= 0.02 * clean_high
        repaired = repair_rows(hostile, defects)
        assert not (repaired == value).any()
        assert repaired.max() <= clean.max() and repaired.min() >= clean.min()
    for image in fluorescence:
        for stuck in (saturated(image, 5), defect_pixels(saturated(image, 5), 0.005, 65535)):
            (_, high), defects = range_and_defects(stuck, NORM)
            assert defects is None and high == 65535


def test_ordinary_images_are_normalised_bit_for_bit_as_before(
    pairs, em_stack, data_dir, monkeypatch
) -> None:
    """No defect is found in real images, their camera-like copies or plain noise, so their
    range is exactly the one the engine computed before defects were recognised (the shipped
    models' cards and calibrations depend on it)."""
    import tifffile

    from napari_unetpp import normalization
    from napari_unetpp.normalization import range_and_defects

    images = []
    for image, _ in pairs.values():
        images += [image, uint16(image), uint16(image, 16), photons(image, 20)]
        images += [saturated(image, 2), image.astype(np.float32)]
    images += list(em_stack[0][::4]) + [tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")]
    rng = np.random.default_rng(0)
    images += [rng.poisson(lam, (96, 96)).astype(np.uint16) for lam in (0.5, 3, 30, 3000)]
    images += [rng.normal(0, 1, (96, 96)).astype(np.float32) for _ in range(8)]
    found = [range_and_defects(image, NORM) for image in images]
    assert all(defects is None for _, defects in found)
    monkeypatch.setattr(normalization, "_sample_defects", lambda raw, counts, stride=1: None)
    assert [value_range for value_range, _ in found] == [
        intensity_range(image, NORM) for image in images
    ]


def test_blobs_and_masks_are_no_defects() -> None:
    """A binary mask, or drawn discs at one level on a noisy background, are rare levels far
    above the rest too, but blobs: never taken for hot pixels."""
    from napari_unetpp.normalization import range_and_defects

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    discs = np.zeros((128, 128), bool)
    for y, x in rng.integers(10, 118, (6, 2)):
        discs |= (yy - y) ** 2 + (xx - x) ** 2 < 16
    assert 0.01 < discs.mean() < 0.05
    noisy = rng.poisson(20, (128, 128)).astype(np.uint16)
    noisy[discs] = 4000
    for image in (discs.astype(np.uint8) * 255, noisy, noisy.astype(np.float32)):
        assert range_and_defects(image, NORM)[1] is None


def test_float_images_find_the_same_defects(fluorescence) -> None:
    """Float data goes through the tails of the sample instead of level counts."""
    from napari_unetpp.normalization import range_and_defects

    hostile = defect_pixels(uint16(fluorescence[0]), 0.005, 65535)
    (low, high), defects = range_and_defects(hostile, NORM)
    (flow, fhigh), fdefects = range_and_defects(hostile.astype(np.float32), NORM)
    assert defects is not None and fdefects is not None
    assert (fdefects.above, fdefects.hot) == (defects.above, defects.hot)
    assert (flow, fhigh) == pytest.approx((low, high))


def test_repair_rows_fills_short_runs_from_row_neighbours() -> None:
    from napari_unetpp.defects import Defects, repair_rows

    defects = Defects(above=100.0, below=10.0, hot=1, dead=1, sampled=1)
    row = np.array([[999, 20, 30, 999, 50, 0, 0, 80, 999, 999, 999, 999, 40, 60]], np.uint16)
    out = repair_rows(row, defects)
    # edge: the right neighbour; single: mean of 30 and 50; a run of 2: mean of 50 and 80;
    # a run of 4 (longer than MAX_RUN = 3: a saturated blob's row) stays
    assert out.tolist() == [[20, 20, 30, 40, 50, 65, 65, 80, 999, 999, 999, 999, 40, 60]]
    assert row[0, 0] == 999  # a copy
    clean = np.arange(12, dtype=np.uint16).reshape(3, 4) + 20
    assert repair_rows(clean, defects) is clean
    floats = repair_rows(np.array([1e6, 20.0, 25.0, 1e6, 31.0, np.nan]), defects)
    assert floats[:5].tolist() == [20.0, 20.0, 25.0, 28.0, 31.0]
    assert np.isnan(floats[5])  # non-finite pixels are nonfinite.py's to fill


def test_repair_rows_in_blocks_and_any_memory_layout(fluorescence, monkeypatch) -> None:
    from napari_unetpp import defects as D
    from napari_unetpp.normalization import range_and_defects, repaired

    hostile = defect_pixels(uint16(fluorescence[2]), 0.01, 65535)
    _, found = range_and_defects(hostile, NORM)
    whole = D.repair_rows(hostile, found)
    assert np.array_equal(D.repair_rows(np.asfortranarray(hostile), found), whole)
    monkeypatch.setattr(D, "REPAIR_BLOCK", 100)  # blocks of a row or less
    assert np.array_equal(D.repair_rows(hostile, found), whole)
    channels_last = np.stack([hostile, hostile], axis=-1)  # rows are still along x
    with pytest.warns(UserWarning, match="hot pixels"):
        fixed = repaired(channels_last, NORM, channel_axis=-1)
    assert np.array_equal(fixed[..., 1], whole)


def test_bands_are_repaired_as_the_whole_image(fluorescence) -> None:
    """Tiled inference repairs each band of rows: the same values as the whole image, and
    the band then stays on the host (the raw device path cannot repair)."""
    from napari_unetpp.normalization import TileNormaliser, normalize, range_and_defects

    hostile = defect_pixels(uint16(fluorescence[1]), 0.01, 65535)[None]
    value_range, defects = range_and_defects(hostile, NORM)
    tiles = TileNormaliser(NORM, value_range, defects=defects)
    whole = tiles(hostile)
    bands = np.concatenate(
        [tiles(hostile[:, r : r + 37]) for r in range(0, hostile.shape[1], 37)], 1
    )
    assert np.array_equal(whole, bands)
    assert np.array_equal(whole, normalize(hostile, NORM))  # training normalises the same
    assert whole.max() < 3  # no spike at (65535 - low) / (high - low)
    assert tiles.on_device(hostile, "cpu") is None
    assert TileNormaliser(NORM, value_range).on_device(hostile, "cpu") is not None


def test_the_image_check_sees_a_hot_pixel_copy_as_the_clean_image(pairs) -> None:
    """The check's half-size probe halves the image, which smears each hot pixel over levels
    where it is no longer recognised: the probe too predicts on the repaired image, so a
    hot-pixel copy gets the clean copy's verdict and scale signals."""
    from napari_unetpp.disagreement import check_image
    from napari_unetpp.events import drive

    model, info = zoo.load_pretrained("nuclei")
    image, _ = pairs[IOU_IMAGES[0]]
    checks = {}
    for name, copy in (
        ("clean", uint16(image)),
        ("hot", defect_pixels(uint16(image), 0.005, 65535)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checks[name], _ = drive(
                check_image(model, copy, info.data, PredictConfig(device="cpu"))
            )
    clean, hot = checks["clean"].signals, checks["hot"].signals
    print({k: (clean[k], hot[k]) for k in clean})
    assert checks["hot"].unlike_training == checks["clean"].unlike_training
    assert hot["scale_gain"] == pytest.approx(clean["scale_gain"], abs=0.05)


def test_distributed_tasks_repair_the_stacks_defect_pixels(pairs, tmp_path) -> None:
    """``--distributed`` gives each task the stack's range as a fixed window, and a window
    looks for no defect pixels: the hot pixels reached the network in every slice. The
    driver finds them on the stack, and each task repairs them in its slice."""
    import tifffile

    from napari_unetpp.distributed import PredictJob, _fixed_normalization, predict_block

    model, info = zoo.load_pretrained("nuclei")
    image, labels = pairs[IOU_IMAGES[0]]
    clean = uint16(image)
    hot = defect_pixels(clean, 0.005, 65535)
    depth = info.metrics["best_depth"]
    truth = labels > 0
    scores = {}
    for name, plane in (("clean", clean), ("hot", hot)):
        stack = np.stack([plane, plane])
        tifffile.imwrite(tmp_path / f"{name}.tif", stack)
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always")
            data, defects = _fixed_normalization(stack, info.data)
        assert (defects is not None) == (name == "hot")
        assert any("hot pixels" in str(w.message) for w in told) == (name == "hot")
        job = PredictJob("zoo:nuclei", {"device": "cpu"}, data.to_dict(), defects)
        _, result, _ = predict_block(job, str(tmp_path / f"{name}.tif"), 0, 1)
        pred = result[depth].argmax(0) > 0
        scores[name] = float((pred & truth).sum() / (pred | truth).sum())
    print(scores)
    assert scores["hot"] >= scores["clean"] - IOU_FLOOR
