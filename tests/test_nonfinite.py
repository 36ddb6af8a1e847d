"""Non-finite pixels, losses and weights never give silent NaN results (issue 18, item 3).

Inference and training fill NaN/inf pixels with the image's finite median (a CT: its window's
low end) and say how many; more than half non-finite is refused; a diverged training stops
with a one-line error and never saves NaN weights; labels of one class only are called
meaningless.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_unetpp.config import DataConfig, ModelConfig, PredictConfig, TrainConfig
from napari_unetpp.events import drive
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus
from napari_unetpp.nonfinite import (
    NonFiniteError,
    NonFiniteWarning,
    all_finite,
    count_non_finite,
    non_finite_filler,
)
from napari_unetpp.patches import (
    DegenerateLabelsWarning,
    degenerate_labels,
    prepare_volumes,
    rare_classes,
    unpainted_slices,
)
from napari_unetpp.training import Trainer

TINY = ModelConfig(widths=(4, 8, 16), depth=2)


def _em_crop(em_stack, size: int = 96) -> np.ndarray:
    return em_stack[0][0, :size, :size].astype(np.float32)


def _predict(image: np.ndarray) -> np.ndarray:
    torch.manual_seed(0)
    model = UNetPlusPlus.from_config(TINY).eval()
    config = PredictConfig(tile_size=(64, 64), device="cpu")
    result = predict_array(model, image, config, DataConfig())
    return result[max(result)]


def test_nan_patch_is_filled_with_a_count_and_the_output_stays_finite(em_stack):
    image = _em_crop(em_stack)
    clean = _predict(image)
    image[40:50, 40:50] = np.nan
    with pytest.warns(NonFiniteWarning, match=r"100 non-finite") as record:
        prob = _predict(image)
    print(record[0].message)
    assert np.isfinite(prob).all()
    changed = np.abs(prob - clean) > 1e-6
    far = np.ones_like(changed)
    far[20:70, 20:70] = False  # the filled patch only changes its own neighbourhood
    print(f"pixels changed by the filled patch: {int(changed.sum())}")
    assert not changed[far].any()


def test_ten_percent_nan_and_inf_pixels_give_a_finite_output(em_stack):
    image = _em_crop(em_stack)
    rng = np.random.default_rng(0)
    bad = rng.random(image.shape) < 0.1
    image[bad] = np.nan
    image[rng.random(image.shape) < 0.01] = np.inf
    expected = int((~np.isfinite(image)).sum())
    with pytest.warns(NonFiniteWarning, match=rf"{expected} non-finite"):
        prob = _predict(image)
    assert np.isfinite(prob).all()


def test_more_than_half_non_finite_is_refused_with_the_count(em_stack):
    image = _em_crop(em_stack)
    image[:60] = np.nan  # 62.5 % of the rows
    with pytest.raises(NonFiniteError, match=r"5760 non-finite .*62\.5 %"):
        _predict(image)


def test_float64_beyond_float32_is_named_as_such_not_nan(em_stack):
    """Finite float64 values of 1e300 overflow the network's float32: the refusal says so and
    how to scale them, instead of calling them NaN or infinite."""
    image = _em_crop(em_stack).astype(np.float64) * 1e300
    with pytest.raises(NonFiniteError, match=r"beyond float32.*image / np\.abs\(image\)\.max"):
        _predict(image)


def test_integer_images_are_never_checked_and_lazy_images_are_counted_in_blocks(monkeypatch):
    assert count_non_finite(np.zeros((5, 5), np.uint16)) == 0
    image = np.ones((300, 40), np.float32)
    image[::7, 3] = np.nan
    lazy = da.from_array(image, chunks=(64, 40))
    monkeypatch.setattr("napari_unetpp.nonfinite.COUNT_BLOCK_PIXELS", 1000)  # 25-row blocks
    assert count_non_finite(lazy) == int(np.isnan(image).sum()) == 43
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tile = np.arange(6, dtype=np.float32)
        assert non_finite_filler(tile)(tile) is tile  # clean: identity, no warning


def test_training_on_an_image_with_nan_pixels_warns_and_keeps_weights_finite(em_stack, tmp_path):
    image = em_stack[0][0, :96, :96].astype(np.float32)
    labels = em_stack[1][0, :96, :96]
    rng = np.random.default_rng(0)
    image[rng.random(image.shape) < 0.001] = np.nan
    config = _tiny_train(validate_every=2, validation_fraction=0.34)
    trainer = Trainer(TINY, config, DataConfig(), output_dir=tmp_path)
    with pytest.warns(NonFiniteWarning, match="image 0 has"):
        events: list = []
        result = drive(trainer.run([image], [labels]), events.append)
    losses = [e.loss for e in events if e.kind == "step"]
    print("losses", losses)
    assert all(np.isfinite(losses))
    assert all_finite(result.model.state_dict())
    assert all_finite(load_file(str(tmp_path / "best" / "weights.safetensors")))


def _tiny_train(**changes: Any) -> TrainConfig:
    """Two steps of 32 x 32 patches on the CPU; each test changes only what it is about."""
    base = dict(
        iterations=2,
        batch_size=2,
        patch_size=(32, 32),
        validate_every=1,
        validation_fraction=0.5,
        device="cpu",
        seed=0,
    )
    return TrainConfig(**{**base, **changes})


def _blobs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 48), np.uint8)
    labels[10:30, 12:28] = 1
    image = (labels * 0.6 + rng.normal(0.2, 0.1, labels.shape)).astype(np.float32)
    return [image, image[::-1].copy()], [labels, labels[::-1].copy()]


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_nan(tmp_path: Path):
    images, labels = _blobs()
    with pytest.raises(ValueError, match=r"diverged|learning_rate") as info:
        config = _tiny_train(iterations=8, learning_rate=1e30)
        drive(Trainer(TINY, config, DataConfig(), output_dir=tmp_path).run(images, labels))
    print(info.value)
    for weights in tmp_path.glob("*/weights.safetensors"):
        assert all_finite(load_file(str(weights))), weights


def test_nan_weights_are_never_saved(tmp_path: Path):
    images, labels = _blobs()
    net = UNetPlusPlus.from_config(TINY)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    assert not all_finite(net.state_dict())
    config = _tiny_train()
    trainer = Trainer(TINY, config, DataConfig(), output_dir=tmp_path, initial=net)
    with pytest.raises(NonFiniteError, match=r"diverged at step 1: the loss is nan"):
        drive(trainer.run(images, labels))
    assert not list(tmp_path.glob("*/weights.safetensors"))


def test_all_one_dense_labels_warn_and_the_score_is_called_meaningless():
    images, labels = _blobs()
    ones = [np.ones_like(lab) for lab in labels]
    config = _tiny_train(validate_every=2)
    with pytest.warns(DegenerateLabelsWarning, match="no background"):
        events: list = []
        result = drive(Trainer(TINY, config, DataConfig()).run(images, ones), events.append)
    validation = [e.message for e in events if e.kind == "validation"]
    notes = [e.message for e in events if e.kind == "note"]
    print(validation, notes)
    # one class cannot be scored: no validation at all (the run says so), or a score called
    # meaningless; never a bare "iou 1.000"
    if validation:
        assert all("meaningless" in m for m in validation)
    else:
        assert any(m.startswith("no validation") for m in notes)
    assert "no background" in result.info.metrics["warning"]
    # real two-class labels are not degenerate
    assert degenerate_labels(prepare_volumes(images, labels, DataConfig(class_values=(1,)))) is None


def test_one_small_stroke_as_dense_labels_warns_before_it_teaches_background():
    """One stroke of napari's default label 1 reads as dense labels: every other pixel is
    taught as background (the shipped EM model fine-tuned on one went from membrane IoU
    0.69 to 0.0, silently)."""
    images, labels = _blobs()
    stroke = [np.zeros_like(lab) for lab in labels]
    stroke[0][20, 10:13] = 1  # 3 pixels of 4608
    with pytest.warns(DegenerateLabelsWarning, match="find almost nothing"):
        result = drive(Trainer(TINY, _tiny_train(), DataConfig()).run(images, stroke))
    assert "sparse label mode" in result.info.metrics["warning"]
    assert rare_classes(prepare_volumes(images, labels, DataConfig(class_values=(1,)))) is None


def test_training_on_an_image_without_contrast_says_so():
    """predict warned on an all-zero image, training took it silently (found by a QA
    session in a real viewer); now the run warns at its start, as for degenerate labels,
    and the checkpoint's card keeps the warning."""
    images, labels = _blobs()
    flat = [np.zeros_like(images[0]), images[1]]
    with pytest.warns(DegenerateLabelsWarning, match="no contrast"):
        result = drive(Trainer(TINY, _tiny_train(), DataConfig()).run(flat, labels))
    assert "training image 1 of 2" in result.info.metrics["warning"]
    with warnings.catch_warnings():  # ordinary images: no such warning
        warnings.simplefilter("error", DegenerateLabelsWarning)
        drive(Trainer(TINY, _tiny_train(), DataConfig()).run(images, labels))


def test_cli_fills_a_nan_patch_and_refuses_a_diverging_run(em_stack, tmp_path: Path, capsys):
    import tifffile

    from napari_unetpp.cli import main

    image = _em_crop(em_stack, 128)
    image[40:50, 40:50] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    tifffile.imwrite(tmp_path / "truth.tif", em_stack[1][0, :128, :128])
    train = [
        "train",
        "--images",
        str(tmp_path / "nan.tif"),
        "--labels",
        str(tmp_path / "truth.tif"),
        "--iterations",
        "4",
        "--batch-size",
        "2",
        "--patch",
        "32",
        "32",
        "--widths",
        "4",
        "8",
        "--depth",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    capsys.readouterr()
    assert main([*train, "--out", str(tmp_path / "run")]) == 0
    # the CLI shows engine warnings as one line on stderr, not as a Python warning
    assert "warning: image 0 has 100 non-finite" in capsys.readouterr().err
    code = main(
        [
            "predict",
            str(tmp_path / "run" / "best"),
            str(tmp_path / "nan.tif"),
            "--out",
            str(tmp_path / "pred"),
            "--device",
            "cpu",
            "--quiet",
            "--probabilities",
        ]
    )
    assert code == 0
    assert "warning:" in capsys.readouterr().err
    probabilities = [tifffile.imread(p) for p in (tmp_path / "pred").glob("*_L*.tif")]
    assert probabilities and all(np.isfinite(p).all() for p in probabilities)
    capsys.readouterr()
    with warnings.catch_warnings():  # refused by bounds before reading, or diverges after
        warnings.simplefilter("ignore", NonFiniteWarning)
        code = main([*train, "--out", str(tmp_path / "diverged"), "--lr", "1e30"])
    error = capsys.readouterr().err.strip()
    print(error)
    assert code != 0 and ("diverged" in error or "lr" in error) and "Traceback" not in error
    for weights in tmp_path.glob("diverged/*/weights.safetensors"):
        assert all_finite(load_file(str(weights)))


def test_a_rescaled_prediction_counts_the_images_own_nan_pixels(em_stack):
    """A zoomed prediction resampled the image before filling it: the warning counted the
    NaN of the resampled copy (25 or 484 for 100) and linear resampling spread them."""
    from napari_unetpp import zoo

    model, info = zoo.load_pretrained("em")
    image = _em_crop(em_stack, 128)
    image[40:50, 40:50] = np.nan  # 100 pixels
    config = PredictConfig(device="cpu", depths=(4,), pixel_size=(8.0, 8.0), pixel_unit="nm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prob = predict_array(model, image, config, info.data)[4]
    counts = [
        str(w.message).split(" has ")[1].split()[0]
        for w in caught
        if issubclass(w.category, NonFiniteWarning)
    ]
    assert counts == ["100"]
    assert prob.shape == image.shape and np.isfinite(prob).all()


@pytest.mark.parametrize("pixel_size", [None, (1.5, 1.5)])  # at its scale, and resampled
def test_nan_outside_a_scans_field_of_view_is_air_not_organs(data_dir: Path, pixel_size):
    """A CT masked with NaN outside its round field of view: the NaN were filled with the
    median (-31 HU, soft tissue) and the CT model labelled organs all around the body (QA
    session 11: 6449 pixels of 4 slices, none without the NaN)."""
    import tifffile

    from napari_unetpp import zoo
    from napari_unetpp.postprocess import probabilities_to_labels

    model, info = zoo.load_pretrained("ct")
    scan = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[11:13].astype(np.float32)
    y, x = np.ogrid[: scan.shape[1], : scan.shape[2]]
    outside = ((y - 50) / 50.0) ** 2 + ((x - 61) / 61.0) ** 2 > 1.0
    scan[:, outside] = np.nan
    config = PredictConfig(device="cpu", depths=(4,), pixel_size=pixel_size, pixel_unit="mm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prob = predict_array(model, scan, config, info.data)[4]
    assert any("window's low end -160" in str(w.message) for w in caught)
    labels = probabilities_to_labels(prob, model.config, info.data)
    assert labels[:, ~outside].any()  # the organs are still found
    assert (labels[:, outside] > 0).mean() < 0.01


def test_a_nan_masked_ct_trains_with_air_outside_its_field_of_view(data_dir: Path) -> None:
    """Training filled a CT's NaN with the median (-31 HU, soft tissue) while prediction fills
    them with the window's low end (air): a model trained on a NaN-masked scan learnt a ring
    of soft tissue around the body that it never sees when segmenting."""
    import tifffile

    from napari_unetpp.config import NormalizationConfig

    scan = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[11:13].astype(np.float32)
    organs = tifffile.imread(data_dir / "ct_totalseg" / "organs.tif")[11:13] == 5  # liver
    y, x = np.ogrid[: scan.shape[1], : scan.shape[2]]
    outside = ((y - 50) / 50.0) ** 2 + ((x - 61) / 61.0) ** 2 > 1.0
    scan[:, outside] = np.nan
    window = NormalizationConfig.ct_window()
    config = DataConfig(normalization=window, class_values=(1,))
    with pytest.warns(NonFiniteWarning, match="window's low end -160"):
        (volume,) = prepare_volumes([scan], [organs.astype(np.uint8)], config)
    median = (np.nanmedian(scan) - window.low) / (window.high - window.low)
    assert 0.1 < median < 0.9  # soft tissue, as the median filled it before
    assert volume.image[0][:, outside] == pytest.approx(0.0)  # the window's low end
    assert volume.image[0][:, ~outside].max() > 0.5  # the body itself is not touched
    assert unpainted_slices([volume]) is None


def test_the_checks_half_size_probe_fills_a_scans_nan_as_the_segmentation_does() -> None:
    """The image check's half-size copy of a NaN-masked scan got the median there (soft
    tissue) while the segmentation saw air: the check judged another image."""
    from napari_unetpp.config import NormalizationConfig
    from napari_unetpp.image_signals import half_size

    scan = np.full((64, 64), 40.0, np.float32)
    scan[:, :16] = np.nan
    window = NormalizationConfig(mode="window", low=-160.0, high=240.0, clip=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        small = half_size(scan, 2, None, window)
    assert small is not None and small[:, :6] == pytest.approx(-160.0)


def test_dense_labels_painted_on_one_slice_of_a_stack_warn_that_the_rest_is_background():
    """Dense labels painted on the slice shown, one of three: the two unpainted slices
    trained as background everywhere, without a word (a QA session in a real viewer, with
    a 2D+time series too). A stack whose labels fill most slices is not warned about."""
    images, labels = _blobs()
    stack, dense = np.stack([*images, images[0]]), np.stack([*labels, labels[0]])
    painted = np.zeros_like(dense)
    painted[1] = dense[1]
    for dims, model in ((2, TINY), (3, TINY.replace(spatial_dims=3))):
        patch = (32, 32) if dims == 2 else (2, 32, 32)
        with pytest.warns(DegenerateLabelsWarning, match="only 1 of the 3 slices"):
            events: list = []
            config = _tiny_train(patch_size=patch, validate_every=1)
            result = drive(
                Trainer(model, config, DataConfig()).run([stack], [painted]), events.append
            )
        assert "train as background" in result.info.metrics["warning"]
        assert not any("meaningless" in e.message for e in events if e.kind == "validation")
    assert (
        unpainted_slices(prepare_volumes([stack], [dense], DataConfig(class_values=(1,)))) is None
    )
    sparse = DataConfig(label_mode="sparse", class_values=(2,))
    assert unpainted_slices(prepare_volumes([stack], [painted + (painted > 0)], sparse)) is None


def test_ct_labels_with_organs_on_some_slices_are_not_taken_for_a_few_painted_slices(
    data_dir: Path,
) -> None:
    """The shipped CT model's own training labels (organs on 33 of its 99 training slices,
    in runs of 13 and 20: slices without organs are truly background) were warned about as
    'only 33 of the 99 slices hold labels'; one or two slices painted of that stack are."""
    import tifffile

    from napari_unetpp import zoo

    scan = tifffile.imread(data_dir / "ct_totalseg" / "ct_full.tif")
    ids = tifffile.imread(data_dir / "ct_totalseg" / "organs_full.tif")
    organs = np.zeros(ids.shape, np.uint8)
    for k, (_, value) in enumerate(zoo.CT_ORGANS, start=1):
        organs[ids == value] = k
    below, above = slice(0, 79), slice(92, 112)  # scripts/zoo_data.ct_train_slices()
    config = DataConfig(class_values=tuple(range(1, len(zoo.CT_ORGANS) + 1)))
    pairs = [(scan[below], organs[below]), (scan[above], organs[above])]
    volumes = prepare_volumes([p[0] for p in pairs], [p[1] for p in pairs], config)
    assert sum(v.target.reshape(len(v.target), -1).any(1).sum() for v in volumes) == 33
    assert unpainted_slices(volumes) is None
    held_back = prepare_volumes([scan[82:]], [organs[82:]], config)  # ct.tif, organs.tif
    assert unpainted_slices(held_back) is None
    for shown in ([70], [70, 75], [70, 71, 72, 76]):  # the slice shown, a few browsed to
        painted = np.zeros_like(organs[below])
        painted[shown] = organs[below][shown]
        volumes = prepare_volumes([scan[below]], [painted], config)
        assert f"only {len(shown)} of the 79 slices" in (unpainted_slices(volumes) or "")
