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
    assert dock.minimumSizeHint().width() <= 450
    assert w.native.sizeHint().width() <= 450
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
