"""Opening a dock in a fresh napari never imports torch or matplotlib on the GUI thread.

Why: the first Segment dock of a session froze the viewer 2.7 s importing torch (for the
device list and the default model), the first Train dock 1.1 s importing matplotlib (for
the live plot). A thread imports them now; the model, devices and plot arrive when they
are in. Each case runs in a fresh interpreter (the test session has both imported) and
records which thread first imported the heavy module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

_OPEN_DOCK = """
import sys, threading, time
import napari

HEAVY, DOCK = sys.argv[1], sys.argv[2]

class Spy:  # records which thread first imports the heavy module
    threads = []
    def find_spec(self, name, path=None, target=None):
        if name == HEAVY:
            self.threads.append(threading.current_thread() is threading.main_thread())
        return None

sys.meta_path.insert(0, Spy())
from qtpy.QtWidgets import QApplication
if DOCK == "segment":
    from napari_unetpp._widgets.predict import PredictWidget as Dock
    ready = lambda w: w.model is not None
else:
    from napari_unetpp._widgets.train import TrainWidget as Dock
    ready = lambda w: getattr(w, "_live_plot", w) is not None

viewer = napari.Viewer(show=False)
widget = Dock(viewer)
viewer.window.add_dock_widget(widget)
print("imported on the GUI thread:", Spy.threads[:1] == [True])
if DOCK == "segment":
    print("segment enabled while loading:", widget._run.enabled)
end = time.time() + 120
while not ready(widget) and time.time() < end:
    QApplication.processEvents()
    time.sleep(0.01)
print("ready:", ready(widget))
print("imported:", Spy.threads)
if DOCK == "segment":
    print("model:", widget.model_spec)
    print("devices:", widget._device.choices)
    print("segment enabled:", widget._run.enabled)
else:
    widget._plot.start(10, (1, 2))  # the plot that arrived is the one the dock uses
    print("plot in the dock:", widget._plot.parent() is not None)
viewer.close()
"""


def _open(dock: str, heavy: str, home: Path) -> str:
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_DOCK, heavy, dock],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_segment_dock_imports_torch_in_a_thread(tmp_path: Path) -> None:
    lines = _open("segment", "torch", tmp_path)
    assert "imported on the GUI thread: False" in lines, lines
    assert "segment enabled while loading: False" in lines, lines
    assert "ready: True" in lines and "imported: [False]" in lines, lines  # once, by the thread
    assert "model: zoo:" in lines, lines  # the default shipped model, once torch is in
    assert "'cpu'" in lines.split("devices:")[1], lines
    assert "segment enabled: True" in lines, lines


def test_train_dock_imports_matplotlib_in_a_thread(tmp_path: Path) -> None:
    lines = _open("train", "matplotlib", tmp_path)
    assert "imported on the GUI thread: False" in lines, lines
    assert "ready: True" in lines and "imported: [False]" in lines, lines
    assert "plot in the dock: True" in lines, lines


def test_both_docks_fit_a_laptop_screen_and_scroll(make_napari_viewer, tmp_path: Path) -> None:
    """The Segment dock (with a run's status) and the Train dock each needed ~1000 px of
    height, and napari gives a dock no scroll area: on a laptop, or with both docks
    stacked (fine-tune, then segment), Qt squeezed buttons below their text (Estimate
    size, Check this image cut in half) or grew the window past the screen (2058 px).
    Each dock now scrolls; its rows keep their height."""
    from qtpy.QtWidgets import QApplication

    from napari_unetpp._widgets.predict import PredictWidget
    from napari_unetpp._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    segment, train = PredictWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(segment, name="segment")
    viewer.window.add_dock_widget(train, name="train")
    segment._status.value = "done: labels from the Depth slider's depth: L3; " * 6
    plot = train._plot  # the live plot scrolls with the rows (outside, it took the dock)
    window = viewer.window._qt_window
    window.resize(1366, 700)
    for _ in range(20):
        QApplication.processEvents()
    heights = {
        name: d.native.minimumSizeHint().height()
        for name, d in (("segment", segment), ("train", train))
    }
    print("dock minimum heights", heights, "window", window.height())
    assert max(heights.values()) < 300, heights
    assert window.height() <= 700
    for button in (segment.scale.estimate, segment.scale.check, segment._run, train._start):
        assert button.native.height() >= button.native.minimumSizeHint().height()
    assert train._rows.isAncestorOf(plot)
    width = segment.native.minimumSizeHint().width()
    assert width <= 420, width  # and still no wider than a laptop's dock (issue 16)
