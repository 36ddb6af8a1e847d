"""The input's noise level, and the warning on images noisier than a model tolerates."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp.config import DataConfig, NormalizationConfig, PredictConfig
from napari_unetpp.image_check import NOISE_REMEDY, THRESHOLDS, judge
from napari_unetpp.noise import noise_level, plane_noise


@pytest.mark.parametrize("sd", [0.01, 0.03, 0.1])
def test_plane_noise_recovers_the_standard_deviation_of_white_noise(sd: float) -> None:
    """On a smooth ramp (which the kernel cancels), the estimate is the noise's own sd."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.linspace(0.2, 0.5, 200), np.linspace(0, 0.2, 300))
    measured = plane_noise(ramp + rng.normal(0, sd, ramp.shape), clipped=False)
    print(f"sd {sd}: measured {measured:.4f}")
    assert measured == pytest.approx(sd, rel=0.08)


def test_clipped_pixels_are_left_out() -> None:
    """CT air is clipped to 0 by the window: its pixels have no noise left to measure and
    must not pull the median to 0; an image that is all clipped gives no estimate."""
    rng = np.random.default_rng(1)
    body = np.clip(0.5 + rng.normal(0, 0.05, (64, 64)), 0, 1)
    image = np.zeros((64, 256))  # three quarters air
    image[:, 96:160] = body
    assert plane_noise(image, clipped=False) == 0.0  # the median falls in the air
    assert plane_noise(image, clipped=True) == pytest.approx(0.05, rel=0.15)
    assert plane_noise(np.zeros((64, 64)), clipped=True) is None


def test_noise_level_on_ct_is_in_normalised_units(data_dir) -> None:
    """The real CT's slices and the same slices with 40 HU of noise (0.1 of the W400
    window): the estimate rises by about that much, whatever the stack's length."""
    import tifffile

    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[:6]
    config = DataConfig(normalization=NormalizationConfig.ct_window())
    clean = noise_level(ct, config)
    shaken = np.round(ct + np.random.default_rng(0).normal(0, 40, ct.shape)).astype(np.int16)
    noisy = noise_level(shaken, config)
    print(f"CT noise: native {clean:.4f}, +40 HU {noisy:.4f}")
    assert clean is not None and noisy is not None
    assert clean < 0.05
    assert np.hypot(clean, 0.1) == pytest.approx(noisy, rel=0.15)
    assert noise_level(ct[0], config) == pytest.approx(clean, rel=0.1)


def test_noise_level_of_rgb_and_channel_images(data_dir) -> None:
    """A channel axis is measured per channel (their median), not read as a spatial axis."""
    import tifffile

    em = tifffile.imread(data_dir / "em_isbi2012" / "image.tif")[0]
    grey = noise_level(em, DataConfig())
    three = np.stack([em, em, em], axis=-1)
    assert noise_level(three, DataConfig(channel_axis=-1)) == pytest.approx(grey)


def test_judge_names_the_noise_only_where_the_model_has_a_limit() -> None:
    quiet = {**{name: 0.0 for name in THRESHOLDS}, "size_ratio": 1.0}
    assert not judge(quiet, THRESHOLDS)[0]
    assert not judge({**quiet, "noise": 0.5}, THRESHOLDS)[0]  # no limit measured: no verdict
    limits = {**THRESHOLDS, "noise": 0.06}
    assert not judge({**quiet, "noise": 0.05}, limits)[0]
    unlike, reasons, remedies = judge({**quiet, "noise": 0.1}, limits)
    assert unlike and "noisier than this model tolerates" in reasons[0]
    # the remedy is the noise's own, not "check the scale" (the scale is not the problem)
    assert [r.template for r in remedies] == [NOISE_REMEDY]


def test_the_shipped_ct_model_warns_on_a_noisy_scan_and_not_on_its_own(data_dir) -> None:
    """The case the output signals miss: 40 HU of noise takes the CT model's liver to a
    fraction of its native Dice while its depths agree; the input's noise gives it away."""
    import tifffile

    from napari_unetpp import metrics as M
    from napari_unetpp import zoo
    from napari_unetpp.disagreement import check_result
    from napari_unetpp.events import drive
    from napari_unetpp.inference import predict

    model, info = zoo.load_pretrained("ct")
    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[:3]
    organs = tifffile.imread(data_dir / "ct_totalseg" / "organs.tif")[:3]
    liver = organs == dict(zoo.CT_ORGANS)["liver"]
    shaken = np.round(ct + np.random.default_rng(0).normal(0, 40, ct.shape)).astype(np.int16)
    config = PredictConfig(device="cpu")
    verdicts, dice = {}, {}
    for name, image in (("native", ct), ("noisy", shaken)):
        probs = drive(predict(model, image, config, info.data))
        check = drive(check_result(model, image, probs, info.data, config, info.metrics))
        verdicts[name] = check
        dice[name] = M.dice(np.asarray(probs[4]).argmax(0) == 1, liver)
    print({k: (v.unlike_training, v.signals["noise"]) for k, v in verdicts.items()}, dice)
    assert dice["noisy"] < dice["native"] - 0.2  # the model does fail there
    assert not verdicts["native"].unlike_training
    assert verdicts["noisy"].unlike_training
    assert any("noisier" in r for r in verdicts["noisy"].reasons)


def test_non_finite_pixels_do_not_make_the_noise_nan(data_dir) -> None:
    """NaN / inf pixels are filled before segmenting (:mod:`nonfinite`); the noise of such
    an image was NaN, which the check read as "noise nan > 0.0817: the image is noisier
    than this model tolerates" on a clean image with a NaN corner (QA session 13, the
    Segment dock). Measured as the network sees it: filled, close to the clean value."""
    import tifffile

    em = tifffile.imread(data_dir / "em_isbi2012" / "image.tif")[0, :256, :256]
    clean = noise_level(em, DataConfig())
    holed = em.astype(np.float32)
    holed[:40, :40] = np.nan
    holed[100:110, 100:110] = np.inf
    measured = noise_level(holed, DataConfig())
    print(f"EM noise: clean {clean}, with NaN/inf pixels {measured}")
    assert clean is not None and measured is not None
    assert measured == pytest.approx(clean, rel=0.1)
    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[:2].astype(np.float32)
    window = DataConfig(normalization=NormalizationConfig.ct_window())
    masked = ct.copy()
    masked[:, :, :20] = np.nan  # outside the field of view
    assert noise_level(masked, window) == pytest.approx(noise_level(ct, window), rel=0.1)


def test_a_noisy_image_is_not_told_to_rescale(data_dir) -> None:
    """Noise averages out at half size, so the depths of a noisy image agree better there:
    the scale gain's low side read that as "objects look smaller than in training" and
    told a radiologist to "rescale the image by 2.00" on a CT at the model's own 3 mm,
    with 40 HU of noise (QA session 13, the Segment dock: liver Dice 0.25, and 0.00 after
    following that remedy). The noise's own remedy is the one to give."""
    import tifffile

    from napari_unetpp import zoo
    from napari_unetpp.disagreement import check_result
    from napari_unetpp.events import drive
    from napari_unetpp.inference import predict

    quiet = {**{name: 0.0 for name in THRESHOLDS}, "size_ratio": 1.0}
    limits = {**THRESHOLDS, "noise": 0.057, "scale_gain_low": 0.9}
    unlike, reasons, remedies = judge({**quiet, "noise": 0.106, "scale_gain": 0.87}, limits)
    assert unlike and not any("smaller" in r for r in reasons), reasons
    assert [r.template for r in remedies] == [NOISE_REMEDY]
    # without the noise, the same gain still says the objects look smaller
    _, reasons, _ = judge({**quiet, "noise": 0.01, "scale_gain": 0.87}, limits)
    assert any("smaller" in r for r in reasons)

    model, info = zoo.load_pretrained("ct")
    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct_full.tif")[84:92]
    noisy = np.round(ct + np.random.default_rng(0).normal(0, 40, ct.shape)).astype(np.int16)
    config = PredictConfig(device="cpu")
    probs = drive(predict(model, noisy, config, info.data))
    check = drive(check_result(model, noisy, probs, info.data, config, info.metrics))
    print(check.signals, check.reasons)
    assert check.unlike_training and any("noisier" in r for r in check.reasons)
    assert not any("rescale" in r for r in check.remedies_for("cli")), check.remedies


def test_tiny_objects_on_a_noisy_image_get_the_noise_remedy_not_an_enlargement() -> None:
    """A dim 16-bit nuclei image (nuclei 2.5x DSB's, much empty noisy field), segmented by
    the dock's defaults: auto object size rightly shrank it 0.39x (nuclei of 46 px), the
    result held 233 noise specks beside 13 nuclei, and the check (median of specks: 1.5 px)
    said "rescale the image by 4.64: type 3.9 in 'Object diameter (px)'", a 12x blow-up of
    the noise. The signals are that run's (QA session 14)."""
    signals = {
        **{name: 0.0 for name in THRESHOLDS},
        "depth_disagreement": 0.133,
        "uncertain_fraction": 0.103,
        "object_diameter": 1.538,
        "size_ratio": 0.085,
        "noise": 0.089,
    }
    limits = {**THRESHOLDS, "noise": 0.082}
    unlike, reasons, remedies = judge(signals, limits, zoom=0.394, auto=True)
    assert unlike and any("noisier" in r for r in reasons), reasons
    assert [r.template for r in remedies] == [NOISE_REMEDY], remedies
    # the same tiny objects on a quiet image are still told to enlarge
    _, _, remedies = judge({**signals, "noise": 0.01}, limits, zoom=0.394, auto=True)
    assert any("rescale the image by" in r.template for r in remedies), remedies
