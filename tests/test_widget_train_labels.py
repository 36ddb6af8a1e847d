"""What the Train dock says about the labels of a fine-tune before it trains (QA session 13).

No training runs here: Start is held before its job (``JobRunner.start`` patched), so the
tests check what a user is told at the click, on real shapes and the shipped models' cards.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp._widgets import train as train_module
from napari_unetpp._widgets._runner import JobRunner
from napari_unetpp._widgets.train import TrainWidget

pytestmark = pytest.mark.gui


def _told(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every notification the dock gives (info, warning, error), in order."""
    told: list[str] = []
    for name in ("show_info", "show_warning", "show_error"):
        monkeypatch.setattr(train_module, name, told.append)
    return told


def _organs(values: tuple[int, ...]) -> np.ndarray:
    """Dense masks of a 4-slice CT slab: one compact block per organ value."""
    labels = np.zeros((4, 64, 64), np.uint8)
    for k, value in enumerate(values):
        labels[:, 4 + 12 * k : 12 + 12 * k, 8:24] = value
    return labels


def test_a_fine_tune_of_the_ct_model_says_which_value_trains_which_organ(
    make_napari_viewer, tmp_path, monkeypatch
):
    """Dense organ masks with TotalSegmentator's ids (1 spleen, 2 right kidney, 3 left kidney,
    5 liver, 6 stomach) fine-tuned the CT model as 1 -> liver, 2 -> spleen, ... without a
    word: `train --from` says the mapping, the dock said nothing. Values other than the
    model's own are now a warning at Start, and the model's own a note."""
    told = _told(monkeypatch)
    held: list[object] = []
    monkeypatch.setattr(JobRunner, "start", lambda self, job, **_: held.append(job))
    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((4, 64, 64), 40, np.int16), name="ct")
    labels = viewer.add_labels(_organs((1, 2, 3, 5, 6)), name="organs")
    w = TrainWidget(viewer)
    w._image.value, w._labels_box.value = image, labels
    w._start_from.value = "zoo:ct"
    w._output.value = tmp_path
    assert w._label_mode.value == "dense"
    w._on_start()
    assert held, told
    mapping = [m for m in told if "1 -> liver" in m]
    assert mapping and "6 -> stomach" in mapping[0] and "1, 2, 3, 4, 5" in mapping[0], told
    assert "1 -> liver" in str(w._status.value) or "1 -> liver" in w._note
    told.clear()
    held.clear()
    labels.data = _organs((1, 2, 3, 4, 5))  # the model's own values: a note, no warning
    w._on_start()
    assert any("1 -> liver" in m and "5 -> stomach" in m for m in told), told
    assert not any("differ" in m for m in told), told


def test_a_stack_with_one_plane_of_labels_is_not_read_as_channels(
    make_napari_viewer, em_stack, tmp_path, monkeypatch
):
    """The 20-slice EM stack with labels of one plane: the dock set 'Channel axis' to axis 0
    without a word and trained a 20-channel model on it (validation IoU 0.000); napari shows
    those planes as slices. It now says the labels are one plane of a stack and what to do.
    A grey plane chosen after an RGB one no longer keeps 'last (RGB)', whose shape error
    named a nonsense "(128,)"."""
    told = _told(monkeypatch)
    image, membranes = em_stack
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w._output.value = tmp_path
    stack = viewer.add_image(image[:, :64, :64], name="em stack")
    plane = viewer.add_labels(membranes[0, :64, :64].astype(np.uint8), name="one plane")
    w._image.value, w._labels_box.value = stack, plane
    assert w._channel_axis.value == "none"
    assert w._pair_info.value.startswith("⚠") and "holds 20 planes" in w._pair_info.value
    assert "New labels layer" in w._pair_info.value
    w._on_start()
    assert told and "holds 20 planes" in told[-1]
    assert str(w._status.value).startswith("not started")
    two = viewer.add_image(image[:2, :64, :64], name="two channels")
    w._image.value = two  # two planes may well be channels, as the user guide promises
    assert w._channel_axis.value == "0" and not w._pair_info.value
    w._image.value = stack  # "axis 0" was guessed, not chosen: it does not stay for 20 planes
    assert w._channel_axis.value == "none"
    rgb = viewer.add_image(np.stack([image[0, :64, :64]] * 3, -1), name="rgb", rgb=True)
    w._image.value = rgb
    assert w._channel_axis.value == "-1"
    w._labels_box.value = viewer.add_labels(membranes[:2, :64, :64].astype(np.uint8), name="2")
    w._image.value = viewer.add_image(image[0, :64, :64], name="grey plane")
    assert w._channel_axis.value == "none" and "(64,)" not in w._pair_info.value
    assert "(64, 64)" in w._pair_info.value and "(2, 64, 64)" in w._pair_info.value


def test_labels_that_would_make_the_model_worse_stop_the_dock_before_it_trains(
    make_napari_viewer, qtbot, em_stack, tmp_path, monkeypatch
):
    """Membrane scribbles painted with napari's default brush (10 px) on an EM slice, and the
    dock's fine-tune defaults: the shipped EM model got worse on unseen slices (membrane IoU
    0.725 -> 0.647); the same strokes in label 1 alone (dense: the rest background) took it
    to 0.015. The dock said so once the run had started, and the run went on. It now stops
    before training (no run folder left), says why and how to go on; 'Train anyway' trains,
    and thin strokes train at once."""
    from skimage.draw import disk
    from skimage.morphology import skeletonize

    told = _told(monkeypatch)
    image, membranes = em_stack[0][9, :128, :128], em_stack[1][9, :128, :128]
    strokes = np.zeros(membranes.shape, np.uint8)
    strokes[20:30, 20:60] = strokes[90:100, 60:110] = 1  # background, say inside cells
    strokes[membranes == 1] = 0
    skeleton = np.argwhere(skeletonize(membranes == 1))
    along = skeleton[(skeleton[:, 0] > 40) & (skeleton[:, 0] < 80)]
    for point in along:
        strokes[disk(tuple(point), 5, shape=strokes.shape)] = 2  # along membranes, brush 10
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w._image.value = viewer.add_image(image, name="em")
    w._labels_box.value = viewer.add_labels(strokes, name="scribbles")
    w._start_from.value = "zoo:em"
    assert w._label_mode.value == "sparse" and w._preview.value  # the dock's defaults
    assert not w._train_anyway.value
    w._iterations.value, w._patch.value, w._batch.value = 1, 64, 1
    w._device.value, w._output.value = "cpu", tmp_path

    def start() -> None:
        told.clear()
        w._on_start()
        qtbot.waitUntil(lambda: not w._runner.running, timeout=180_000)

    start()
    wide = [m for m in told if "wider than what the starting model finds" in m]
    assert wide and "'membrane' (value 2)" in wide[0] and "tick 'Train anyway'" in wide[0], told
    assert "not started" in w._status.value and not any(tmp_path.iterdir())
    assert w.last_checkpoint is None and "UNet++ before" not in str(viewer.layers)
    w._train_anyway.value = True
    start()
    assert any("training finished" in m for m in told), told
    assert "--train-anyway" in (w.last_run_dir / "command.sh").read_text()
    w._train_anyway.value = False
    strokes[strokes == 2] = 0  # thin strokes: one pixel along the membranes
    strokes[tuple(along.T)] = 2
    viewer.layers["scribbles"].data = strokes
    start()
    assert any("training finished" in m for m in told), told
    strokes[strokes == 1] = 0  # the membrane strokes alone, napari's default label 1: dense
    strokes[strokes == 2] = 1
    viewer.layers["scribbles"].data = strokes
    w._label_mode.value = "dense"
    start()
    assert any("will learn to find far less 'membrane'" in m for m in told), told
    assert "not started" in w._status.value
    assert "choose Label mode 'sparse'" in w._status.value  # the dock's field, not a flag
    assert "--label-mode" not in w._status.value


def test_stop_while_waiting_for_another_job_says_so_and_leaves_no_run_folder(
    make_napari_viewer, qtbot, em_stack, tmp_path
):
    """Start pressed while the Segment dock segments (the training waits in the viewer's
    queue), then Stop: the status said "stopping after this step; keeping the best
    model..." for good, though no step ran and no model was kept, and the run folder stayed
    with a command.sh naming data never written (its replay failed on the missing files)."""
    from napari_unetpp._widgets._jobs import Ticket

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    image, membranes = em_stack
    w._image.value = viewer.add_image(image[:2, :64, :64], name="em")
    w._labels_box.value = viewer.add_labels(membranes[:2, :64, :64].astype(np.uint8), name="m")
    w._custom_widths.value, w._depth.value, w._iterations.value = "4 8 16", 2, 2
    w._patch.value, w._batch.value, w._device.value = 64, 1, "cpu"
    w._output.value = tmp_path

    def other_job():  # another dock's job, holding the queue until released
        while not release:
            yield None

    release: list[bool] = []
    w._runner.queue.submit(Ticket("segment", other_job(), inline=False))
    w._on_start()
    assert w._runner.queued and len(list(tmp_path.iterdir())) == 1
    w._on_stop()
    qtbot.waitUntil(lambda: not w._runner.running, timeout=10_000)
    release.append(True)
    qtbot.waitUntil(lambda: not w._runner.queue.busy(), timeout=30_000)
    assert str(w._status.value) == "stopped before it started: nothing was trained"
    assert w._start.enabled and not w._stop.enabled
    assert not list(tmp_path.iterdir())  # no half run folder
