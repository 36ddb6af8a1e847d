"""Both docks at a laptop's size, in a real (shown) napari window (issue 16).

Why: with the Train dock opened first, napari's ``resizeDocks`` left the Segment dock
~50 px (one row) at 1600x1000; the Train dock's expanded Advanced section was wider
than the dock and clipped on the right; an empty note left a gap under the Labels box.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

TRAIN = "Train / fine-tune UNet++"
SEGMENT = "Segment with UNet++ (predict, per-depth layers, pruning)"
#: A dock shorter than this shows a few rows of a ~1000 px form: not usable.
USABLE_HEIGHT = 400
#: The issue's laptop: a dock beside the canvas fits in this many pixels.
LAPTOP_DOCK_WIDTH = 420


def _laptop_viewer(make_napari_viewer):  # type: ignore[no-untyped-def]
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    QApplication.processEvents()
    return viewer


def _settle() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


@pytest.mark.parametrize("order", [(TRAIN, SEGMENT), (SEGMENT, TRAIN)])
def test_second_dock_opens_in_a_tab_with_the_height_of_the_first(make_napari_viewer, order):
    viewer = _laptop_viewer(make_napari_viewer)
    window = viewer.window._qt_window
    first, _ = viewer.window.add_plugin_dock_widget("napari-unetpp", order[0])
    _settle()
    second, _ = viewer.window.add_plugin_dock_widget("napari-unetpp", order[1])
    _settle()
    assert first in window.tabifiedDockWidgets(second)
    assert second.isVisible() and second.height() >= USABLE_HEIGHT, second.geometry()
    first.raise_()  # the user clicks the other tab
    _settle()
    assert first.isVisible() and first.height() >= USABLE_HEIGHT, first.geometry()


def test_expanded_advanced_section_fits_the_train_dock(make_napari_viewer):
    from qtpy.QtWidgets import QWidget

    viewer = _laptop_viewer(make_napari_viewer)
    dock, w = viewer.window.add_plugin_dock_widget("napari-unetpp", TRAIN)
    _settle()
    w._show_advanced.value = True
    _settle()
    assert all(row.visible for row in w._advanced)
    assert dock.minimumSizeHint().width() <= LAPTOP_DOCK_WIDTH
    assert w.native.sizeHint().width() <= LAPTOP_DOCK_WIDTH
    viewport = w._rows.parentWidget()  # the scroll area's viewport: what the user sees
    right = viewport.mapToGlobal(viewport.rect().topRight()).x()
    clipped = [
        (type(child).__name__, getattr(child, "text", lambda: "")())
        for child in w._rows.findChildren(QWidget)
        if child.isVisible() and child.mapToGlobal(child.rect().topRight()).x() > right
    ]
    assert clipped == []


def test_no_gap_for_empty_notes_and_overridden_widths_greyed(make_napari_viewer):
    viewer = _laptop_viewer(make_napari_viewer)
    _, w = viewer.window.add_plugin_dock_widget("napari-unetpp", TRAIN)
    _settle()
    labels_row = w._labels_box.native.parentWidget()
    pairs_row = w._add_pair.native.parentWidget()
    gap = pairs_row.geometry().top() - labels_row.geometry().bottom()
    assert not w._pair_info.visible
    assert gap <= 2 * w._rows.layout().spacing() + 2, gap  # no empty row between them
    w._pair_info.value = "a note"
    assert w._pair_info.visible  # a note, once said, gets its row
    assert w._widths.enabled
    w._custom_widths.value = "4 8 16"
    assert not w._widths.enabled and "overridden" in w._widths.tooltip
    w._custom_widths.value = ""
    assert w._widths.enabled


def _width(dock, w) -> int:  # type: ignore[no-untyped-def]
    _settle()
    return max(dock.minimumSizeHint().width(), w.native.minimumSizeHint().width())


def test_both_docks_fit_a_laptop_in_every_state(
    make_napari_viewer, monkeypatch, data_dir, tmp_path
):
    """Each dock <= 420 px wide as its rows come and go: the Segment dock was 432-434 px
    whatever it showed (its pruning panel's Apply / Save sat in a nested container behind
    an empty label column). States: no image; a CT scan (the CT model, its pixel size); a
    nuclei image of a long name with the instance model, before and after a run; the Train
    dock with a CT pair on the CT model, an instance model's fine-tune, Advanced shown."""
    import numpy as np
    import tifffile
    from qtpy.QtWidgets import QLabel
    from skimage import io

    from napari_unetpp._widgets import _runner
    from napari_unetpp.normalization import rgb_to_grey

    monkeypatch.setattr(_runner, "RUN_INLINE", True)
    viewer = _laptop_viewer(make_napari_viewer)
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-unetpp", SEGMENT)
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unetpp", TRAIN)
    seg._output.value, seg._device.value = tmp_path / "runs", "cpu"
    widths = {"segment": _width(seg_dock, seg), "train": _width(train_dock, train)}

    ct_dir = data_dir / "ct_totalseg"
    scan = tifffile.imread(ct_dir / "ct.tif")[10:14, :64, :64]
    organs = tifffile.imread(ct_dir / "organs.tif")[10:14, :64, :64]
    ct = viewer.add_image(scan, name="ct", scale=(3.0, 3.0, 3.0), units="mm")
    ct_labels = viewer.add_labels(organs, name="organs")
    seg._image.value = ct
    assert seg._model.value == "zoo:ct" and seg.scale._pixel.value == "3 3 3 mm"
    widths["segment, CT scan"] = _width(seg_dock, seg)
    train._image.value, train._labels_box.value = ct, ct_labels
    train._start_from.value = "zoo:ct"
    widths["train, CT pair on the CT model"] = _width(train_dock, train)

    image = io.imread(data_dir / "nuclei_dsb2018" / "images" / "2349e95ece2857c8.png")
    grey = rgb_to_grey(image[..., :3]) if image.ndim == 3 else image
    crop = np.clip(np.round(grey[:96, :96]), 0, 255).astype(np.uint8)  # a float: maybe CT
    name = "nuclei, widefield 40x, plate 3 well B7 field 12 (deconvolved, max projection)"
    nuclei = viewer.add_image(crop, name=name)
    painted = viewer.add_labels(np.zeros((96, 96), np.uint8), name=f"{name} labels")
    seg._image.value = nuclei
    assert seg._model.value == "zoo:nuclei" and seg.info.data.target == "instance"
    widths["segment, instance model"] = _width(seg_dock, seg)
    seg.segment()
    assert f"{name} UNet++ labels" in viewer.layers
    widths["segment, instance model after a run"] = _width(seg_dock, seg)
    train._image.value, train._labels_box.value = nuclei, painted
    train._start_from.value = "zoo:nuclei"
    assert train._target.value == "instance"
    widths["train, instance model"] = _width(train_dock, train)
    train._show_advanced.value = True
    assert all(row.visible for row in train._advanced)
    widths["train, Advanced shown"] = _width(train_dock, train)

    print("dock minimum widths", widths)
    assert max(widths.values()) <= LAPTOP_DOCK_WIDTH, widths
    # every field keeps its label (none dropped to save width)
    shown = {label.text() for label in seg.native.findChildren(QLabel)}
    for field in (
        seg._model,
        seg._image,
        seg.scale._pixel,
        seg.scale._diameter,
        seg.pruning._depth,
    ):
        assert field.label in shown, (field.label, sorted(shown))
