"""End-to-end tests of the command line on small crops of the real EM stack.

One tiny network (widths 4 8 16, depth 2) is trained once for the module on two
128x128 EM crops; the other tests predict, inspect, export and distribute with it.
Everything runs through ``cli.main`` (and one real subprocess) so the tests see what
a user sees: exit status, stdout, the one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetpp import __version__
from napari_unetpp.cli import main
from napari_unetpp.files import pair_files

CROP = (slice(192, 320), slice(192, 320))  # 128 x 128, membranes and cells in it


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def em_files(tmp_path_factory: pytest.TempPathFactory, em_stack) -> dict[str, Path]:
    """Two training crops (own files), one validation crop and a 3-slice test stack."""
    image, membranes = em_stack
    root = tmp_path_factory.mktemp("em")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for z in (0, 1):
        tifffile.imwrite(root / "images" / f"slice{z}.tif", image[z][CROP])
        tifffile.imwrite(root / "labels" / f"slice{z}_labels.tif", membranes[z][CROP])
    tifffile.imwrite(root / "val_image.tif", image[15][CROP])
    tifffile.imwrite(root / "val_labels.tif", membranes[15][CROP])
    tifffile.imwrite(
        root / "stack.tif",
        image[16:19, 100:196, 50:162],  # (3, 96, 112)
        photometric="minisblack",
    )
    return {
        "root": root,
        "images": root / "images",
        "labels": root / "labels",
        "val_image": root / "val_image.tif",
        "val_labels": root / "val_labels.tif",
        "stack": root / "stack.tif",
    }


TRAIN_FLAGS = [
    "--widths",
    "4",
    "8",
    "16",
    "--depth",
    "2",
    "--iterations",
    "20",
    "--patch-size",
    "64",
    "64",
    "--batch-size",
    "2",
    "--validate-every",
    "10",
    "--device",
    "cpu",
    "--seed",
    "1",
    "--label-mode",
    "dense",
    "-q",
]


@pytest.fixture(scope="module")
def trained(em_files: dict[str, Path]) -> Path:
    """The checkpoint folder of one tiny training run."""
    out = em_files["root"] / "run"
    code = main(
        [
            "train",
            "--images",
            str(em_files["images"]),
            "--labels",
            str(em_files["labels"]),
            "--val-images",
            str(em_files["val_image"]),
            "--val-labels",
            str(em_files["val_labels"]),
            "--out",
            str(out),
            *TRAIN_FLAGS,
        ]
    )
    assert code == 0
    return out


def _predict_stack(checkpoint: Path, em_files: dict[str, Path], out: Path, *flags: str) -> int:
    """``napari-unetpp predict`` of the 3-slice test stack, tiles of 64, on the CPU, quiet."""
    argv = ["predict", str(checkpoint), str(em_files["stack"]), "--out", str(out)]
    return main([*argv, "--tile", "64", "64", "--device", "cpu", "-q", *flags])


@pytest.fixture(scope="module")
def predicted(em_files: dict[str, Path], trained: Path) -> Path:
    """Full-network prediction of the stack with all per-depth probabilities."""
    out = em_files["root"] / "pred_full"
    assert _predict_stack(trained, em_files, out, "--probabilities") == 0
    return out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_pairing_by_name_then_order(tmp_path: Path) -> None:
    images = [tmp_path / "b.png", tmp_path / "a.png"]
    labels = [tmp_path / "a_labels.tif", tmp_path / "b_labels.tif"]
    assert pair_files(images, labels) == [(images[0], labels[1]), (images[1], labels[0])]
    by_order = pair_files([tmp_path / "x.tif"], [tmp_path / "y.tif"])
    assert by_order == [(tmp_path / "x.tif", tmp_path / "y.tif")]


def test_train_writes_checkpoint_and_table(trained: Path) -> None:
    out = trained
    assert (out / "best" / "config.json").is_file()
    assert (out / "best" / "weights.safetensors").is_file()
    assert (out / "last" / "config.json").is_file()  # what --resume continues from
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["widths"] == [4, 8, 16] and run["model"]["depth"] == 2
    assert run["train"]["iterations"] == 20


def test_info_prints_depth_table(capsys: pytest.CaptureFixture[str], trained: Path) -> None:
    code, out, _ = _run(capsys, "info", trained)
    assert code == 0
    assert "depth" in out and "parameters" in out
    assert "L1" in out and "L2" in out and "L3" not in out
    code, out, _ = _run(capsys, "info", trained, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"]["depth"] == 2 and "metrics" in info


def test_predict_writes_labels_of_input_shape(predicted: Path) -> None:
    labels = tifffile.imread(predicted / "stack_labels.tif")
    assert labels.shape == (3, 96, 112)
    assert np.issubdtype(labels.dtype, np.integer)
    for d in (1, 2):
        prob = tifffile.imread(predicted / f"stack_L{d}.tif")
        assert prob.shape == (3, 96, 112)
        assert 0 <= prob.min() and prob.max() <= 1


def test_pruned_depth_equals_head(
    em_files: dict[str, Path], trained: Path, predicted: Path
) -> None:
    pruned_out, head_out = em_files["root"] / "pred_d1", em_files["root"] / "pred_h1"
    assert _predict_stack(trained, em_files, pruned_out, "--probabilities", "--depth", "1") == 0
    assert _predict_stack(trained, em_files, head_out, "--probabilities", "--depths", "1") == 0
    assert not (pruned_out / "stack_L2.tif").exists()
    pruned = tifffile.imread(pruned_out / "stack_L1.tif")
    np.testing.assert_allclose(pruned, tifffile.imread(predicted / "stack_L1.tif"), atol=1e-5)
    np.testing.assert_allclose(pruned, tifffile.imread(head_out / "stack_L1.tif"), atol=1e-5)
    labels = tifffile.imread(pruned_out / "stack_labels.tif")
    head_labels = tifffile.imread(head_out / "stack_labels.tif")
    undecided = np.abs(pruned - 0.5) < 1e-4  # float noise may flip a pixel at the threshold
    np.testing.assert_array_equal(labels[~undecided] > 0, head_labels[~undecided] > 0)


def test_export_round_trip(
    capsys: pytest.CaptureFixture[str], em_files: dict[str, Path], trained: Path
) -> None:
    exported = em_files["root"] / "exported_L1"
    code, out, _ = _run(capsys, "export", trained, "--depth", "1", "--out", exported, "--zip")
    assert code == 0 and "L1" in out
    assert (exported / "weights.safetensors").is_file()
    assert Path(str(exported) + ".zip").is_file()
    code, out, _ = _run(capsys, "info", Path(str(exported) + ".zip"), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"]["depth"] == 1 and info["model"]["deep_supervision"] is False

    direct, via_export = em_files["root"] / "pred_direct", em_files["root"] / "pred_export"
    assert _predict_stack(trained, em_files, direct, "--probabilities", "--depth", "1") == 0
    assert _predict_stack(exported, em_files, via_export, "--probabilities") == 0
    np.testing.assert_allclose(
        tifffile.imread(via_export / "stack_L1.tif"),
        tifffile.imread(direct / "stack_L1.tif"),
        atol=1e-5,
    )


def test_every_subcommand_takes_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`export -q` failed with "unrecognized arguments: -q" while train, predict, info and
    demo take it, so a script passing -q to each command stopped at the export."""
    from napari_unetpp.cli.parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert {"-q", "--quiet"} <= flags, name
    code, out, _ = _run(capsys, "export", "zoo:em", "--out", tmp_path / "em", "-q")
    assert code == 0 and "exported folder" in out
    assert (tmp_path / "em" / "weights.safetensors").is_file()


def test_distributed_local_matches_local(
    em_files: dict[str, Path], trained: Path, predicted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_UNETPP_WORKERS", "1")
    out = em_files["root"] / "pred_dist"
    assert _predict_stack(trained, em_files, out, "--probabilities", "--distributed", "local") == 0
    np.testing.assert_array_equal(
        tifffile.imread(out / "stack_labels.tif"), tifffile.imread(predicted / "stack_labels.tif")
    )
    np.testing.assert_allclose(
        tifffile.imread(out / "stack_L2.tif"),
        tifffile.imread(predicted / "stack_L2.tif"),
        atol=1e-5,
    )


def test_predict_zarr_output(em_files: dict[str, Path], trained: Path) -> None:
    import zarr

    out = em_files["root"] / "pred_zarr"
    assert _predict_stack(trained, em_files, out, "--format", "zarr", "--depth", "2") == 0
    streamed = zarr.open(str(out / "stack_labels.zarr"), mode="r")
    assert streamed.shape == (3, 96, 112)
    assert streamed.chunks[0] == 1  # written and read one slice at a time
    assert _predict_stack(trained, em_files, out / "tif", "--depth", "2") == 0
    np.testing.assert_array_equal(streamed[...], tifffile.imread(out / "tif" / "stack_labels.tif"))


def test_distributed_zarr_output_matches_local(
    em_files: dict[str, Path], trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dask workers write the zarr store (zarr 2 or 3 through stores.allocate_outputs)."""
    import zarr

    monkeypatch.setenv("NAPARI_UNETPP_WORKERS", "1")
    base = em_files["root"]
    args = ("--format", "zarr", "--depth", "2", "--probabilities")
    assert (
        _predict_stack(trained, em_files, base / "zarr_dist", *args, "--distributed", "local") == 0
    )
    assert _predict_stack(trained, em_files, base / "zarr_local", *args) == 0

    def arrays(folder: str) -> dict[str, np.ndarray]:
        probs = zarr.open(str(base / folder / "stack_probabilities.zarr"), mode="r")
        labels = zarr.open(str(base / folder / "stack_labels.zarr"), mode="r")
        return {"labels": labels[...], **{k: probs[k][...] for k in probs.keys()}}

    dist, local = arrays("zarr_dist"), arrays("zarr_local")
    assert sorted(dist) == sorted(local) == ["L2", "labels"]
    for name, values in local.items():
        assert dist[name].shape == values.shape == (3, 96, 112)
        np.testing.assert_allclose(dist[name], values, atol=1e-5)


def test_run_json_round_trip(
    capsys: pytest.CaptureFixture[str], em_files: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    data = ["--images", em_files["images"], "--labels", em_files["labels"]]
    code, first, _ = _run(
        capsys,
        "train",
        *data,
        "--out",
        tmp_path / "a",
        "--dry-run",
        *TRAIN_FLAGS,
        "--normalization",
        "window",
        "--norm-low",
        "0",
        "--norm-high",
        "255",
    )
    assert code == 0
    (tmp_path / "run.json").write_text(first)
    code, second, _ = _run(
        capsys,
        "train",
        *data,
        "--out",
        tmp_path / "b",
        "--dry-run",
        "--config",
        tmp_path / "run.json",
    )
    assert code == 0
    assert json.loads(second) == json.loads(first)
    assert json.loads(first)["data"]["normalization"]["mode"] == "window"
    # the run.json written beside the trained checkpoint replays the same configs
    code, third, _ = _run(
        capsys,
        "train",
        *data,
        "--out",
        tmp_path / "c",
        "--dry-run",
        "--config",
        trained / "run.json",
        "--iterations",
        "7",
    )
    replay, saved = json.loads(third), json.loads((trained / "run.json").read_text())
    assert replay["model"] == saved["model"] and replay["data"] == saved["data"]
    assert replay["train"]["iterations"] == 7


def _bad_inputs(root: Path, em_files: dict[str, Path]) -> dict[str, list[str]]:
    image = tifffile.imread(em_files["val_image"])
    tifffile.imwrite(root / "small_labels.tif", np.ones((10, 10), np.uint8))
    tifffile.imwrite(root / "empty_labels.tif", np.zeros_like(image))
    negative = np.zeros(image.shape, np.int16)
    negative[:8] = -1  # "ignore" as some tools write it
    tifffile.imwrite(root / "negative_labels.tif", negative)
    np.save(root / "complex.npy", image.astype(np.complex64))
    (root / "bad_ckpt").mkdir()
    (root / "bad_ckpt" / "config.json").write_text("{ not json")
    train = ["train", "--out", str(root / "o"), "--iterations", "1"]
    return {
        "missing image": [
            *train,
            "--images",
            str(root / "nope.tif"),
            "--labels",
            str(em_files["val_labels"]),
        ],
        "shape mismatch": [
            *train,
            "--images",
            str(em_files["val_image"]),
            "--labels",
            str(root / "small_labels.tif"),
        ],
        "empty labels": [
            *train,
            "--images",
            str(em_files["val_image"]),
            "--labels",
            str(root / "empty_labels.tif"),
        ],
        "negative labels": [
            *train,
            "--images",
            str(em_files["val_image"]),
            "--labels",
            str(root / "negative_labels.tif"),
        ],
        "unsupported dtype": [
            *train,
            "--images",
            str(root / "complex.npy"),
            "--labels",
            str(em_files["val_labels"]),
        ],
        "missing checkpoint": [
            "predict",
            str(root / "no_ckpt"),
            str(em_files["stack"]),
            "--out",
            str(root / "p"),
        ],
        "bad checkpoint": ["info", str(root / "bad_ckpt")],
        "unit without size": [
            "predict",
            "zoo:em",
            str(em_files["stack"]),
            "--out",
            str(root / "u"),
            "--pixel-unit",
            "mm",
        ],
        "missing config": [
            *train,
            "--images",
            str(em_files["val_image"]),
            "--labels",
            str(em_files["val_labels"]),
            "--config",
            str(root / "none.json"),
        ],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing image",
        "shape mismatch",
        "empty labels",
        "negative labels",
        "unsupported dtype",
        "missing checkpoint",
        "bad checkpoint",
        "unit without size",
        "missing config",
    ],
)
def test_user_errors_exit_2_with_one_line(
    case: str, capsys: pytest.CaptureFixture[str], em_files: dict[str, Path], tmp_path: Path
) -> None:
    code, _, err = _run(capsys, *_bad_inputs(tmp_path, em_files)[case])
    assert code == 2
    assert err.startswith("napari-unetpp: error: ")
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    if case == "negative labels":
        assert "negative values (down to -1)" in err


def test_demo_with_a_zoo_model(
    capsys: pytest.CaptureFixture[str],
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo pipeline (zoo model + sample crop -> labels + score), with the tiny model."""
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(trained / "best", zoo_dir / "em")
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(zoo_dir))
    code, out, _ = _run(
        capsys,
        "demo",
        "--model",
        "em",
        "--out",
        tmp_path / "demo",
        "--no-viewer",
        "-q",
        "--device",
        "cpu",
    )
    assert code == 0, out
    assert "IoU against the crop's labels" in out
    image = tifffile.imread(tmp_path / "demo" / "em_image.tif")
    assert tifffile.imread(tmp_path / "demo" / "em_labels.tif").shape == image.shape
    code, out, _ = _run(capsys, "info", "zoo:em")
    assert code == 0 and "L2" in out
    code, _, err = _run(capsys, "info", "zoo:nope")
    assert code == 2 and "zoo" in err


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_unetpp.cli",
            "predict",
            str(tmp_path / "missing"),
            str(tmp_path / "x.tif"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("napari-unetpp: error: ")
    assert "Traceback" not in result.stderr


def test_predict_rgb_png_with_the_one_channel_nuclei_model(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    """A colour DSB image (held back from the zoo's training) goes through the CLI as the
    widget sends it: luminance grey, 2D labels, the same labels as for the grey image."""
    from napari_unetpp.metrics import average_precision
    from napari_unetpp.normalization import rgb_to_grey
    from napari_unetpp.zoo import NUCLEI_HELD_OUT_IDS

    image_id = "00ae65c1c6631ae6"  # a colour (H&E-like) image, 256 x 320
    assert image_id in NUCLEI_HELD_OUT_IDS
    png = tmp_path / "colour.png"
    shutil.copy(data_dir / "nuclei_dsb2018" / "images" / f"{image_id}.png", png)
    truth = tifffile.imread(data_dir / "nuclei_dsb2018" / "labels" / f"{image_id}.tif")
    from imageio.v3 import imread

    rgb = imread(png)
    assert rgb.ndim == 3 and rgb.shape[-1] in (3, 4)
    tifffile.imwrite(tmp_path / "grey.tif", rgb_to_grey(rgb))

    code, out, err = _run(
        capsys, "predict", "zoo:nuclei", png, tmp_path / "grey.tif", "--out", tmp_path / "out", "-q"
    )
    assert code == 0, err
    # a note, on stderr with the others: stdout lists only what was written, one line per input
    assert "RGB -> grey" in err and "RGB" not in out
    assert len(out.strip().splitlines()) == 2
    from_rgb = tifffile.imread(tmp_path / "out" / "colour_labels.tif")
    from_grey = tifffile.imread(tmp_path / "out" / "grey_labels.tif")
    assert from_rgb.shape == truth.shape == rgb.shape[:2]
    np.testing.assert_array_equal(from_rgb, from_grey)
    ap50 = average_precision(from_rgb, truth, 0.5)
    print(f"zoo:nuclei on held-back colour image {image_id}: AP@0.5 {ap50:.3f}")
    assert ap50 > 0.3


def test_info_shows_exact_gflop_and_times_depths_on_request(
    capsys: pytest.CaptureFixture[str], trained: Path
) -> None:
    from napari_unetpp.config import ModelConfig
    from napari_unetpp.pruning import gflop_per_mpx

    code, out, _ = _run(capsys, "info", trained)
    assert code == 0 and "GFLOP/Mpx" in out and "ms/Mpx (stored)" in out
    exact = gflop_per_mpx(ModelConfig(widths=(4, 8, 16), depth=2), 2)
    row = next(line for line in out.splitlines() if line.startswith("L2"))
    assert f"{round(exact, 2):.3f}" in row
    code, out, _ = _run(capsys, "info", trained, "--time")
    assert code == 0 and "ms/Mpx (now, median)" in out
    assert "as predict runs it" in out and ("bfloat16" in out or "float32" in out)
    print(out)


def test_fine_tune_trains_at_the_models_pixel_size(
    em_files: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that records 4 nm, fine-tuned on images at 2 nm: the pairs are resampled to
    4 nm (so it predicts where it was tuned), the new model still says 4 nm."""
    start = tmp_path / "start"
    shutil.copytree(trained / "best", start)
    config = json.loads((start / "config.json").read_text())
    config["model"].update(pixel_size=[4.0, 4.0], pixel_unit="nm")
    (start / "config.json").write_text(json.dumps(config))
    out = tmp_path / "tuned"
    argv = ["train", "--images", str(em_files["images"]), "--labels", str(em_files["labels"])]
    flags = ["--pixel-size", "2", "--pixel-unit", "nm", "--iterations", "2", "--device", "cpu"]
    flags += ["--patch-size", "32", "32", "--batch-size", "2", "--label-mode", "dense"]
    code = main([*argv, "--from", str(start), "--out", str(out), *flags, "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "resampled to the model's 4 x 4 nm (zoom 0.5 x 0.5)" in err
    tuned = json.loads((out / "best" / "config.json").read_text())["model"]
    assert tuned["pixel_size"] == [4.0, 4.0] and tuned["pixel_unit"] == "nm"


def test_info_on_checks_the_image_at_its_files_pixel_size(
    em_stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """EM imaged at 2 nm (the ISBI stack is 4 nm), tagged so: the check runs at the model's
    4 nm, as predict and the dock would segment it, and finds it like the training data."""
    from scipy import ndimage

    image, _ = em_stack
    fine = ndimage.zoom(image[16, 100:228, 50:178], 2, order=1)
    path = tmp_path / "em_2nm.tif"
    tifffile.imwrite(path, fine, imagej=True, resolution=(500, 500), metadata={"unit": "um"})
    assert main(["info", "zoo:em", "--on", str(path), "--device", "cpu", "-q"]) == 0
    captured = capsys.readouterr()
    assert "pixel size 0.002 x 0.002 um from the file" in captured.err
    assert "looks like the training data" in captured.out


def test_train_guesses_scribbles_as_the_dock_does(
    em_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --label-mode: a few strokes (1 = background, 2 = membrane) train as sparse labels,
    and the run says why; --config's own label mode is kept (a widget run's replay)."""
    image = tifffile.imread(em_files["val_image"])
    strokes = np.zeros(image.shape, np.uint8)
    strokes[10:12, 5:60] = 1
    strokes[40:42, 5:60] = 2
    tifffile.imwrite(tmp_path / "strokes.tif", strokes)
    argv = ["train", "--images", str(em_files["val_image"]), "--labels"]
    code = main([*argv, str(tmp_path / "strokes.tif"), "--out", str(tmp_path / "o"), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "label mode: sparse" in captured.err
    assert json.loads(captured.out)["data"]["label_mode"] == "sparse"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"data": {"label_mode": "dense"}}))
    flags = ["--out", str(tmp_path / "p"), "--config", str(config), "--dry-run"]
    assert main([*argv, str(tmp_path / "strokes.tif"), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["label_mode"] == "dense"


def test_zarr_labels_carry_the_inputs_pixel_size(
    em_stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--format zarr`: the labels store opens on the input's grid, as the tif labels and the
    disagreement map of the same run do (it was the one output written without its spacing)."""
    import zarr

    image, _ = em_stack
    path = tmp_path / "em_4nm.tif"
    crop = image[16, 100:164, 50:114]
    tifffile.imwrite(path, crop, imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    argv = ["predict", "zoo:em", str(path), "--depths", "1", "2", "--disagreement", "-q"]
    for fmt in ("zarr", "tif"):
        code = main([*argv, "--format", fmt, "--out", str(tmp_path / fmt)])
        assert code == 0, capsys.readouterr().err
    labels = zarr.open(str(tmp_path / "zarr" / "em_4nm_labels.zarr"), mode="r")
    disagreement = zarr.open(str(tmp_path / "zarr" / "em_4nm_disagreement.zarr"), mode="r")
    assert labels.attrs["spacing"] == pytest.approx([0.004, 0.004])
    assert labels.attrs["unit"] == "um"
    assert labels.attrs["spacing"] == disagreement.attrs["spacing"]
    from napari_unetpp.readers import read_image

    assert read_image(tmp_path / "tif" / "em_4nm_labels.tif").pixel_size == pytest.approx(
        (0.004, 0.004)
    )


def test_info_states_the_models_training_scale(capsys: pytest.CaptureFixture[str]) -> None:
    """`predict --help` says --pixel-size is "in the model's unit (see `info`)": info must say
    the unit (and the object diameter that --diameter compares with)."""
    assert main(["info", "zoo:ct"]) == 0
    assert "scale: trained at 3 x 3 mm pixels" in capsys.readouterr().out
    assert main(["info", "zoo:nuclei"]) == 0
    assert "training median object diameter 18.12 px" in capsys.readouterr().out


def test_predict_says_when_a_file_without_pixel_size_meets_a_scaled_model(
    em_stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .npy (no spacing) given to a model trained at 4 nm is segmented as if at 4 nm: say so
    (a CT at 1 mm would silently run as if at 3 mm); quiet once --pixel-size is given."""
    image, _ = em_stack
    np.save(tmp_path / "crop.npy", image[16, 100:164, 50:114])
    argv = ["predict", "zoo:em", str(tmp_path / "crop.npy"), "--depth", "1", "-q"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "gives no pixel size; segmenting it as if it had the model's 4 x 4 nm" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--out", str(tmp_path / "b"), "--pixel-size", "4"]) == 0
    assert "no pixel size" not in capsys.readouterr().err


def test_pixel_size_for_a_model_of_object_size_names_the_flags_that_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--pixel-size`` with zoo:nuclei (trained without one) was ignored in the Python API's
    words ('pixel_size ignored ... use rescale instead') by predict, silently by info --on:
    both now say to give --diameter or --rescale, and nothing is resampled."""
    image = np.zeros((64, 64), np.uint8)
    image[20:36, 20:36] = 200
    np.save(tmp_path / "cells.npy", image)
    common = [str(tmp_path / "cells.npy"), "--pixel-size", "0.3", "-q"]
    assert main(["predict", "zoo:nuclei", *common, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "--pixel-size ignored" in err and "--diameter D" in err
    assert "pixel_size ignored" not in err  # the Python API's words
    run = json.loads((tmp_path / "out" / "cells_run.json").read_text())
    assert run["predict"]["pixel_size"] is None
    assert main(["info", "zoo:nuclei", "--on", *common]) == 0
    assert "--pixel-size ignored" in capsys.readouterr().err


def test_fine_tuning_a_one_channel_model_on_rgb_files_uses_grey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --from zoo:nuclei` on a colour PNG: predict takes RGB as grey for a one-channel
    model, so train must too (it said "set --channel-axis -1", which then failed on the model's
    one input channel); a model trained from scratch still needs --channel-axis."""
    from imageio.v3 import imwrite

    from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
    from napari_unetpp.config import DataConfig
    from napari_unetpp.model import UNetPlusPlus

    net = UNetPlusPlus(in_channels=1, num_classes=1, widths=(4, 8), depth=1)
    info = CheckpointInfo(model=net.config, data=DataConfig())
    save_checkpoint(tmp_path / "grey_model", net, info)
    rng = np.random.default_rng(0)
    imwrite(tmp_path / "colour.png", rng.integers(0, 255, (48, 40, 4), dtype=np.uint8))
    labels = np.zeros((48, 40), np.uint8)
    labels[10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "colour_labels.tif", labels)
    argv = ["train", "--images", str(tmp_path / "colour.png"), "--labels"]
    argv += [str(tmp_path / "colour_labels.tif"), "--dry-run", "--out", str(tmp_path / "run")]
    code, out, err = _run(capsys, *argv, "--from", tmp_path / "grey_model")
    assert code == 0, err
    assert "RGB -> grey" in err
    assert json.loads(out)["model"]["in_channels"] == 1
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--channel-axis -1" in err


def test_info_on_checks_a_bounded_region_of_a_big_image(
    em_stack, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`info --on` keeps every depth's probabilities in memory (1.4 GB for a 4096^2 plane): it
    reads a central region per plane and a few planes of a stack, and says so."""
    from napari_unetpp import image_signals

    assert image_signals.check_region((2048, 2048), 2, None) is None
    assert image_signals.check_region((4096, 100), 2, None) == (slice(1024, 3072), slice(0, 100))
    assert image_signals.check_region((40, 9, 9), 2, None)[0] == slice(0, 40, 5)  # 8 planes
    assert image_signals.check_region((300, 64, 64), 3, None)[0] == slice(70, 230)
    monkeypatch.setattr(image_signals, "CHECK_SIDE", {2: 48, 3: 16})
    image, _ = em_stack
    np.save(tmp_path / "stack.npy", image[:12, 100:196, 50:114])
    argv = ["info", "zoo:em", "--on", str(tmp_path / "stack.npy"), "--device", "cpu", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "checked on a central region of shape (6, 48, 48)" in captured.err
    assert "depth: " in captured.out


def test_train_refuses_an_out_folder_with_another_tools_checkpoint_folders(
    em_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another tool's ``last/`` in --out: refused before any work (``best/`` was written
    first, then the run failed on ``last/``)."""
    out = tmp_path / "project"
    (out / "last").mkdir(parents=True)
    (out / "last" / "notes.txt").write_text("mine")
    argv = ["train", "--images", str(em_files["val_image"]), "--labels"]
    code = main([*argv, str(em_files["val_labels"]), "--out", str(out), *TRAIN_FLAGS])
    assert code == 2 and "not a napari-unetpp checkpoint" in capsys.readouterr().err
    assert not (out / "best").exists() and (out / "last" / "notes.txt").read_text() == "mine"


def test_predict_gives_the_checks_hint_when_the_image_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nuclei shown at twice their size pass the check, which still has a remedy (objects
    1.8x the training size: try auto object size); the Segment dock says it as a hint, the
    terminal said nothing and the remedy sat in run.json only."""
    from napari_unetpp._sample_data import load_sample
    from napari_unetpp.scale import resample

    image, _, _ = load_sample("nuclei")
    path = tmp_path / "nuclei_2x.tif"
    tifffile.imwrite(path, resample(np.asarray(image, np.float32), (2, 2), (0, 1)))
    out = tmp_path / "out"
    assert main(["predict", "zoo:nuclei", str(path), "--out", str(out), "-q"]) == 0
    record = json.loads((out / "nuclei_2x_run.json").read_text())["image_check"]
    assert not record["unlike_training"] and record["remedies"]
    err = capsys.readouterr().err
    assert f"{path}: hint: {record['remedies'][0]}" in err and "auto object size" in err


def test_a_trained_model_is_checked_against_its_own_validation_data(
    trained: Path, em_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained here had no calibration of its own, so predict judged it by the
    shipped models' thresholds: the README's example (100 steps, then predict on the
    training stack) warned 'unlike the model's training data' on its own training image
    (uncertain fraction 0.46 > 0.17). Training now calibrates on its validation tiles."""
    capsys.readouterr()
    out = tmp_path / "own"
    assert main(["predict", str(trained), str(em_files["val_image"]), "--out", str(out)]) == 0
    assert "unlike the model's training data" not in capsys.readouterr().err
    record = json.loads((out / "val_image_run.json").read_text())["image_check"]
    assert not record["unlike_training"]
    from napari_unetpp.image_check import THRESHOLDS

    own = json.loads((trained / "best" / "config.json").read_text())["metrics"]["image_check"]
    assert set(own) == {"depth_disagreement", "flip_disagreement", "uncertain_fraction"}
    assert all(own[k] >= THRESHOLDS[k] for k in own)  # never stricter than the fallback
    assert own["uncertain_fraction"] > THRESHOLDS["uncertain_fraction"]  # a model still unsure


@pytest.mark.parametrize("probabilities", [True, False])
def test_zarr_disagreement_maps_equal_the_tif_ones(
    trained: Path, em_files: dict[str, Path], tmp_path: Path, probabilities: bool
) -> None:
    """--format zarr --disagreement read the probabilities after their store was committed
    (--probabilities) or removed: the map came out all zeros and the regions to label next
    were ranked on nothing. The zarr outputs must equal the TIFF ones."""
    import zarr

    extra = ["--disagreement", "--no-check", *(["--probabilities"] if probabilities else [])]
    assert _predict_stack(trained, em_files, tmp_path / "t", *extra) == 0
    assert _predict_stack(trained, em_files, tmp_path / "z", "--format", "zarr", *extra) == 0
    as_tif = tifffile.imread(tmp_path / "t" / "stack_disagreement.tif")
    as_zarr = np.asarray(zarr.open(str(tmp_path / "z" / "stack_disagreement.zarr"), mode="r"))
    assert as_tif.any()
    np.testing.assert_allclose(as_zarr, as_tif, atol=1e-6)
    regions = [json.loads((tmp_path / f / "stack_regions.json").read_text()) for f in "tz"]
    assert regions[0] == regions[1]


def test_a_distributed_run_records_its_rescale(
    em_files: dict[str, Path],
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--distributed with --rescale (or --pixel-size, --diameter): the slices were resampled
    but run.json said "scale": null (and the terminal nothing), and the check took the
    result for one at the image's own size. The record now equals the local run's; auto
    (each slice measured on its own) keeps every slice's zoom."""
    monkeypatch.setenv("NAPARI_UNETPP_WORKERS", "1")
    flags = ["--rescale", "0.5", "--no-check"]
    assert _predict_stack(trained, em_files, tmp_path / "d", *flags, "--distributed") == 0
    assert "slices resampled by 0.500 x 0.500" in capsys.readouterr().err
    assert _predict_stack(trained, em_files, tmp_path / "l", *flags) == 0
    records = [json.loads((tmp_path / f / "stack_run.json").read_text()) for f in "dl"]
    assert records[0]["scale"] is not None and records[0]["scale"] == records[1]["scale"]
    assert records[0]["scale"]["zoom"] == [0.5, 0.5]
    from napari_unetpp.distributed import _stack_scale

    auto = {"rescale": "auto", "measured_diameter": 30.0, "zoom": [0.6, 0.6], "objects": 9}
    mixed = _stack_scale({0: auto, 1: {**auto, "zoom": [1.0, 1.0], "measured_diameter": 18.0}})
    assert mixed is not None and mixed["zoom"] == [0.8, 0.8] and mixed["measured_diameter"] == 24
    assert mixed["per_slice"]["1"]["zoom"] == [1.0, 1.0] and "slice by slice" in mixed["note"]
    assert _stack_scale({0: None, 1: None}) is None


def test_scale_errors_name_the_flags(
    em_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--diameter auto`` with a model that records no object size said "rescale='auto'
    needs ...; give a number instead", and ``--diameter 20`` "give rescale instead": the
    Python names, for a user who typed neither."""
    image = str(em_files["val_image"])
    for flags in (["--diameter", "auto"], ["--rescale", "auto"], ["--diameter", "20"]):
        assert main(["predict", "zoo:em", image, "--out", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err
        assert "give --rescale" in err and "rescale='auto'" not in err, err


def test_file_helpers_take_string_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """engine-api.md offers files.read_array / write_array / create_zarr / pair_files to
    Python users, who pass strings: each was an AttributeError ('str' object has no
    attribute 'suffix')."""
    from napari_unetpp import files

    monkeypatch.chdir(tmp_path)
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for fmt in ("tif", "zarr"):
        assert files.write_array("a", image, fmt, (2.0, 2.0), "nm").name == f"a.{fmt}"
        np.testing.assert_array_equal(np.asarray(files.read_array(f"a.{fmt}")), image)
        assert files.read_image_with_size(f"a.{fmt}", lazy=True)[1:] == ((2.0, 2.0), "nm")
    assert files.is_zarr("a.zarr") and files.stem("a.ome.tif") == "a"
    assert files.create_zarr("b.zarr", (2, 3), "int32").shape == (2, 3)
    assert files.pair_files(["x.tif"], ["x_labels.tif"]) == [(Path("x.tif"), Path("x_labels.tif"))]


def test_full_precision_flag_is_recorded_and_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], em_stack
) -> None:
    """`--full-precision` keeps float32 (bf16 is the default on a GPU or a bf16 CPU):
    run.json says so, so `predict --config run.json` replays the same precision."""
    np.save(tmp_path / "em.npy", em_stack[0][15, :128, :128])
    common = [str(tmp_path / "em.npy"), "-q", "--no-check"]
    assert main(["predict", "zoo:em", *common, "--out", str(tmp_path / "a")]) == 0
    assert (
        main(["predict", "zoo:em", *common, "--full-precision", "--out", str(tmp_path / "b")]) == 0
    )
    capsys.readouterr()
    default = json.loads((tmp_path / "a" / "em_run.json").read_text())["predict"]
    full = json.loads((tmp_path / "b" / "em_run.json").read_text())["predict"]
    assert default["mixed_precision"] is True and full["mixed_precision"] is False


def test_a_run_files_pixel_size_is_used_and_said_for_a_file_without_one(
    em_stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Segment dock's command.sh replays ``image.tif`` (no pixel size in the file) with
    ``--config run.json`` holding the layer's pixel size: the note said "segmenting it as if it
    had the model's 4 x 4 nm" while the run used run.json's 8 nm (zoom 2)."""
    image, _ = em_stack
    np.save(tmp_path / "crop.npy", image[16, 100:164, 50:114])
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"predict": {"pixel_size": [8, 8], "pixel_unit": "nm"}}))
    argv = ["predict", "zoo:em", str(tmp_path / "crop.npy"), "--depth", "1", "-q"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--config", str(run_file)]) == 0
    err = capsys.readouterr().err
    assert "as if it had the model's" not in err
    assert "the pixel size 8 x 8 nm from --config" in err
    run = json.loads((tmp_path / "a" / "crop_run.json").read_text())
    assert run["scale"]["zoom"] == pytest.approx([2.0, 2.0])
