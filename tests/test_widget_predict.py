"""The predict widget: per-depth layers, in-place updates, pruning panel, run records, cancel.

A tiny UNet++ (widths 4, 8, 16; depth 2) is saved as a real checkpoint and run on
a 128 x 128 crop of the ISBI 2012 EM stack (and a 2-slice stack of it). Jobs run
inline (``_runner.RUN_INLINE``) except in one test of the threaded path.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_unetpp._widgets import _runner, _state
from napari_unetpp._widgets.predict import PredictWidget
from napari_unetpp.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from napari_unetpp.config import DataConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus

SCALE, TRANSLATE = (2.0, 3.0), (10.0, -5.0)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
    metrics = {
        "depths": {
            str(d): {"iou": 0.5 + d / 10, "dice": 0.6 + d / 10, "parameters": net.num_parameters(d)}
            for d in (1, 2)
        },
        "score_name": "iou",
        "best_depth": 2,
    }
    info = CheckpointInfo(
        model=net.config,
        data=DataConfig(),
        metrics=metrics,
        card={"title": "tiny EM", "data": "ISBI 2012 slices 0-11"},
    )
    return save_checkpoint(tmp_path / "tiny", net, info)


@pytest.fixture
def crop(em_stack: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return em_stack[0][:2, :128, :128].copy()


@pytest.fixture
def setup(
    make_napari_viewer: Any,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_segment_dock: Any,
) -> tuple[Any, PredictWidget, list[str]]:
    monkeypatch.setattr(_runner, "RUN_INLINE", True)
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path / "no-zoo"))  # no shipped models
    errors: list[str] = []
    patch_segment_dock("show_error", errors.append)
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)  # as napari does; the viewer's teardown deletes it
    widget._output.value = tmp_path / "runs"
    widget._device.value = "cpu"
    widget.load_model(checkpoint)
    widget._tile.value = 128  # one tile per 128 x 128 crop
    return viewer, widget, errors


def _names(viewer: Any) -> list[str]:
    return [layer.name for layer in viewer.layers]


def test_model_card_and_source(setup: Any, checkpoint: Path) -> None:
    _, w, errors = setup
    assert w.model is not None and w.model.num_parameters() > 0
    assert w._source.value == "from file" and Path(w._file.value) == checkpoint
    card = w._card.value  # zoo.card_markdown, rendered: data, per-depth scores and parameters
    assert "ISBI 2012 slices 0-11" in card and "L1\n0.600" in card
    assert f"{w.model.num_parameters(1):,}" in card
    assert w.pruning.depth == 2 and not errors
    width = w.native.minimumSizeHint().width()
    print(f"segment dock minimum width: {width} px")
    assert width <= 420  # a laptop screen keeps its canvas (issue 16)


def test_segment_2d_layers_and_rerun(setup: Any, crop: np.ndarray) -> None:
    viewer, w, errors = setup
    layer = viewer.add_image(crop[0], name="em", scale=SCALE, translate=TRANSLATE)
    w._image.value = layer
    assert w._scope.value == "2D"
    w.segment()
    assert not errors
    assert _names(viewer) == [
        "em",
        "em UNet++ L1",
        "em UNet++ L2",
        "em UNet++ labels",
        "em UNet++ disagreement",
        "em UNet++ label here next",
    ]
    boxes = viewer.layers["em UNet++ label here next"]  # the blocks to paint next, numbered
    assert not boxes.visible and boxes.nshapes == 1 and list(boxes.features["rank"]) == [1]
    np.testing.assert_array_equal(boxes.data[0], [[0, 0], [0, 128], [128, 128], [128, 0]])
    assert tuple(boxes.scale) == SCALE and tuple(boxes.translate) == TRANSLATE
    assert "label next" in w._status.value
    # the labels are the run's selected layer: the hidden layers were added unselected
    assert viewer.layers.selection.active is viewer.layers["em UNet++ labels"]
    for name in _names(viewer)[1:4]:
        out = viewer.layers[name]
        assert out.data.shape == (128, 128)
        assert tuple(out.scale) == SCALE and tuple(out.translate) == TRANSLATE
    labels = viewer.layers["em UNet++ labels"]
    assert np.issubdtype(labels.data.dtype, np.integer)
    expected = predict_array(
        w.model, crop[0], PredictConfig(tile_size=(128, 128), device="cpu"), DataConfig()
    )
    np.testing.assert_allclose(viewer.layers["em UNet++ L2"].data, expected[2], atol=1e-6)

    first_dir = w.last_run_dir
    viewer.layers["em UNet++ L1"].data = np.zeros((128, 128), np.float32)
    shown: list[str] = []  # napari refreshes a layer on each visibility assignment (issue 16)
    for name in ("em UNet++ L1", "em UNet++ L2"):
        viewer.layers[name].events.visible.connect(lambda e, n=name: shown.append(n))
    w.segment()  # re-running updates the same layers
    assert len(viewer.layers) == 6 and not errors and shown == []
    np.testing.assert_allclose(viewer.layers["em UNet++ L1"].data, expected[1], atol=1e-6)
    assert w.last_run_dir != first_dir

    run = json.loads((w.last_run_dir / "run.json").read_text())
    assert run["predict"]["tile_size"] == [128, 128] and run["checkpoint"] == w.model_spec
    command = (w.last_run_dir / "command.sh").read_text()
    assert "napari-unetpp predict" in command and str(w.last_run_dir / "run.json") in command
    assert (w.last_run_dir / "labels.tif").is_file()
    _replay_command_and_compare(w.last_run_dir)


def _replay_command_and_compare(run_dir: Path) -> None:
    """The recorded command.sh, run headless through the CLI as written, reproduces the
    widget's labels in ``run_dir/replay`` and leaves the dock's own files as they were
    (its --out was the run folder: the replay wrote beside the dock's labels.tif)."""
    import shlex

    import tifffile

    from napari_unetpp import cli

    script = (run_dir / "command.sh").read_text()
    assert "# It writes into replay/ in this folder" in script
    line = next(ln for ln in script.splitlines() if ln.startswith("napari-unetpp "))
    argv = shlex.split(line)[1:]
    out = run_dir / "replay"
    assert argv[argv.index("--out") + 1] == str(out)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert cli.main(argv) == 0
    assert {p: p.read_bytes() for p in before} == before  # nothing of the dock's replaced
    assert {p for p in run_dir.rglob("*") if p.is_file() and out not in p.parents} == set(before)
    replayed = sorted(out.glob("*_labels.tif"))
    assert len(replayed) == 1
    np.testing.assert_array_equal(
        tifffile.imread(replayed[0]), tifffile.imread(run_dir / "labels.tif")
    )


def _held_jobs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Jobs a dock starts, held instead of run (what its Start click alone did)."""
    held: list[Any] = []
    monkeypatch.setattr(_runner.JobRunner, "start", lambda self, job, **_: held.append(job))
    return held


def test_the_image_copy_for_command_sh_is_written_by_the_job(
    setup: Any, crop: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segment wrote image.tif (up to 1 GiB) in its click handler: 0.42 s of the GUI thread
    for a 6000 x 6000 uint16 image, and a run cancelled while queued kept the copy. The
    command names it at once; the job writes it before it predicts anything."""
    import shlex

    import tifffile

    from napari_unetpp import inference
    from napari_unetpp.events import drive

    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="plane")
    held = _held_jobs(monkeypatch)
    w.segment()
    run = w.last_run_dir
    line = (run / "command.sh").read_text().splitlines()[-1]
    assert not errors and str((run / "image.tif").resolve()) in shlex.split(line)
    assert not (run / "image.tif").exists()  # the click wrote nothing of the image
    seen: list[bool] = []
    original = inference.predict

    def predict(*args: Any, **kwargs: Any) -> Any:
        seen.append((run / "image.tif").is_file())
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "predict", predict)
    drive(held[0])
    assert seen and all(seen)  # written before the prediction started
    np.testing.assert_array_equal(tifffile.imread(run / "image.tif"), crop[0])


def test_stack_slicewise_then_current_slice(setup: Any, crop: np.ndarray) -> None:
    viewer, w, errors = setup
    layer = viewer.add_image(crop, name="stack", scale=(5.0, *SCALE), translate=(1.0, *TRANSLATE))
    w._image.value = layer
    assert w._scope.value == "whole stack slice-wise"
    w.segment()
    assert not errors and len(viewer.layers) == 6
    assert viewer.layers["stack UNet++ L2"].data.shape == (2, 128, 128)
    assert viewer.layers["stack UNet++ disagreement"].data.shape == (2, 128, 128)
    boxes = viewer.layers["stack UNet++ label here next"]  # one block per slice, on its slice
    assert boxes.nshapes == 2 and {int(b[0, 0]) for b in boxes.data} == {0, 1}
    assert viewer.layers["stack UNet++ labels"].data.shape == (2, 128, 128)

    w._scope.value = "current slice only (quick look)"
    viewer.dims.set_point(0, 6.0)  # world z = 1 + 5 * 1: slice 1
    w.segment()  # a quick look writes its own layers: the whole-stack ones stay
    assert not errors and len(viewer.layers) == 11
    quick_map = viewer.layers["stack UNet++ disagreement (quick look)"]
    assert quick_map.data.shape == (1, 128, 128) and tuple(quick_map.translate) == (6.0, *TRANSLATE)
    quick_boxes = viewer.layers["stack UNet++ label here next (quick look)"]
    assert quick_boxes.nshapes == 1 and tuple(quick_boxes.translate) == (6.0, *TRANSLATE)
    assert viewer.layers["stack UNet++ labels"].data.shape == (2, 128, 128)
    quick = viewer.layers["stack UNet++ L1 (quick look)"]
    assert quick.data.shape == (1, 128, 128)
    assert viewer.layers["stack UNet++ labels (quick look)"].data.shape == (1, 128, 128)
    assert tuple(quick.translate) == (6.0, *TRANSLATE) and tuple(quick.scale) == (5.0, *SCALE)

    w._scope.value = "3D"  # a 2D model: a notification, not a traceback
    w.segment()
    assert errors and "3D" in errors[-1]


def test_a_quick_looks_command_segments_the_slice_it_segmented(
    setup: Any, crop: np.ndarray
) -> None:
    """A quick look's command.sh named the whole stack: replayed, it segmented every slice,
    not the one the dock did (QA session 11)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop, name="stack")
    w._scope.value = "current slice only (quick look)"
    viewer.dims.set_point(0, 1)
    w.segment()
    assert not errors
    _replay_command_and_compare(w.last_run_dir)


def test_the_command_labels_from_the_depth_the_dock_labelled_from(
    setup: Any, crop: np.ndarray
) -> None:
    """The dock labels from the Depth slider's head (the recommended one at first: L3 for
    the shipped EM model); command.sh said no --depth, and the CLI labelled from the
    deepest (QA session 11: 0.85 % of an EM crop's pixels differed)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="plane")
    w.pruning._depth.value = 1  # not the deepest head
    w.segment()
    assert not errors and viewer.layers["plane UNet++ labels"].metadata
    assert "--depth 1" in (w.last_run_dir / "command.sh").read_text()
    _replay_command_and_compare(w.last_run_dir)


def test_the_docks_label_here_next_blocks_are_the_commands(
    setup: Any, em_stack: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The dock's 'label here next' rectangles are the blocks ``predict --disagreement``
    writes to ``_regions.json`` for the same image: the dock ranked 8, the command 10,
    and as each block is the best of its stratum, 3 of the dock's 8 were not among the
    command's first 8 (QA session 12, on a nuclei image)."""
    import tifffile

    from napari_unetpp import cli

    viewer, w, errors = setup
    image = em_stack[0][:2, :384, :384].copy()  # 18 blocks of 128 x 128 in 2 slices
    w._image.value = viewer.add_image(image, name="stack")
    w.segment()
    assert not errors
    boxes = viewer.layers["stack UNet++ label here next"]
    dock = [(int(b[0, 0]), *map(int, b[:, 1:].min(axis=0))) for b in boxes.data]
    tifffile.imwrite(tmp_path / "stack.tif", image)
    argv = [str(w.model_spec), str(tmp_path / "stack.tif"), "--out", str(tmp_path / "cli")]
    assert cli.main(["predict", *argv, "--disagreement", "--device", "cpu", "-q"]) == 0
    regions = json.loads((tmp_path / "cli" / "stack_regions.json").read_text())
    assert dock == [(*r["item"], *r["start"]) for r in regions["label_here_next"]]


def test_no_label_here_next_blocks_on_an_image_with_nothing_to_label(
    setup: Any, tmp_path: Path
) -> None:
    """A constant image got 8 numbered 'label here next' blocks (ranked on noise), in the
    dock and in ``predict --disagreement``'s ``_regions.json``: both now say there is
    nothing worth labelling there, and rank nothing."""
    import tifffile

    from napari_unetpp import cli

    viewer, w, errors = setup
    flat = np.full((256, 256), 128, np.uint8)
    w._image.value = viewer.add_image(flat, name="flat")
    w.segment()
    assert not errors
    assert "flat UNet++ labels" in _names(viewer)
    assert "flat UNet++ label here next" not in _names(viewer)
    assert "nothing worth labelling here: the image has no contrast" in w._status.value
    tifffile.imwrite(tmp_path / "flat.tif", flat)
    argv = [str(w.model_spec), str(tmp_path / "flat.tif"), "--out", str(tmp_path / "cli")]
    assert cli.main(["predict", *argv, "--disagreement", "--device", "cpu", "-q"]) == 0
    regions = json.loads((tmp_path / "cli" / "flat_regions.json").read_text())
    assert regions["label_here_next"] == [] and "no contrast" in regions["note"]


def test_every_run_of_several_heads_shows_its_disagreement_map(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    """The depth-disagreement layer came only with adaptive depth, though every run computes
    all heads: an ordinary Segment now shows it too (hidden), the very map
    ``predict --disagreement`` writes; a pruned run (one head) has none, and drops the last."""
    import tifffile

    from napari_unetpp import cli
    from napari_unetpp.disagreement import disagreement_map

    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em", scale=SCALE, translate=TRANSLATE)
    w.segment()
    assert not errors
    layer = viewer.layers["em UNet++ disagreement"]
    assert not layer.visible and tuple(layer.scale) == SCALE
    assert w.last_probabilities is not None and len(w.last_probabilities) == 2
    np.testing.assert_array_equal(layer.data, disagreement_map(w.last_probabilities, 1))
    tifffile.imwrite(tmp_path / "em.tif", crop[0])
    argv = [str(w.model_spec), str(tmp_path / "em.tif"), "--out", str(tmp_path / "cli")]
    flags = ["--tile", "128", "128", "--device", "cpu", "--no-check", "-q"]
    assert cli.main(["predict", *argv, "--disagreement", *flags]) == 0
    written = tifffile.imread(tmp_path / "cli" / "em_disagreement.tif")
    np.testing.assert_allclose(layer.data, written, atol=1e-6)
    w.segment(pruned_depth=1)  # the pruning slider's Apply: one head, no map
    assert not errors
    assert "em UNet++ disagreement" not in _names(viewer), _names(viewer)


def test_a_quick_look_refuses_a_view_of_another_plane(setup: Any, crop: np.ndarray) -> None:
    """With the axis order changed the view showed a Z-X plane, and a quick look segmented
    the Y-X plane at the slider's Z: one row of the view (QA session 11)."""
    viewer, w, errors = setup
    layer = viewer.add_image(crop, name="stack")
    w._image.value = layer
    w._scope.value = "current slice only (quick look)"
    viewer.dims.order = (1, 0, 2)  # the view shows axes 0 and 2 (Z and X)
    w.segment()
    assert errors and "axis order" in errors[-1]
    assert "stack UNet++ labels (quick look)" not in viewer.layers
    viewer.dims.order = (0, 2, 1)  # the Y-X plane, transposed: still the slice segmented
    w.segment()
    assert len(errors) == 1
    assert viewer.layers["stack UNet++ labels (quick look)"].data.shape == (1, 128, 128)


def test_a_colour_like_last_axis_of_a_layer_not_rgb_is_refused(
    setup: Any, crop: np.ndarray
) -> None:
    """A (Y, X, 3) layer added with rgb=False: the dock took it for a stack of Y x 3 planes,
    the engine for colour, and the run failed with an IndexError (QA session 11)."""
    viewer, w, errors = setup
    layer = viewer.add_image(np.stack([crop[0]] * 3, axis=-1), name="yxc", rgb=False)
    w._image.value = layer
    w.segment()
    assert errors and "rgb=True" in errors[-1]
    assert w.busy is False and "yxc UNet++ labels" not in viewer.layers


def test_a_last_axis_of_one_value_is_refused_in_the_docks_words(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    """A (Y, X, 1) layer (a TIFF saved with one sample per pixel as its own axis): the run
    started, wrote its folder, and failed with the engine's advice "give
    DataConfig.channel_axis=-1", which no field of the dock sets (QA session 13)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0][..., None], name="yx1")
    w.segment()
    assert errors and "DataConfig" not in errors[-1], errors
    assert "last axis" in errors[-1] and "1 value" in errors[-1], errors
    assert w._status.value.startswith("not started")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_scans_labels_are_saved_on_its_grid(setup: Any, crop: np.ndarray, tmp_path: Path) -> None:
    """The dock's labels.tif had no pixel size, and a NIfTI scan's labels no NIfTI file on
    the scan's grid (the CLI writes both): ITK-SNAP / Slicer could not overlay them (QA 11)."""
    import nibabel
    import tifffile

    from napari_unetpp import readers

    viewer, w, errors = setup
    scan = tmp_path / "scan.nii.gz"
    affine = np.array([[0, -0.5, 0, 1], [0.6, 0, 0, 2], [0, 0, 3, 3], [0, 0, 0, 1.0]])
    voxels = np.ascontiguousarray(crop.transpose(1, 2, 0))  # (i, j, k) of a NIfTI file
    nibabel.save(nibabel.Nifti1Image(voxels, affine), str(scan))
    (layer,) = viewer.open(str(scan), plugin="napari-unetpp")
    w._image.value = layer
    w.segment()
    assert not errors
    run = w.last_run_dir
    saved = readers.read_image(run / "labels.tif")
    assert saved.pixel_size == pytest.approx(tuple(layer.scale)) and saved.unit == "mm"
    labels = nibabel.load(str(run / "labels.nii.gz"))
    assert labels.shape == voxels.shape and np.allclose(labels.affine, affine)
    back = readers.read_image(run / "labels.nii.gz").array  # the reader's view: the layer's
    np.testing.assert_array_equal(back, tifffile.imread(run / "labels.tif"))


def test_a_three_slice_stack_is_saved_as_slices_not_rgb(
    setup: Any, em_stack: tuple[np.ndarray, np.ndarray]
) -> None:
    """tifffile stores a (3, Y, X) array as one RGB image unless told otherwise: the run's
    labels.tif and the image saved for command.sh opened as colour, not as 3 slices."""
    import tifffile

    viewer, w, errors = setup
    w._image.value = viewer.add_image(em_stack[0][:3, :64, :64], name="three")
    w.segment()
    assert not errors
    for saved in ("labels.tif", "image.tif"):
        with tifffile.TiffFile(w.last_run_dir / saved) as tif:
            assert tif.series[0].shape == (3, 64, 64) and "S" not in tif.series[0].axes, saved


def test_pruning_slider_apply_and_save(
    setup: Any, crop: np.ndarray, tmp_path: Path, checkpoint: Path
) -> None:
    viewer, w, errors = setup
    assert w.pruning.device == "cpu" and w.pruning.output_folder == tmp_path / "runs"
    w._image.value = viewer.add_image(crop[0], name="em", scale=SCALE, translate=TRANSLATE)
    w.segment()
    full = w.model
    w.pruning._depth.value = 1
    assert w.pruning.pruned is not None and w.pruning.pruned.depth == 1
    assert w.pruning.pruned.num_parameters() == full.num_parameters(1) < full.num_parameters()
    assert w.pruning.ms_per_mpx is not None and w.pruning.ms_per_mpx > 0
    assert f"{full.num_parameters(1):,}" in w.pruning._readout.value
    assert "GFLOP/Mpx (" in w.pruning._readout.value  # exact cost beside the measured time
    assert "validation: iou 0.600" in w.pruning._readout.value  # a trained run, not held-back

    labels_before = viewer.layers["em UNet++ labels"].data.copy()
    w.pruning.apply()
    # the same layers, label-here-next included, but the disagreement map: one head has none
    assert not errors and len(viewer.layers) == 5
    assert sorted(w.last_probabilities) == [1]
    np.testing.assert_allclose(
        w.last_probabilities[1], viewer.layers["em UNet++ L1"].data, atol=1e-5
    )
    assert viewer.layers["em UNet++ labels"].data.shape == labels_before.shape

    folder = w.pruning.save_pruned(tmp_path / "pruned")
    try:
        assert folder is not None
        loaded, info = load_checkpoint(folder)
        assert loaded.num_parameters() == full.num_parameters(1) and loaded.head_depths == (1,)
        assert info.metrics["depths"] == {
            "1": {"iou": 0.6, "dice": 0.7, "parameters": full.num_parameters(1)}
        }
        x = torch.rand(1, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x)[1], full.eval()(x, depths=[1])[1])
        assert info.provenance["pruned_from"] == str(checkpoint)
        assert info.provenance["pruned_depth"] == 1
        assert _state.registered_models()[f"{w.model_name} L1"] == folder
    finally:
        _state.unregister_model(f"{w.model_name} L1")


def test_pruning_panel_talks_through_signals_and_arguments(
    qapp: Any, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No owner widget: the model, device and folder come in as arguments, Apply goes out."""
    from napari_unetpp._widgets.pruning_panel import PruningPanel

    monkeypatch.setattr(_runner, "RUN_INLINE", True)
    net, info = load_checkpoint(checkpoint)
    panel = PruningPanel()
    panel.set_device("cpu")
    panel.set_output_folder(tmp_path / "out")
    panel.set_model(net, info, name="tiny", source="somewhere/tiny")
    asked: list[int] = []
    panel.apply_requested.connect(asked.append)
    panel._depth.value = 1
    assert "ms per megapixel" in panel._readout.value
    panel.apply()
    assert asked == [1]
    try:
        first, second = panel.save_pruned(), panel.save_pruned()
        assert (first, second) == (tmp_path / "out" / "tiny-L1", tmp_path / "out" / "tiny-L1-1")
        saved, saved_info = load_checkpoint(first)
        assert saved.head_depths == (1,)
        assert saved_info.provenance["pruned_from"] == "somewhere/tiny"
    finally:
        _state.unregister_model("tiny L1")


def test_a_model_chosen_while_segmenting_keeps_the_slider_locked(
    qapp: Any, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slider and Apply are locked while the owner segments; choosing another model
    meanwhile unlocked them (the run's labels still come from the depth it started with)."""
    from napari_unetpp._widgets.pruning_panel import PruningPanel

    monkeypatch.setattr(_runner, "RUN_INLINE", True)
    net, info = load_checkpoint(checkpoint)
    panel = PruningPanel()
    panel.set_device("cpu")
    panel.set_model(net, info)
    panel.set_busy(True)  # the owner starts segmenting
    panel.set_model(net, info, name="another")
    assert not panel._depth.enabled and not panel._apply.enabled
    panel.set_busy(False)
    assert panel._depth.enabled and panel._apply.enabled


@contextlib.contextmanager
def _queue_held_by_pruning_timing(w: Any, qtbot: Any) -> Iterator[None]:
    """The viewer's job queue busy with a job the user never started (the pruning panel
    timing a depth) until the block ends; then it finishes."""
    release = threading.Event()

    def other_job() -> Any:
        release.wait(30)
        yield from ()

    other = _runner.JobRunner(inline=False, queue=w._runner.queue, owner="prune")
    other.start(other_job())
    try:
        yield
    finally:
        release.set()
        qtbot.waitUntil(lambda: not other.running, timeout=30_000)


def test_cancel_while_waiting_for_another_job_says_it_never_started(
    setup: Any, crop: np.ndarray, qtbot: Any
) -> None:
    """Cancel pressed while Segment waited for another job of the viewer (the pruning
    timing, a training) took it off the queue, and the status said 'cancelling...' for
    good: no callback but on_finish came (QA session 11)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="plane")
    with _queue_held_by_pruning_timing(w, qtbot):
        w.segment()
        assert w._runner.queued and "waiting" in w._status.value
        # named: the user started no other job (QA session 13)
        assert "(the pruning panel timing a depth" in w._status.value, w._status.value
        w.cancel()
        assert not w.busy and w._run.enabled
        assert w._status.value == "stopped before it started: nothing was changed"
    assert "plane UNet++ labels" not in viewer.layers and not errors


def test_cancel_leaves_layers_unchanged(setup: Any, crop: np.ndarray) -> None:
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop, name="stack")
    original = w._on_event

    def cancel_at_first(event: Any) -> None:
        original(event)
        w.cancel()

    w._on_event = cancel_at_first  # type: ignore[method-assign]  # the Cancel button, mid-run
    w.segment()
    assert _names(viewer) == ["stack"] and not errors
    assert "cancelled" in w._status.value
    assert w._run.enabled and not w._cancel.enabled and not w._runner.running


def test_threaded_run_and_reader_entry(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    crop: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runner, "RUN_INLINE", False)
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path / "no-zoo"))
    _state.register_model("tiny run", checkpoint)
    try:
        viewer = make_napari_viewer()
        w = PredictWidget(viewer)
        viewer.window.add_dock_widget(w)
        assert w._source.value == "just trained" and w.model_spec == str(checkpoint)
        w.load_model(checkpoint)  # what the reader does for a dropped model folder
        assert w._model.value == str(checkpoint)
        w._output.value, w._device.value, w._tile.value = tmp_path / "runs", "cpu", 128
        qtbot.waitUntil(lambda: w.pruning.ms_per_mpx is not None, timeout=30_000)
        w._image.value = viewer.add_image(crop[0], name="em")
        w.segment()
        assert w._cancel.enabled
        qtbot.waitUntil(lambda: not w._runner.running, timeout=30_000)
        assert w.busy and not w._run.enabled  # layers come one per event-loop turn (issue 16)
        qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
        assert w._run.enabled
        assert _names(viewer)[:4] == ["em", "em UNet++ L1", "em UNet++ L2", "em UNet++ labels"]
        assert _names(viewer)[4:] == ["em UNet++ disagreement", "em UNet++ label here next"]
    finally:
        _state.unregister_model("tiny run")


def test_a_new_layer_is_built_in_one_turn_and_inserted_unselected_in_the_next(
    make_napari_viewer: Any,
) -> None:
    """The Segment dock adds a layer in event-loop turns (build; napari's insert, hidden and
    unselected; show), an update in place in one (issue 16: each turn is a stall)."""
    from napari.layers import Image, Labels

    from napari_unetpp._widgets._output_layers import put_layer_steps

    viewer = make_napari_viewer()
    mine = viewer.add_labels(np.zeros((8, 8), np.int32), name="mine")
    viewer.add_image(np.zeros((8, 8), np.float32), name="p")  # to be replaced: another kind
    viewer.layers.selection.active = mine
    new = np.ones((8, 8), np.int32)
    steps = put_layer_steps(viewer, Labels, "p", new, [1, 1], [0, 0], {}, select=False)
    next(steps)  # built, not yet in the viewer
    assert isinstance(viewer.layers["p"], Image)
    for _ in range(3):  # its visual and controls (test_a_new_layers_visual_and_controls_...)
        next(steps)
    assert isinstance(viewer.layers["p"], Image)
    next(steps)  # inserted where the replaced layer was, hidden, the selection unchanged
    added = viewer.layers["p"]
    assert isinstance(added, Labels) and viewer.layers.index("p") == 1 and not added.visible
    assert viewer.layers.selection.active is mine
    with pytest.raises(StopIteration) as end:
        next(steps)
    assert end.value.value is added and added.visible
    update = put_layer_steps(viewer, Labels, "p", np.full((8, 8), 2), [1, 1], [0, 0], {})
    with pytest.raises(StopIteration):  # in place: no turn of its own
        next(update)
    assert viewer.layers["p"] is added and added.data.max() == 2


def test_a_new_layers_visual_and_controls_are_built_in_turns_before_its_insert(
    make_napari_viewer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """napari's insert of a hidden layer was 100-190 ms of one event-loop turn (issue 16), most
    of it its canvas visual and its controls panel: each now has a turn of its own before the
    insert, and the layer looks, selects and removes as one napari added."""
    import napari._qt.layer_controls.qt_layer_controls_container as container_module
    import napari._qt.qt_viewer as qt_viewer_module
    import napari._vispy.utils.visual as visual_module
    from napari.layers import Image

    from napari_unetpp._widgets._output_layers import put_layer_steps

    built: list[str] = []
    for module, name in [
        (qt_viewer_module, "create_vispy_layer"),
        (visual_module, "create_vispy_layer"),
        (container_module, "create_qt_layer_controls"),
    ]:
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _f=real, _n=name, **k: built.append(_n) or _f(*a, **k)
        )
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    plain = viewer.add_image(data, name="plain", colormap="magma", contrast_limits=(0, 1))
    assert built == ["create_vispy_layer", "create_qt_layer_controls"]  # napari's own path
    built.clear()
    style = {"colormap": "magma", "contrast_limits": (0.0, 1.0)}
    steps = put_layer_steps(
        viewer, Image, "p", data, [1, 1, 1], [0, 0, 0], {}, select=False, **style
    )
    for _ in range(4):  # built; its visual; its controls; those put in napari's stack
        next(steps)
    assert "p" not in viewer.layers and built == ["create_vispy_layer", "create_qt_layer_controls"]
    built.clear()
    next(steps)  # the insert's turn: neither part built in it
    added = viewer.layers["p"]
    assert built == [] and not added.visible
    qt_viewer = viewer.window._qt_viewer
    assert added in qt_viewer.canvas.layer_to_visual and added in qt_viewer.controls.widgets
    with pytest.raises(StopIteration):
        next(steps)
    viewer.dims.current_step = (2, 0, 0)
    plain.visible = False
    mine = viewer.screenshot(canvas_only=True)
    plain.visible, added.visible = True, False
    np.testing.assert_array_equal(viewer.screenshot(canvas_only=True), mine)
    assert mine.std() > 0
    viewer.layers.selection.active = added
    assert qt_viewer.controls.currentWidget() is qt_viewer.controls.widgets[added]
    viewer.layers.remove(added)
    assert added not in qt_viewer.canvas.layer_to_visual
    stack = qt_viewer.controls.count()
    dropped = put_layer_steps(viewer, Image, "q", data, [1, 1, 1], [0, 0, 0], {}, select=False)
    for _ in range(4):
        next(dropped)
    assert qt_viewer.controls.count() == stack + 1
    dropped.close()  # the dock closed before the insert: nothing added, nothing left behind
    assert "q" not in viewer.layers and len(qt_viewer.canvas.layer_to_visual) == 1
    assert qt_viewer.controls.count() == stack and len(qt_viewer.controls.widgets) == 1


def test_a_layer_inserted_through_a_docks_viewer_proxy_raises_no_warning(
    make_napari_viewer: Any,
) -> None:
    """napari gives a plugin dock a proxy of the viewer that warns on private names; the
    unselected insert's switch showed three 'Private attribute access' warnings in the
    viewer at a session's first segmentation (QA session 9, races)."""
    import warnings

    from napari.layers import Labels
    from napari.utils._proxies import PublicOnlyProxy

    from napari_unetpp._widgets._output_layers import put_layer

    viewer = make_napari_viewer()
    mine = viewer.add_image(np.zeros((8, 8), np.float32), name="mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        put_layer(
            PublicOnlyProxy(viewer),
            Labels,
            "p",
            np.ones((8, 8), np.int32),
            [1, 1],
            [0, 0],
            {},
            select=False,
        )
    assert viewer.layers.selection.active is mine and "p" in viewer.layers


def test_label_here_next_is_updated_in_place(make_napari_viewer: Any) -> None:
    """A re-run's blocks go into the same Shapes layer (a remove and an insert cost ~0.1 s
    of the GUI thread each run, issue 16), looking as a new layer's blocks look."""
    from napari.layers import Image

    from napari_unetpp._widgets._label_layers import put_label_here_next
    from napari_unetpp._widgets._output_layers import put_layer
    from napari_unetpp._widgets._predict_input import Placement
    from napari_unetpp.events import drive
    from napari_unetpp.label_next import Region

    viewer = make_napari_viewer()
    where = Placement(None, (1.0, 1.0), (0.0, 0.0))

    def put(count: int) -> Any:
        blocks = [Region((), (0, 10 * k), (8, 8), 1.0 / (k + 1)) for k in range(count)]
        assert drive(put_label_here_next(viewer, "next", blocks, where, {})) == count
        return viewer.layers["next"]

    first = put(1)
    later = put(3)
    assert later is first and later.nshapes == 3 and list(later.features["rank"]) == [1, 2, 3]
    assert list(later.edge_width) == [3] * 3 and not later.visible
    np.testing.assert_allclose(later.edge_color, [[1, 1, 0, 1]] * 3)
    np.testing.assert_allclose(later.face_color, [[0, 0, 0, 0]] * 3)
    assert list(later.text.values) == ["1", "2", "3"]
    put_layer(viewer, Image, "next", np.zeros((4, 4)), [1, 1], [0, 0], {})  # another kind
    assert put(2) is not first and viewer.layers["next"].nshapes == 2


def test_labels_from_the_slider_depth_metadata_and_stale_layers(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em", scale=SCALE)
    w.pruning._depth.value = 1  # the depth the user picked on the slider
    w.segment()
    labels = viewer.layers["em UNet++ labels"]
    meta = labels.metadata["napari_unetpp"]
    assert not errors and meta["depth"] == 1 and meta["model"] == w.model_spec
    assert meta["scale"] == list(SCALE) and "L1" in w._status.value
    expected = (np.asarray(w.last_probabilities[1]) > 0.5).astype(labels.data.dtype)
    np.testing.assert_array_equal(labels.data, expected)
    assert viewer.layers["em UNet++ L1"].visible and not viewer.layers["em UNet++ L2"].visible

    torch.manual_seed(1)  # another model with one depth less: no stale L2 layer remains
    net = UNetPlusPlus(widths=(4, 8), depth=1)
    other = save_checkpoint(
        tmp_path / "shallow", net, CheckpointInfo(model=net.config, data=DataConfig())
    )
    w.load_model(other)
    w.segment()
    names = _names(viewer)
    assert "em UNet++ L2" not in names and "em UNet++ L1" in names and not errors
    assert viewer.layers["em UNet++ labels"].metadata["napari_unetpp"]["model"] == str(other)


def test_class_names_on_hover_fixed_colours_and_legend(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    viewer, w, errors = setup
    torch.manual_seed(0)
    names = ("background", "liver", "spleen", "kidney_right")
    net = UNetPlusPlus(widths=(4, 8), depth=1, num_classes=4)
    config = net.config.replace(class_names=names)
    folder = save_checkpoint(
        tmp_path / "organs",
        UNetPlusPlus.from_config(config),
        CheckpointInfo(model=config, data=DataConfig(class_values=(1, 2, 3))),
    )
    w.load_model(folder)
    w._image.value = viewer.add_image(crop[0], name="ct")
    w.segment()
    layer = viewer.layers["ct UNet++ labels"]
    assert not errors and list(layer.features["class"]) == list(names)
    colours = [tuple(np.round(layer.colormap.map(k), 3)) for k in (1, 2, 3)]
    assert len(set(colours)) == 3 and layer.colormap.map(0)[3] == 0  # distinct; 0 transparent
    value = int(layer.data.flat[0])
    assert (
        names[value] in layer.get_status(layer.data_to_world((0, 0)))["coordinates"] or value == 0
    )
    assert all(n in w._legend.value for n in names[1:]) and not w._legend.native.isHidden()


def test_shipped_model_matches_the_image(make_napari_viewer: Any) -> None:
    from napari_unetpp._widgets._model_box import guess_zoo_model

    viewer = make_napari_viewer()
    em = viewer.add_image(np.zeros((8, 8), np.uint8), name="em sample")
    ct = viewer.add_image(np.full((2, 8, 8), -1000, np.int16), name="scan")
    rgb = viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="slide", rgb=True)
    other = viewer.add_image(np.zeros((8, 8), np.float32), name="thing")
    assert [guess_zoo_model(x) for x in (em, ct, rgb, other)] == [
        "zoo:em",
        "zoo:ct",
        "zoo:nuclei",
        None,
    ]
    # a scan read as float (most NIfTI readers) got the nuclei model; NaN outside the body
    hu = np.full((2, 8, 8), -1000.0, np.float32)
    hu[:, 0] = np.nan
    assert guess_zoo_model(viewer.add_image(hu, name="volume")) == "zoo:ct"
    blank = viewer.add_image(np.full((8, 8), np.nan, np.float32), name="blank")
    assert guess_zoo_model(blank) is None


def test_an_em_stack_without_a_telling_name_gets_the_em_model(
    make_napari_viewer: Any, data_dir: Path
) -> None:
    """An EM stack named "em10" (no pixel size) got the nuclei model (QA session 11): a grey
    image whose median lies mid-range is taken for EM; DSB's fluorescence (dark background)
    and brightfield (bright background) images are not."""
    import tifffile

    from napari_unetpp._widgets._model_box import guess_zoo_model

    viewer = make_napari_viewer()
    em = tifffile.imread(data_dir / "em_isbi2012" / "image.tif")[:10, :256, :256]
    assert guess_zoo_model(viewer.add_image(em, name="em10")) == "zoo:em"
    assert guess_zoo_model(viewer.add_image(em[3], name="stack1")) == "zoo:em"
    from skimage import io

    from napari_unetpp.normalization import rgb_to_grey

    guesses = []
    for path in sorted((data_dir / "nuclei_dsb2018" / "images").glob("*.png"))[:40]:
        image = io.imread(path)
        grey = image if image.ndim == 2 else rgb_to_grey(image).astype(np.uint8)
        guesses.append(guess_zoo_model(viewer.add_image(grey, name="img")))
    assert guesses.count("zoo:em") <= 2 and guesses.count(None) >= 38


def test_the_model_guess_reads_one_plane_of_a_lazy_volume(make_napari_viewer: Any) -> None:
    """Choosing a lazy (dask, zarr) volume read all of it three times to guess its model,
    the GUI thread waiting: minutes for a big light-sheet or CT store (QA session 11)."""
    import dask.array as da

    from napari_unetpp._widgets._model_box import guess_zoo_model

    read: list[int] = []

    def count(block: np.ndarray) -> np.ndarray:
        read.append(1)
        return block

    def volume(value: float) -> Any:
        return da.full((16, 32, 32), value, np.float32, chunks=(1, 32, 32)).map_blocks(count)

    viewer = make_napari_viewer()
    scan, light = viewer.add_image(volume(-1000.0)), viewer.add_image(volume(5.0))
    read.clear()
    assert guess_zoo_model(scan) == "zoo:ct" and guess_zoo_model(light) is None
    assert len(read) <= 2  # a plane each


def test_a_microscope_image_after_a_scan_does_not_keep_the_ct_model(
    make_napari_viewer: Any,
) -> None:
    """A CT scan picked the CT model; an 8-bit grey image without a name hint opened next
    kept it (nothing was guessed for it), and a 4096 x 4096 EM plane was segmented as a body
    for 4 minutes. An image that cannot hold Hounsfield units leaves CT for the default."""
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = viewer.add_image(np.full((2, 16, 16), -1000, np.int16), name="scan")
    assert widget._model.value == "zoo:ct"
    widget._image.value = viewer.add_image(np.zeros((16, 16), np.uint8), name="plane")
    assert widget._model.value not in (None, "zoo:ct")
    widget._image.value = viewer.add_image(np.zeros((16, 16), np.float32), name="scan2")
    assert widget._model.value not in (None, "zoo:ct")  # kept what it had: floats may be HU


def test_a_fluorescence_image_after_an_em_stack_gets_the_nuclei_model(
    make_napari_viewer: Any, crop: np.ndarray
) -> None:
    """An EM stack picked the EM model; a grey fluorescence image (dark background, bright
    nuclei) chosen next kept it, as nothing was guessed for it, and its nuclei were
    segmented as membranes (QA session 12). The user guide: anything else gets nuclei."""
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = viewer.add_image(crop, name="stack")
    assert widget._model.value == "zoo:em"
    cells = np.zeros((64, 64), np.uint8)
    cells[10:20, 10:20] = cells[40:52, 30:40] = 200
    widget._image.value = viewer.add_image(cells, name="cells")
    assert widget._model.value == "zoo:nuclei" and widget.model_spec == "zoo:nuclei"
    widget._image.value = viewer.layers["stack"]  # and back
    assert widget._model.value == "zoo:em"
    widget._model.value = "zoo:ct"  # a model the user picks is kept
    widget._on_user_model(0)
    widget._image.value = viewer.layers["cells"]
    assert widget._model.value == "zoo:ct"


def test_removing_the_image_falls_back_to_a_users_image_not_a_result(
    setup: Any, crop: np.ndarray
) -> None:
    """With the chosen image removed, the Image box fell back to the first Image layer, the
    previous run's 'UNet++ L1' probabilities, and the next Segment ran on them (race QA's
    open item): the user's images come first."""
    viewer, w, errors = setup
    first = viewer.add_image(crop[0], name="first")
    w._image.value = first
    w.segment()
    assert "first UNet++ L1" in viewer.layers and not errors
    second = viewer.add_image(crop[1], name="second")  # after the results in the layer list
    viewer.layers.remove(first)
    assert w._image.value is second


def test_chosen_path_is_one_path_or_a_user_facing_error() -> None:
    from napari_unetpp._widgets._paths import chosen_path

    assert chosen_path(Path("out"), "output folder") == Path("out")
    for value in (None, (Path("a"), Path("b")), Path("")):
        with pytest.raises(ValueError, match="choose one output folder"):
            chosen_path(value, "output folder")


def test_an_emptied_output_folder_is_refused_not_the_working_directory(
    setup: Any, crop: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, w, errors = setup
    monkeypatch.chdir(tmp_path / "runs" if (tmp_path / "runs").is_dir() else tmp_path)
    before = set(Path.cwd().iterdir())
    w._image.value = viewer.add_image(crop[0], name="em")
    w._output.line_edit.value = ""  # the user cleared the field
    w.segment()
    assert errors and "choose one output folder" in errors[-1]
    assert set(Path.cwd().iterdir()) == before  # nothing written where napari was started


def test_the_int8_switch_runs_int8_and_the_written_command_replays_it(
    setup: Any, crop: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: int8 from the Segment dock. Ticked on a CPU without bf16, the dock's run
    is the engine's int8 run (not float32's), run.json and command.sh say int8, and the
    command replays the dock's labels."""
    from napari_unetpp import devices

    viewer, w, errors = setup
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)  # as on this CI CPU
    w._refresh_int8()
    assert w._int8.enabled and not w._int8.value  # offered, off by default
    assert "int8" in w._int8.tooltip and "2x faster" in w._int8.tooltip
    w._image.value = viewer.add_image(crop[0], name="em")
    w._int8.value = True
    w.segment()
    assert not errors, errors
    run = json.loads((w.last_run_dir / "run.json").read_text())
    assert run["predict"]["int8"] is True
    assert "--int8" in (w.last_run_dir / "command.sh").read_text()
    shown = viewer.layers["em UNet++ L2"].data
    runs = {
        int8: predict_array(
            w.model,
            crop[0],
            PredictConfig(tile_size=(128, 128), device="cpu", int8=int8),
            DataConfig(),
        )
        for int8 in (True, False)
    }
    np.testing.assert_allclose(shown, runs[True][2], atol=1e-6)
    assert not np.allclose(shown, runs[False][2], atol=1e-4)  # int8 really ran
    _replay_command_and_compare(w.last_run_dir)


def test_the_int8_switch_is_greyed_where_it_cannot_run_or_help(
    setup: Any, crop: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch is greyed and off, its tooltip saying why, on a CPU with bf16 and for a
    3D model (a GPU: ``quantize.int8_refusal``); with adaptive depth it is refused in the
    dock's words before anything runs."""
    from napari_unetpp import devices

    viewer, w, errors = setup
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    w._refresh_int8()
    w._int8.value = True
    w._image.value = viewer.add_image(crop[0], name="em")
    w.scale.adaptive.value = True
    w.segment()
    assert errors and "untick 'adaptive depth'" in errors[-1] and w.last_run_dir is None
    assert w._status.value.startswith("not started")
    w.scale.adaptive.value = False

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    w._device.value = "auto"  # a Device change re-checks (here: no GPU, a bf16 CPU)
    assert not w._int8.enabled and not w._int8.value and "bfloat16" in w._int8.tooltip
    assert w._predict_config(None).int8 is False

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    w._device.value = "cpu"
    assert w._int8.enabled
    w._int8.value = True
    w.load_model(_other_model(tmp_path, "3d", spatial_dims=3))
    assert not w._int8.enabled and not w._int8.value and "2D models only" in w._int8.tooltip
    assert w._predict_config(None).int8 is False


def test_result_layers_take_the_images_units_rotation_and_affine(
    setup: Any, crop: np.ndarray
) -> None:
    """A layer with physical units and a rotation (napari keeps both from the file or the
    user): every result layer overlays it, and napari has no mixed units to warn about."""
    viewer, w, errors = setup
    layer = viewer.add_image(
        crop[0], name="em", scale=SCALE, translate=TRANSLATE, rotate=30, units=("nm", "nm")
    )
    w._image.value = layer
    w.segment()
    assert not errors
    for name in _names(viewer)[1:]:
        out = viewer.layers[name]
        assert [str(u) for u in out.units] == ["nanometer", "nanometer"], name
        np.testing.assert_allclose(out.rotate, layer.rotate, err_msg=name)
        np.testing.assert_allclose(out.affine.affine_matrix, layer.affine.affine_matrix)
        np.testing.assert_allclose(
            out.data_to_world((5, 7)), layer.data_to_world((5, 7)), err_msg=name
        )


def test_layers_are_described_by_the_model_that_made_them(
    setup: Any, crop: np.ndarray, checkpoint: Path, tmp_path: Path
) -> None:
    """The user picks another model while a run is going: its layers keep the first one's
    name and classes (the pixels came from it)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    first = w.model_spec
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2, num_classes=3)
    info = CheckpointInfo(model=net.config.replace(class_names=("bg", "a", "b")), data=DataConfig())
    other = save_checkpoint(tmp_path / "other", net, info)
    shown = w._show
    w._show = lambda *args: (w.load_model(other), shown(*args))  # type: ignore[method-assign]
    w.segment()
    assert not errors and w.model_spec == str(other)
    labels = viewer.layers["em UNet++ labels"]
    assert labels.metadata["napari_unetpp"]["model"] == first
    assert "class" not in labels.features  # the second model's class names are not used


def test_each_result_is_checked_against_the_training_data(
    setup: Any,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_segment_dock: Any,
) -> None:
    """Segment with the shipped nuclei model: nuclei at twice the training size are shrunk
    by the default "auto object size" and pass; without it they warn (and say to shrink the
    image or measure the objects), a native image stays quiet; "check each result"
    unticked, nothing is checked and command.sh says --no-check (as the CLI would run)."""
    from skimage import io
    from skimage.transform import rescale

    import napari_unetpp
    from napari_unetpp.normalization import rgb_to_grey

    viewer, w, errors = setup
    warned: list[str] = []
    patch_segment_dock("show_warning", warned.append)
    w.load_model(Path(napari_unetpp.__file__).parent / "models" / "nuclei")
    image = io.imread(data_dir / "nuclei_dsb2018" / "images" / "2349e95ece2857c8.png")
    if image.ndim == 3:
        image = np.clip(np.round(rgb_to_grey(image)), 0, 255)
    native = image.astype(np.uint8)  # 9 nuclei of 15 px
    zoomed = rescale(native.astype("float32"), 2.0, order=1, preserve_range=True)
    w._tile.value = 256

    def segment(data: np.ndarray, name: str) -> dict[str, Any]:
        w._image.value = viewer.add_image(data.astype(np.uint8), name=name)
        w.segment()
        assert not errors
        return json.loads((w.last_run_dir / "run.json").read_text())

    # with the default "auto object size" the dock shrinks them to the training size first,
    # and the check finds the rescaled image like the training data
    run = segment(zoomed, "large nuclei (auto)")
    assert run["scale"]["rescale"] == "auto" and run["scale"]["zoom"][0] < 0.75, run["scale"]
    assert not run["image_check"]["unlike_training"] and not warned, run["image_check"]
    w.scale._auto.value = False  # unticked: the model sees nuclei twice its size
    run = segment(zoomed, "large nuclei")
    assert run["image_check"]["unlike_training"], run["image_check"]
    assert len(warned) == 1 and "auto object size" in warned[0], warned
    assert "large nuclei" in warned[0] and "unlike the training data" in w._status.value
    assert run["image_check"]["signals"]["half_size_ratio"] is not None  # the half-size pass ran
    # the slider's readout marks the depths on this image (the depth advice of the check)
    advice = run["image_check"]["advice"]
    readout = w.pruning._readout.value
    print(readout)
    agreement = advice["agreement"][str(w.pruning.depth)]
    assert f"on large nuclei: {100 * agreement:.1f}% as L4" in readout
    if advice["agreement"][str(advice["recommended"])] < 1 - advice["tolerance"]:
        assert f"use L{advice['suggested']} here" in readout

    run = segment(native, "native nuclei")
    assert run["image_check"] is not None and not run["image_check"]["unlike_training"]
    assert len(warned) == 1 and "unlike" not in w._status.value

    w.scale.check_results.value = False
    run = segment(zoomed, "unchecked")
    assert "image_check" not in run and len(warned) == 1
    assert "--no-check" in (w.last_run_dir / "command.sh").read_text()


def test_just_trained_offers_the_newest_model_first(
    make_napari_viewer: Any, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train, train again (resume), open the Segment dock: it offered the *first* run's
    model, so the user segmented with the older one. A run finished while the dock is open
    becomes its model too, unless the user picked one."""
    import shutil

    monkeypatch.setattr(_runner, "RUN_INLINE", True)
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path / "no-zoo"))
    runs = [shutil.copytree(checkpoint, tmp_path / f"run{i}" / "best") for i in (1, 2, 3)]
    _state.register_model("run1", runs[0])
    _state.register_model("run2", runs[1])
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w._source.value == "just trained"
    assert w.model_spec == str(runs[1])
    _state.register_model("run3", runs[2])  # a training ends while the dock is open
    assert w._model.value == str(runs[2]) and w.model_spec == str(runs[2])
    w._model.value = str(runs[0])  # the user picks an older one: kept
    w._on_user_model(0)
    _state.register_model("run2", runs[1])
    assert w.model_spec == str(runs[0])


def test_a_fine_tune_replaces_the_shipped_model_the_dock_picked(
    make_napari_viewer: Any, checkpoint: Path, crop: np.ndarray, tmp_path: Path
) -> None:
    """The 'label here next' loop: segment with the shipped model the dock picked, paint,
    fine-tune, press Segment again; the dock still held the shipped model and gave the
    first result again (QA session 12). A model the user picked stays, and a pruned model
    saved from the dock is no fine-tune."""
    import shutil

    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="em")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w._source.value == "shipped" and w.model_spec == "zoo:em"
    w.pruning.saved = pruned = shutil.copytree(checkpoint, tmp_path / "em-L2")
    _state.register_model("em L2", pruned)  # Save pruned model: kept as it was
    assert w._source.value == "shipped" and w.model_spec == "zoo:em"
    _state.register_model("em-run", checkpoint)  # a fine-tune ends
    assert w._source.value == "just trained" and w.model_spec == str(checkpoint)
    assert "just trained" in w._status.value
    w._source.value = "shipped"
    w._model.value = "zoo:em"
    w._on_user_model(0)  # picked by the user: kept
    _state.register_model("em-run 2", tmp_path / "tiny")
    assert w._source.value == "shipped" and w.model_spec == "zoo:em"


def test_undo_after_a_rerun_does_not_bring_back_the_old_result(
    setup: Any, crop: np.ndarray
) -> None:
    """A user corrected the labels with the brush, segmented again, then pressed ctrl+z:
    napari's undo history still held the first result's pixels and wrote them into the new
    labels. And the re-run, updating the layer in place, wiped the correction without a
    word (QA session 12): a painted result is kept, as the user's, beside the new one."""
    from napari_unetpp._widgets._layers import PLUGIN_KEY

    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    labels = viewer.layers["em UNet++ labels"]
    first = np.array(labels.data)
    everywhere = tuple(np.indices(first.shape).reshape(2, -1))
    labels.data_setitem(everywhere, 7)  # a brush correction (napari records it for undo)
    labels.mode = "paint"
    w.segment(pruned_depth=1)  # Apply at L1: a different result
    assert labels.name == "em UNet++ labels (edited)" and (labels.data == 7).all()
    assert PLUGIN_KEY not in labels.metadata and "kept in 'em UNet++ labels (edited)'" in (
        w._status.value
    )
    assert labels.mode == "paint"  # the user's tool is kept
    new = viewer.layers["em UNet++ labels"]
    second = np.array(new.data)
    assert not np.array_equal(first, second) and not errors
    new.undo()  # nothing of the first result comes back into the new one
    np.testing.assert_array_equal(new.data, second)
    labels.undo()  # the user's own history still undoes their stroke
    np.testing.assert_array_equal(labels.data, first)
    w.segment(pruned_depth=1)  # not painted since: updated in place
    assert viewer.layers["em UNet++ labels"] is new and len(viewer.layers) == 6


def test_the_status_names_the_model_that_segmented(setup: Any, crop: np.ndarray) -> None:
    """After a fine-tune the Segment dock stayed on the shipped model it had picked; the
    user pressed Segment and read 'done: labels from the Depth slider's depth: L3',
    nothing saying which model made them (the just-trained one was never used)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    assert not errors
    assert w._status.value.startswith("done with tiny: labels from"), w._status.value


def test_a_model_chosen_while_segmenting_gets_no_depth_advice_of_the_other(
    setup: Any, crop: np.ndarray, checkpoint: Path, tmp_path: Path
) -> None:
    """Another model chosen while a run was going: the run's depth advice ('on em: 99.1%
    as L2; use L2 here') was shown on the new model's pruning panel, about depths of a
    network it never ran."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    assert w.pruning.advice is not None  # the check's advice, for the model that ran
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
    other = save_checkpoint(tmp_path / "other", net, load_checkpoint(checkpoint)[1])
    shown = w._show
    w._show = lambda *args: (w.load_model(other), shown(*args))  # type: ignore[method-assign]
    w.segment()
    assert not errors and w.model_spec == str(other)
    assert w.pruning.advice is None and "on em:" not in w.pruning._readout.value


def test_the_labels_record_the_scope_they_were_made_with(setup: Any, crop: np.ndarray) -> None:
    """A stack segmented slice-wise, then a 2D image chosen while it ran: the stack's labels
    recorded scope '2D' (the box's value when the layers were added)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop, name="stack")
    other = viewer.add_image(crop[0], name="plane")
    shown = w._show
    w._show = lambda *args: (setattr(w._image, "value", other), shown(*args))  # type: ignore[method-assign]
    w.segment()
    assert not errors and w._scope.value == "2D"
    meta = viewer.layers["stack UNet++ labels"].metadata["napari_unetpp"]
    assert meta["scope"] == "whole stack slice-wise", meta


def _other_model(tmp_path: Path, name: str, spatial_dims: int = 2) -> Path:
    torch.manual_seed(2)
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2, spatial_dims=spatial_dims)
    info = CheckpointInfo(model=net.config, data=DataConfig())
    return save_checkpoint(tmp_path / name, net, info)


def test_an_adaptive_run_of_another_model_drops_the_first_models_depths(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    """Segment with one model, then with another with adaptive depth: the first model's
    L1 and L2 stayed (hidden) beside the new result, named as if they were its depths."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    assert "em UNet++ L2" in _names(viewer)
    w.load_model(_other_model(tmp_path, "other"))
    w.scale.adaptive.value = True
    w.segment()
    assert not errors, errors
    names = _names(viewer)
    assert "em UNet++ adaptive" in names
    assert "em UNet++ L1" not in names and "em UNet++ L2" not in names, names


def test_depth_layers_stay_in_order_after_apply_with_another_model_then_segment(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    """QA session 15, a biologist's loop: Segment, fine-tune (another model), Apply at L2
    (the first model's other depths dropped, L2 updated in place), then a full Segment:
    the new L1 went in under the labels, above the kept L2, so the layer list read L2, L1
    (napari draws later layers on top). The depths are back in order, under the labels."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    w.load_model(_other_model(tmp_path, "tuned"))
    w.segment(pruned_depth=2)
    assert _names(viewer)[:3] == ["em", "em UNet++ L2", "em UNet++ labels"]
    w.segment()
    assert not errors, errors
    assert _names(viewer)[:4] == ["em", "em UNet++ L1", "em UNet++ L2", "em UNet++ labels"]
    assert viewer.layers["em UNet++ L2"].visible and not viewer.layers["em UNet++ L1"].visible


def test_an_image_opened_again_goes_under_its_updated_results(setup: Any, crop: np.ndarray) -> None:
    """QA session 15: the image removed by mistake and opened again lands on top of its
    earlier result layers; Segment updated them in place under the opaque image, and the
    user saw no labels. The image now goes under its results."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    w.segment()
    viewer.layers.remove("em")
    w._image.value = viewer.add_image(crop[0], name="em")
    assert _names(viewer)[-1] == "em"
    w.segment()
    assert not errors, errors
    assert _names(viewer)[:4] == ["em", "em UNet++ L1", "em UNet++ L2", "em UNet++ labels"]


def test_a_run_without_blocks_to_label_drops_the_earlier_runs_blocks(
    setup: Any, crop: np.ndarray, tmp_path: Path
) -> None:
    """A 2D model's run, then a 3D model's on the same stack (3D blocks are not ranked):
    the 2D model's 'label here next' rectangles stayed, as if this result's."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop, name="stack")
    w.segment()
    assert "stack UNet++ label here next" in _names(viewer)
    w.load_model(_other_model(tmp_path, "volume", spatial_dims=3))
    w._tile.value = 32
    assert w._scope.value == "3D"
    w.segment()
    assert not errors, errors
    assert "stack UNet++ label here next" not in _names(viewer), _names(viewer)
    assert "label here next" not in w._status.value


def test_cancel_in_the_check_pass_says_the_result_was_not_checked(
    setup: Any, crop: np.ndarray
) -> None:
    """Cancel pressed while 'pass 2 of 2: checking the result': the labels (complete) came
    in and the status said only 'done', as if Cancel had done nothing."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="em")
    shown = w._on_event

    def cancel_in_check(event: Any) -> None:
        shown(event)
        if "checking the result" in (event.message or ""):
            w.cancel()

    w._on_event = cancel_in_check  # type: ignore[method-assign]
    w.segment()
    assert not errors, errors
    assert "em UNet++ labels" in _names(viewer)
    assert w._status.value.startswith("done") and "not checked" in w._status.value
    assert "image_check" not in json.loads((w.last_run_dir / "run.json").read_text())


def test_adaptive_depth_with_test_time_augmentation_says_it_is_off(
    setup: Any,
    crop: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    patch_segment_dock: Any,
) -> None:
    """Both ticked: the run was not adaptive (test-time augmentation runs every depth) and
    nothing said so; the user looked for the 'depth used' layer in vain."""
    viewer, w, errors = setup
    told: list[str] = []
    patch_segment_dock("show_info", told.append)
    w._image.value = viewer.add_image(crop[0], name="em")
    w.scale.adaptive.value = True
    w._tta.value = True
    w.segment()
    assert not errors, errors
    assert "em UNet++ depth used" not in _names(viewer)
    assert any("adaptive depth is off" in t for t in told), told


def test_saving_a_pruned_model_keeps_a_just_trained_model_in_the_dock(
    setup: Any, checkpoint: Path, tmp_path: Path
) -> None:
    """A model of the user's own (a run just trained, or a model folder opened in napari:
    both are listed under 'just trained'): Save pruned model switched the dock to the pruned
    network, its one head, and the Depth slider stuck at that depth (QA session 13); the
    guide says a pruned model saved from the dock does not switch it."""
    _, w, errors = setup
    _state.register_model("tiny run", checkpoint)  # as the reader registers a model folder
    w.load_model(checkpoint)
    assert w._source.value == "just trained" and w.model_spec == str(checkpoint)
    w.pruning._depth.value = 1
    try:
        folder = w.pruning.save_pruned()
        assert folder is not None and not errors
        assert w.model_spec == str(checkpoint), w.model_spec
        assert w.model is not None and w.model.head_depths == (1, 2)
        assert w.pruning._depth.max == 2
        assert str(folder) in w._model.choices  # listed all the same
    finally:
        _state.unregister_model(f"{w.model_name} L1")
        _state.unregister_model("tiny run")


def test_cancelling_stays_shown_until_the_job_stops(setup: Any, crop: np.ndarray) -> None:
    """Cancel said "cancelling...", and the next tile's progress replaced it at once
    ("pass 1 of 2: tile 8/24 · 11 s left"), as if Cancel had done nothing (QA session 13).
    The bar still moves; the words stay until the job has stopped."""
    from napari_unetpp.inference import PredictEvent

    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="plane")
    seen: list[str] = []
    shown = w._on_event

    def cancel_then_report(event: Any) -> None:
        if event.step > 0 and not seen:
            w.cancel()
            w._shown_at = 0.0  # not held back as a redraw too soon
            shown(PredictEvent(kind="tiles", step=1, total=event.total + 1, eta_s=9.0))
            seen.append(w._status.value)
        shown(event)

    w._on_event = cancel_then_report
    w.segment()
    assert seen == ["cancelling..."], seen
    assert w._status.value.startswith("cancelled") or "cancel" in w._status.value
    w._on_event = shown
    w.segment()  # a new run reports its progress again
    assert w._status.value.startswith("done"), w._status.value


def test_check_and_estimate_are_locked_while_the_dock_runs(
    setup: Any, crop: np.ndarray, qtbot: Any
) -> None:
    """Segment greyed out while a run waited or ran, 'Check this image' (and Estimate, for
    a model of object size) stayed enabled and answered a click with "a UNet++ job of this
    dock is running" (QA session 13)."""
    viewer, w, errors = setup
    w._image.value = viewer.add_image(crop[0], name="plane")
    assert w.scale.check.enabled
    with _queue_held_by_pruning_timing(w, qtbot):
        w.segment()
        assert w.busy and not w._run.enabled
        assert not w.scale.check.enabled and not w.scale.estimate.enabled
        w.cancel()
        assert w.scale.check.enabled and w._run.enabled
    assert not errors


def test_segment_without_an_image_says_not_started_not_the_last_runs_done(
    setup: Any, crop: np.ndarray
) -> None:
    """The image segmented, then removed, a Labels layer left (which the Image box does
    not list): Segment showed an error notification, and the status line still said
    "done with ...; run saved in ..." of the earlier run, as if this click had run
    (QA session 14)."""
    viewer, w, errors = setup
    image = viewer.add_image(crop[0], name="plane")
    w._image.value = image
    w.segment()
    assert w._status.value.startswith("done"), w._status.value
    viewer.layers.remove(image)
    for name in [layer.name for layer in viewer.layers]:
        viewer.layers.remove(name)
    viewer.add_labels((crop[0] > 100).astype(np.uint8), name="mask")
    assert w._image.value is None
    w.segment()
    assert errors and "Image layer" in errors[-1], errors
    assert w._status.value.startswith("not started"), w._status.value


def test_a_dim_fluorescence_tiff_with_a_micrometre_pixel_size_gets_the_nuclei_model(
    make_napari_viewer: Any, data_dir: Path, tmp_path: Path
) -> None:
    """A 16-bit fluorescence TIFF as a microscope camera writes it (an offset of 100 counts,
    noise, dim nuclei in a mostly empty field; ImageJ resolution 0.1625 um), opened with
    File > Open under a name without a hint: its median lies mid-range, as an EM section's,
    and the dock chose the EM model, though its pixel size says light microscope
    (QA session 14)."""
    import tifffile
    from scipy import ndimage
    from skimage import io

    dsb = io.imread(data_dir / "nuclei_dsb2018" / "images" / "003cee89357d9fe1.png")
    grey = dsb if dsb.ndim == 2 else dsb[..., 0]  # a grey stain saved as RGB(A) or not
    crop = ndimage.zoom(grey[:240, :240].astype(np.float32), 2.5, order=1)
    field = np.zeros((1024, 1024), np.float32)
    field[:600, :600] = crop / 255 * 60  # dim: 60 counts above the offset at most
    rng = np.random.default_rng(0)
    image = rng.poisson(field + 5) + 100 + rng.normal(0, 3, field.shape)
    path = tmp_path / "sample_01.tif"
    tifffile.imwrite(
        path,
        image.clip(0, 65535).astype(np.uint16),
        imagej=True,
        resolution=(1 / 0.1625, 1 / 0.1625),
        metadata={"unit": "um"},
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-unetpp")
    assert layer.metadata["unit"] == "um"
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = layer
    assert widget._model.value == "zoo:nuclei"
