"""What the Train dock says about the labels of a fine-tune before it trains (QA session 13).

No training runs here: Start is held before its job (``JobRunner.start`` patched), so the
tests check what a user is told at the click, on real shapes and the shipped models' cards.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp._widgets import train as train_module
from napari_unetpp._widgets.train import TrainWidget

pytestmark = pytest.mark.gui


def _told(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every notification the dock gives (info, warning, error), in order."""
    told: list[str] = []
    for name in ("show_info", "show_warning", "show_error"):
        monkeypatch.setattr(train_module, name, told.append)
    return told


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
