"""A user's own data, hostile shapes and axes, through the CLI (QA session 8).

Each test is a regression for something a user saw: a traceback instead of one line,
a warning printed once per pass, a result written in a format their viewer cannot use.
Files are written in ``tmp_path``; the shipped models run on tiny images (seconds).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetpp.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _discs(shape: tuple[int, int] = (64, 64), value: int = 200) -> np.ndarray:
    """Bright discs of nuclei size on a dark field (uint8)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 10, np.uint8)
    for cy, cx in ((16, 16), (16, 46), (46, 30)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 81] = value
    return image


def test_predict_a_time_series_of_stacks_is_checked_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A (T, Z, Y, X) TIFF with the 2D nuclei model: the image check measured object sizes
    on the 4D labels (skimage: 'Only 2-D and 3-D images supported', a traceback)."""
    image = tmp_path / "tzyx.tif"
    tifffile.imwrite(image, np.stack([np.stack([_discs()] * 2)] * 2))
    code, _, err = _run(capsys, "predict", "zoo:nuclei", image, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "tzyx_run.json").read_text())
    assert record["image_check"]["signals"]["object_diameter"] == pytest.approx(17, abs=3)
    assert tifffile.imread(tmp_path / "out" / "tzyx_labels.tif").shape == (2, 2, 64, 64)


@pytest.mark.parametrize("axis", ["4", "-3"])
def test_train_with_a_channel_axis_the_image_lacks_is_one_line(
    axis: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --channel-axis 4`` on a 2D image was an IndexError traceback (check_pair)."""
    image, labels = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(image, _discs())
    tifffile.imwrite(labels, (_discs() > 100).astype(np.uint8))
    code, _, err = _run(
        capsys, "train", "--images", image, "--labels", labels, "--out", tmp_path / "run",
        "--channel-axis", axis, "--iterations", "1", "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("napari-unetpp: error: ") and len(err.strip().splitlines()) == 1, err
    assert f"--channel-axis {axis} is out of range" in err


@pytest.mark.parametrize("command", ["predict", "info"])
@pytest.mark.parametrize("kind", ["flat", "nan"])
def test_each_warning_about_an_image_is_shown_once(
    command: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flat image's "no contrast" and a NaN image's "non-finite" warnings came once per
    pass (the segmentation, the flipped and half-size probes): 2-3 times, with other counts."""
    image = tmp_path / f"{kind}.tif"
    data = np.full((64, 64), 7, np.uint8) if kind == "flat" else _discs().astype(np.float32)
    if kind == "nan":
        data[0, :10] = np.nan
    tifffile.imwrite(image, data)
    argv = (
        ["predict", "zoo:nuclei", image, "--out", tmp_path / "out"]
        if command == "predict"
        else ["info", "zoo:nuclei", "--on", image]
    )
    code, _, err = _run(capsys, *argv, "-q")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert ("no contrast" if kind == "flat" else "10 non-finite") in warnings[0]


def test_a_second_flat_image_is_warned_about_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python's once-per-line warning memory kept the second flat image's warning back."""
    images = [tmp_path / "flat1.tif", tmp_path / "flat2.tif"]
    for image in images:
        tifffile.imwrite(image, np.full((64, 64), 7, np.uint8))
    code, _, err = _run(capsys, "info", "zoo:nuclei", "--on", *images, "-q")
    assert code == 0, err
    assert err.count("no contrast") == 2, err


def test_python_predict_of_an_rgb_image_with_a_one_channel_model_uses_its_luminance() -> None:
    """``predict_array(nuclei, rgb)`` ran 64 "slices" of 64 x 3 pixels: probabilities of shape
    (3, 64, 64, 3), no error. It now segments the luminance, as the CLI and the docks do."""
    from napari_unetpp.config import PredictConfig
    from napari_unetpp.inference import predict_array
    from napari_unetpp.normalization import as_model_input, rgb_to_grey
    from napari_unetpp.zoo import load_pretrained

    model, info = load_pretrained("nuclei", "cpu")
    rgb = np.stack([_discs(), _discs() // 2, _discs() // 3], axis=-1)
    config = PredictConfig(pruned_depth=1, device="cpu")
    with pytest.warns(UserWarning, match="luminance"):
        probs = predict_array(model, rgb, config, info.data)[1]
    assert probs.shape == (3, 64, 64)
    np.testing.assert_allclose(probs, predict_array(model, rgb_to_grey(rgb), config, info.data)[1])
    # the one decision: RGB(A) channels-last for a one-channel model, or what napari says
    assert as_model_input(rgb, 1, None)[1] and not as_model_input(rgb, 3, None)[1]
    assert not as_model_input(rgb, 1, -1)[1]  # the user named a channel axis: theirs
    assert as_model_input(rgb, 1, -1, rgb=True)[1]  # a napari RGB layer
    assert not as_model_input(rgb[:, :4], 1, None)[1]  # (64, 4, 3): an X of 4 is no colour


@pytest.mark.parametrize(
    "section",
    [
        {"depths": [[1]]},
        {"tile_size": [["a"]]},
        {"pruned_depth": "2"},
        {"threshold": "high"},
        {"overlap": None},
        {"min_size": [3]},
        {"depth_tolerance": {}},
        {"tta": "yes"},
    ],
)
def test_a_hostile_predict_section_in_run_json_is_one_line(
    section: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict --config run.json`` whose "predict" section holds a list where a number goes
    (hand-edited, or another tool's): a TypeError traceback from PredictConfig."""
    image, config = tmp_path / "image.tif", tmp_path / "run.json"
    tifffile.imwrite(image, _discs())
    config.write_text(json.dumps({"predict": section}))
    argv = ["predict", "zoo:nuclei", image, "--out", tmp_path / "out", "--config", config, "-q"]
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("napari-unetpp: error: PredictConfig.") and "Traceback" not in err, err


@pytest.mark.parametrize(
    "section", [{"validation_fraction": "x"}, {"augment_scale": [[1], 2]}, {"augment_scale": 2}]
)
def test_a_hostile_train_section_in_run_json_is_one_line(
    section: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same for ``train --config``: a TypeError traceback from TrainConfig."""
    image, labels, config = tmp_path / "i.tif", tmp_path / "l.tif", tmp_path / "run.json"
    tifffile.imwrite(image, _discs())
    tifffile.imwrite(labels, (_discs() > 100).astype(np.uint8))
    config.write_text(json.dumps({"train": section}))
    argv = ["train", "--images", image, "--labels", labels, "--out", tmp_path / "run"]
    code, _, err = _run(capsys, *argv, "--config", config, "--dry-run", "-q")
    assert code == 2, err
    assert err.startswith("napari-unetpp: error: TrainConfig.") and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["train", "predict", "info"])
@pytest.mark.parametrize("sizes", [["0"], ["-1"], ["nan"], ["1", "2", "3", "4"]])
def test_a_pixel_size_that_cannot_be_is_refused_in_one_line(
    command: str, sizes: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --pixel-size 0`` was a ZeroDivisionError traceback, ``-1`` was recorded in
    the new model, ``1 2 3 4`` silently became ``3 4``."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _discs())
    argv = {
        "train": ["train", "--images", image, "--labels", image, "--out", tmp_path / "run"],
        "predict": ["predict", "zoo:em", image, "--out", tmp_path / "out"],
        "info": ["info", "zoo:em", "--on", image],
    }[command]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in [*argv, "--pixel-size", *sizes, "--pixel-unit", "nm", "-q"]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--pixel-size" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_predict_names_the_channel_axis_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict --channel-axis 5`` said "DataConfig.channel_axis 5 is out of range": a name
    a command-line user never sees."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _discs())
    argv = ["predict", "zoo:nuclei", image, "--out", tmp_path / "out", "--channel-axis", "5"]
    code, _, err = _run(capsys, *argv, "-q")
    assert code == 2 and "--channel-axis 5 is out of range" in err and "DataConfig" not in err


@pytest.mark.parametrize("channels", [1, 2])
def test_channels_last_without_a_channel_axis_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], channels: int
) -> None:
    """A two-channel TIFF saved (Y, X, C), or a .npy of (Y, X, 1): the last axis was taken for
    X and the image segmented as 64 planes of 64 x 2 pixels (exit 0, hundreds of "nuclei")."""
    image = tmp_path / "yxc.npy"
    np.save(image, np.stack([_discs()] * channels, axis=-1))
    code, _, err = _run(capsys, "predict", "zoo:nuclei", image, "--out", tmp_path / "out", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"ends in an axis of {channels}" in err and "channels" in err
    assert ("--channel-axis -1" in err) == (channels == 1) and "DataConfig" not in err
    assert not list((tmp_path / "out").glob("*"))


def test_predict_run_json_names_the_image_it_segmented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``<name>_run.json`` held the model and every setting but not the input file (the
    dock's record names it): "what was segmented with what" had half an answer. It is
    recorded absolute, and ``--config`` still replays the record."""
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("discs.tif", _discs())
    code, _, err = _run(capsys, "predict", "zoo:nuclei", "discs.tif", "--out", "out", "-q")
    assert code == 0, err
    record = json.loads(Path("out/discs_run.json").read_text())
    assert record["images"] == [str((tmp_path / "discs.tif").resolve())]
    again = ["--out", "again", "--config", "out/discs_run.json", "-q", "--no-check"]
    code, _, err = _run(capsys, "predict", "zoo:nuclei", "discs.tif", *again)
    assert code == 0, err


def test_training_again_into_a_trained_run_keeps_its_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same ``train`` command run twice (``--resume`` forgotten, or a dock's command.sh
    replayed) started from step 0 and replaced the first run's best/ and last/ without a
    word. It is refused before any work, and ``--resume`` still continues the run."""
    tifffile.imwrite(tmp_path / "im.tif", _discs())
    tifffile.imwrite(tmp_path / "lab.tif", (_discs() > 100).astype(np.uint8))
    argv = ["train", "--images", tmp_path / "im.tif", "--labels", tmp_path / "lab.tif"]
    argv += ["--out", tmp_path / "run", "--widths", "4", "8", "--depth", "1"]
    argv += ["--iterations", "2", "--patch-size", "32", "--batch-size", "1", "-q"]
    assert _run(capsys, *argv)[0] == 0
    weights = (tmp_path / "run" / "best" / "weights.safetensors").read_bytes()
    code, _, err = _run(capsys, *argv, "--seed", "5")
    assert code == 2 and "already holds a trained model" in err and "--resume" in err, err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "run" / "best" / "weights.safetensors").read_bytes() == weights
    code, _, err = _run(capsys, "train", "--out", tmp_path / "run", "--resume", "-q")
    assert code == 0, err


def test_a_tiffs_own_channel_axis_is_used_or_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ImageJ TIFF of axes CYX (two channels) was segmented as a two-slice stack, silently,
    by any model. A model of two input channels now takes them as its channels; a
    one-channel model still segments each, and the run says so."""
    from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
    from napari_unetpp.config import DataConfig
    from napari_unetpp.model import UNetPlusPlus

    image = tmp_path / "cyx.tif"
    tifffile.imwrite(image, np.stack([_discs(), _discs(value=90)]), imagej=True)
    assert tifffile.TiffFile(image).series[0].axes == "CYX"
    code, _, err = _run(capsys, "predict", "zoo:nuclei", image, "--out", tmp_path / "a", "-q")
    assert code == 0 and "2 channels are segmented each as its own plane" in err, err
    assert tifffile.imread(tmp_path / "a" / "cyx_labels.tif").shape == (2, 64, 64)
    net = UNetPlusPlus(in_channels=2, num_classes=1, widths=(4, 8), depth=1)
    save_checkpoint(tmp_path / "two", net, CheckpointInfo(model=net.config, data=DataConfig()))
    argv = ["predict", tmp_path / "two", image, "--out", tmp_path / "b", "-q", "--no-check"]
    code, _, err = _run(capsys, *argv)
    assert code == 0 and "are the model's input channels" in err, err
    assert tifffile.imread(tmp_path / "b" / "cyx_labels.tif").shape == (64, 64)
    assert json.loads((tmp_path / "b" / "cyx_run.json").read_text())["data"]["channel_axis"] == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tile", "0"], "--tile"),
        (["--overlap", "1.5"], "--overlap"),
        (["--threshold", "2"], "--threshold"),
        (["--depth", "9"], "--depth"),
        (["--min-size", "-1"], "--min-size"),
        (["--depth-tolerance", "2"], "--depth-tolerance"),
        (["train", "--iterations", "0"], "--iterations"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--seed", "-1"], "--seed"),
    ],
)
def test_a_bad_setting_is_named_by_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    """``--overlap 1.5`` said "PredictConfig.overlap must lie in [0, 1)", ``--lr -1``
    "TrainConfig.learning_rate ...": names a command-line user never typed; ``--seed -1``
    ran until numpy said "expected non-negative integer", naming nothing."""
    tifffile.imwrite(tmp_path / "im.tif", _discs())
    tifffile.imwrite(tmp_path / "lab.tif", (_discs() > 100).astype(np.uint8))
    out = ["--out", tmp_path / "out", "-q"]
    if flags[0] == "train":
        argv = ["train", "--images", tmp_path / "im.tif", "--labels", tmp_path / "lab.tif"]
        code, _, err = _run(capsys, *argv, *out, *flags[1:])
    else:
        code, _, err = _run(capsys, "predict", "zoo:nuclei", tmp_path / "im.tif", *out, *flags)
    assert code == 2 and f" {named} " in err and "Config" not in err, err


@pytest.mark.parametrize("command", ["predict", "info"])
def test_an_error_about_one_of_several_images_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``predict zoo:nuclei a.tif b.npy ...`` stopped on "image has no finite values to
    normalise; check the input data": which of the images, it did not say."""
    tifffile.imwrite(tmp_path / "good.tif", _discs())
    np.save(tmp_path / "blank.npy", np.full((64, 64), np.nan, np.float32))
    images = [tmp_path / "good.tif", tmp_path / "blank.npy"]
    if command == "predict":
        argv = ["predict", "zoo:nuclei", *images, "--out", tmp_path / "out", "-q"]
    else:
        argv = ["info", "zoo:nuclei", "--on", *images, "-q"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and f"error: {tmp_path / 'blank.npy'}: " in err, err


def test_a_size_reason_names_the_limit_it_crossed() -> None:
    """Nuclei at half the training size: "objects are 0.38x the training size (limit 2.50x)",
    which reads as well within the limit; the small side's bound is 1/2.5."""
    from napari_unetpp.image_check import THRESHOLDS, judge

    limit = THRESHOLDS["size_ratio"]
    small = judge({"size_ratio": 0.38})[1][0]
    large = judge({"size_ratio": limit + 0.5})[1][0]
    assert f"(limit {1 / limit:.2f}x)" in small and f"(limit {limit:.2f}x)" in large


def test_a_scheduler_address_that_is_none_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--distributed mycluster`` said "missing port number in address 'mycluster'"."""
    pytest.importorskip("distributed")
    tifffile.imwrite(tmp_path / "im.tif", _discs())
    argv = ["predict", "zoo:nuclei", tmp_path / "im.tif", "--out", tmp_path / "out", "-q"]
    code, _, err = _run(capsys, *argv, "--distributed", "mycluster")
    assert code == 2 and "'local'" in err and "tcp://host:8786" in err, err


def test_an_empty_stack_is_called_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A (0, 5, 5) array: "image has no finite values to normalise", as if it held NaNs."""
    image = tmp_path / "empty.npy"
    np.save(image, np.zeros((0, 5, 5), np.float32))
    code, _, err = _run(capsys, "predict", "zoo:nuclei", image, "--out", tmp_path / "out", "-q")
    assert code == 2 and "has no pixels" in err and "(0, 5, 5)" in err, err


def test_sigterm_mid_prediction_leaves_no_staging_or_lock(tmp_path: Path) -> None:
    """A cluster's time limit sends SIGTERM: the run died at once, leaving its hidden staging
    folder and the output folder's lock behind; now it unwinds as Ctrl-C does (exit 143)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    image, out = tmp_path / "big.tif", tmp_path / "out"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (6, 512, 512), np.uint8))
    argv = ["predict", "zoo:nuclei", str(image), "--out", str(out), "--no-check", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "napari_unetpp.cli", *argv], env=env)
    deadline = time.monotonic() + 60
    while not any(out.glob(".napari-unetpp-staging-*")) and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143
    assert sorted(p.name for p in out.iterdir()) == []


def test_an_interrupted_training_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in ``train`` printed only "interrupted": the user had to know --resume."""
    from napari_unetpp import training

    image, labels, out = tmp_path / "i.tif", tmp_path / "l.tif", tmp_path / "my run"
    tifffile.imwrite(image, _discs())
    tifffile.imwrite(labels, (_discs() > 100).astype(np.uint8))
    flags = ["--widths", "4", "8", "--depth", "1", "--patch-size", "32", "--batch-size", "1"]
    argv = ["train", "--images", image, "--labels", labels, "--out", out, *flags]
    assert _run(capsys, *argv, "--iterations", "2", "--validate-every", "1", "-q")[0] == 0

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Trainer, "run", interrupted)
    code, _, err = _run(capsys, "train", "--out", out, "--resume", "--iterations", "4", "-q")
    assert code == 130 and f"napari-unetpp train --out '{out}' --resume" in err, err
    # under torchrun (2 processes) the way on is torchrun again: resumed alone, each step saw
    # half the patches (the note said "napari-unetpp train ... --resume")
    from napari_unetpp import ddp

    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    code, _, err = _run(capsys, "train", "--out", out, "--resume", "--iterations", "4", "-q")
    launch = "torchrun --nproc_per_node 2 -m napari_unetpp.cli train"
    assert code == 130 and f"{launch} --out '{out}' --resume" in err, err


def test_ctrl_c_in_train_stops_after_the_step_and_keeps_it_for_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lost every step since the last save (``last/`` is written at validation):
    now the first one stops after the current step and saves it; --resume goes on from it."""
    import os
    import signal

    from napari_unetpp import training
    from napari_unetpp.resume import load_resume_state

    image, labels, out = tmp_path / "i.tif", tmp_path / "l.tif", tmp_path / "run"
    tifffile.imwrite(image, _discs())
    tifffile.imwrite(labels, (_discs() > 100).astype(np.uint8))
    flags = ["--widths", "4", "8", "--depth", "1", "--patch-size", "32", "--batch-size", "1"]
    step = training.Trainer._train_step

    def step_then_ctrl_c(self, run, data):  # the user presses Ctrl-C during step 3
        result = step(self, run, data)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(training.Trainer, "_train_step", step_then_ctrl_c)
    argv = ["train", "--images", image, "--labels", labels, "--out", out, *flags]
    code, _, err = _run(capsys, *argv, "--iterations", "50", "--validate-every", "40", "-q")
    assert code == 130, err
    assert "stopped at step 3" in err and "--resume" in err
    assert load_resume_state(out / "last")[0]["step"] == 3  # no validation had saved it
    monkeypatch.setattr(training.Trainer, "_train_step", step)
    code, _, err = _run(capsys, "train", "--out", out, "--resume", "--iterations", "5", "-q")
    assert code == 0, err
    assert load_resume_state(out / "last")[0]["step"] == 5


def test_distributed_prediction_checks_the_image_before_any_task(tmp_path: Path) -> None:
    """A 3-channel image for the one-channel EM model with ``--channel-axis -1``: each dask
    worker failed on its slice and logged its traceback before the one error came back."""
    from napari_unetpp.distributed import PredictJob, predict_distributed
    from napari_unetpp.zoo import load_pretrained

    class NoCluster:
        def submit(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("a task was sent")

    model, info = load_pretrained("em", "cpu")
    image = np.zeros((2, 32, 32, 3), np.uint8)
    job = PredictJob("zoo:em", {}, info.data.replace(channel_axis=-1).to_dict())
    with pytest.raises(ValueError, match="expects 1 input channel"):
        predict_distributed(NoCluster(), job, tmp_path / "x.tif", image, model, None)


def test_distributed_slices_leave_the_cluster_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slice's future was kept until the last one arrived, so the workers held the
    whole stack's probabilities (a 1000-slice 2048^2 stack: 16 GB per depth). Each slice
    is now released as soon as it is written: the cluster holds about one at a time."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from napari_unetpp import distributed
    from napari_unetpp.zoo import load_pretrained

    image = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image)
    model, info = load_pretrained("em", "cpu")
    job = distributed.PredictJob("zoo:em", {"pruned_depth": 1}, info.data.to_dict())
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    held: list[int] = []
    allocate = distributed._allocate_outputs

    class Counting:  # counts the results the worker still holds at each write
        def __init__(self, array: np.ndarray) -> None:
            self.array = array

        def __setitem__(self, key: object, value: np.ndarray) -> None:
            held.append(settled())
            self.array[key] = value

    def settled() -> int:  # a release reaches the worker asynchronously: give it a moment
        deadline = time.monotonic() + 5
        while (count := sum(len(w.data) for w in cluster.workers.values())) > 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return count

    def counting(*args: object) -> tuple[dict[int, Counting], object]:
        arrays, group = allocate(*args)  # type: ignore[arg-type]
        return {d: Counting(a) for d, a in arrays.items()}, group

    monkeypatch.setattr(distributed, "_allocate_outputs", counting)
    with Client(cluster) as client:
        out = distributed.predict_distributed(client, job, tmp_path / "s.tif", image, model, None)
    cluster.close()
    assert out[1].array.shape == (6, 32, 32) and len(held) == 6
    assert max(held) <= 2, held  # was 1, 2, ..., 6: every slice kept to the end


def test_a_distributed_worker_reads_a_nifti_volume_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slice task decompressed and read the whole NIfTI scan again (a 300-slice CT:
    300 reads per worker)."""
    nibabel = pytest.importorskip("nibabel")
    from napari_unetpp import distributed, files
    from napari_unetpp.zoo import load_pretrained

    scan = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((32, 32, 3), np.int16), np.eye(4)), scan)
    reads: list[Path] = []
    read = files.read_array
    monkeypatch.setattr(distributed, "read_array", lambda p, lazy: reads.append(p) or read(p, lazy))
    _, info = load_pretrained("ct", "cpu")
    job = distributed.PredictJob("zoo:ct", {"pruned_depth": 1}, info.data.to_dict())
    for index in range(3):
        assert distributed.predict_block(job, str(scan), 0, index)[1][1].shape == (6, 32, 32)
    assert reads == [scan]


def test_export_to_a_pickle_format_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --format pytorch``: argparse's bare "invalid choice", where the user guide
    promises the reason (a pickle is unsafe to load; TorchScript and ONNX are not)."""
    with pytest.raises(SystemExit) as refused:
        main(["export", "zoo:em", "--out", str(tmp_path / "m.pt"), "--format", "pytorch"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "would write a pickle" in err and "torchscript" in err
    assert not (tmp_path / "m.pt").exists()


def test_a_file_named_twice_is_predicted_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict M folder folder/a.tif``: a.tif was segmented twice, the second run writing
    over the first's results in the same command."""
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _discs())
    argv = ["predict", "zoo:nuclei", folder, folder / "a.tif", "--out", tmp_path / "out"]
    code, out, err = _run(capsys, *argv, "--depth", "1", "--no-check", "-q")
    assert code == 0 and out.count("a_labels.tif") == 1, out + err


def test_fine_tuning_on_another_tools_label_ids_says_what_they_become(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fine-tuning zoo:ct on TotalSegmentator's ids: 41 values replaced the model's heads by
    untrained ones (IoU 0 after a short run), and 5 values trained the model's classes in
    sorted order (1, the spleen there, as the model's liver), both without a word."""
    image, labels = tmp_path / "ct.tif", tmp_path / "organs.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.int16))
    organs = np.zeros((64, 64), np.uint8)
    for k, value in enumerate((1, 2, 3, 5, 6)):
        organs[10 * k : 10 * k + 8, 5:15] = value
    tifffile.imwrite(labels, organs)
    argv = ["train", "--images", image, "--labels", labels, "--out", tmp_path / "run"]
    flags = ["--from", "zoo:ct", "--label-mode", "dense", "--dry-run"]
    code, _, err = _run(capsys, *argv, *flags)
    assert code == 0, err
    assert "warning: the label values (1, 2, 3, 5, 6) are not the model's own" in err
    assert "in sorted order, 1 -> liver, 2 -> spleen" in err and "6 -> stomach" in err
    own = organs.copy()
    own[organs == 5], own[organs == 6] = 4, 5
    tifffile.imwrite(labels, own)
    code, _, err = _run(capsys, *argv, *flags)  # the model's own values: said, no warning
    assert code == 0 and "warning" not in err, err
    assert "label values train the model's classes: 1 -> liver, 2 -> spleen" in err
    organs[50:60, 50:60] = 52
    tifffile.imwrite(labels, organs)
    code, _, err = _run(capsys, *argv, *flags)
    assert code == 0 and "replaced by new, untrained ones" in err, err


def test_a_pixel_size_equal_to_the_models_up_to_rounding_is_no_resampling() -> None:
    """An oblique NIfTI's 3 mm voxels measured 3.00000011 mm (its affine is stored in
    float32): predict resampled "by 1.000 x 1.000", an interpolation and a note for nothing."""
    from napari_unetpp.scale import zoom_from_pixel_size

    angle = np.deg2rad(20)
    rotated = np.float32(3.0) * np.array([np.cos(angle), np.sin(angle), 0.0], np.float32)
    size = float(np.linalg.norm(rotated.astype(np.float64)))
    assert size != 3.0  # the float noise this is about
    assert zoom_from_pixel_size((size, size), (3.0, 3.0), "mm", "mm") == (1.0, 1.0)
    assert zoom_from_pixel_size((0.004, 0.004), (4.0, 4.0), "um", "nm") == (1.0, 1.0)
    assert zoom_from_pixel_size((6.0, 3.0), (3.0, 3.0)) == (2.0, 1.0)


def test_a_flat_image_is_not_called_like_the_training_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A constant image got the 'no contrast' warning and then 'this image looks like the
    training data' (its depths agree on a flat field): the check now says it has nothing."""
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((64, 64), 7, np.uint8))
    for model in ("zoo:em", "zoo:nuclei"):
        code, out, err = _run(capsys, "info", model, "--on", flat)
        assert code == 0, err
        assert "looks like the training data" not in out + err
        assert "check the pixel size" not in out + err  # not a scale problem
        assert "remedy: check that the layer, file, channel or plane" in out + err


def test_a_grey_image_for_a_three_channel_model_says_channels_not_spatial_axes() -> None:
    """A model trained on RGB (channel axis -1) given a grey 2D image: the error said 'a 2D
    model needs 2 spatial axes, the array has 1 besides channels', not what is wrong."""
    import torch

    from napari_unetpp.config import ModelConfig
    from napari_unetpp.layout import image_layout
    from napari_unetpp.model import UNetPlusPlus

    torch.manual_seed(0)
    model = UNetPlusPlus.from_config(ModelConfig(widths=(4, 8), depth=1, in_channels=3))
    with pytest.raises(ValueError, match="expects 3 input channels along axis -1") as err:
        image_layout((64, 64), -1, model)
    assert "spatial axes" not in str(err.value)
    assert image_layout((64, 64, 3), -1, model).channels == 3  # the right image still works
