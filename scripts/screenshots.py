"""Take the screenshots of docs/user-guide.md in a real napari viewer.

Run from the repository root (on a machine without a display, under xvfb)::

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshots.py

What it does, through the widgets exactly as a user would:

1. opens napari and loads the EM sample (File > Open Sample > EM (ISBI 2012) crop);
2. docks "Segment with UNet++", segments the sample with the shipped EM model
   (layers ``em sample UNet++ L1..L4`` and ``em sample UNet++ labels`` appear)
   -> ``docs/screenshots/predict_widget.png`` (the whole window);
3. moves the pruning slider to 2 and presses Apply (labels from the pruned L2 network)
   -> ``docs/screenshots/pruning_slider.png`` (the predict widget, pruning panel at the bottom);
4. docks "Train / fine-tune UNet++" and trains a tiny network (widths 4 8 16, depth 2,
   60 iterations, about a minute on 2 CPU cores) on the sample and its labels, so the live
   plot has data
   -> ``docs/screenshots/train_widget.png`` (the train widget with its plot).

Outputs of the runs go to a temporary folder (``--work DIR`` to keep them). Each PNG is
downscaled until it is under ``--max-kb`` (400 KB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def log(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Process Qt events until ``condition()`` holds; fail after ``timeout`` seconds."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)
    log(f"{what}: {time.monotonic() - start:.1f} s")


def settle(seconds: float = 1.0) -> None:
    """Let Qt draw (plots redraw on a timer, the canvas on events)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def save_small(image: Any, path: Path, max_kb: int) -> None:
    """Save an RGB(A) array or a QImage/QPixmap as PNG, downscaled until under ``max_kb``."""
    import numpy as np
    from PIL import Image

    if hasattr(image, "toImage"):  # QPixmap
        image = image.toImage()
    if hasattr(image, "save") and not isinstance(image, np.ndarray):  # QImage
        tmp = path.with_suffix(".tmp.png")
        image.save(str(tmp))
        pil = Image.open(tmp).convert("RGB")
        tmp.unlink()
    else:
        pil = Image.fromarray(np.asarray(image)[..., :3])
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.0
    while True:
        size = (max(1, int(pil.width * scale)), max(1, int(pil.height * scale)))
        shown = pil if scale == 1.0 else pil.resize(size, Image.LANCZOS)
        shown.save(path, optimize=True)
        kb = path.stat().st_size / 1024
        if kb <= max_kb or scale < 0.2:
            break
        scale *= 0.85
    log(f"wrote {path.relative_to(ROOT)} ({shown.width} x {shown.height}, {kb:.0f} KB)")


def grab_widget(widget: Any) -> Any:
    """The whole content of a (possibly scrollable) magicgui Container, not just what shows."""
    from qtpy.QtWidgets import QScrollArea

    # the docks keep their rows in a scroll area inside ``.native`` (_dock.scroll_inside)
    area = widget.native.findChild(QScrollArea)
    inner = widget.native if area is None or area.widget() is None else area.widget()
    inner.resize(inner.width(), inner.sizeHint().height())
    return inner.grab()


def scroll_to_top(widget: Any) -> None:
    """Scroll every scroll area around ``widget`` (magicgui's, napari's dock) to the top."""
    from qtpy.QtWidgets import QAbstractScrollArea

    own = getattr(getattr(widget, "_widget", None), "_scroll", None)  # magicgui's scroll area
    if own is not None:
        own.verticalScrollBar().setValue(0)
    parent = widget.native.parentWidget()
    while parent is not None:
        if isinstance(parent, QAbstractScrollArea):
            parent.verticalScrollBar().setValue(0)
        parent = parent.parentWidget()


def close_notifications(viewer: Any) -> None:
    """Close napari's toasts (e.g. the Qt backend deprecation notice) before a screenshot."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="keep run outputs here")
    parser.add_argument("--max-kb", type=int, default=400)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per long step")
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args(argv)

    import warnings

    # keep napari's toast about the Qt backend out of the pictures
    warnings.filterwarnings("ignore", message=".*(PyQt5 backend|System theme).*")
    import napari
    from qtpy.QtCore import Qt

    from napari_unetpp import zoo
    from napari_unetpp._sample_data import em_sample
    from napari_unetpp._widgets.predict import PredictWidget
    from napari_unetpp._widgets.train import TrainWidget

    em = next((e for e in zoo.available_models() if e.name == "em"), None)
    if em is None:
        log("the shipped EM model is missing: cannot take the screenshots")
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="unetpp-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"run outputs in {work}")

    viewer = napari.Viewer(title="napari-unetpp", show=True)
    viewer.window._qt_window.resize(1366, 768)  # a laptop screen (issue 16)
    for data, kwargs, kind in em_sample():  # what File > Open Sample does
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    settle(1)

    # ------------------------------------------------------------------ predict
    predict = PredictWidget(viewer)
    predict_dock = viewer.window.add_dock_widget(predict, name="Segment with UNet++", area="right")
    viewer.window._qt_window.resizeDocks([predict_dock], [420], Qt.Horizontal)
    # the dock imports torch off the GUI thread; a model set before that is not loaded
    wait_until(lambda: predict._torch_ready, args.timeout, "PyTorch loaded by the dock")
    predict._source.value = "shipped"
    predict._model.value = em.spec
    predict._image.value = viewer.layers["em sample"]
    predict._output.value = work / "predictions"
    log(f"model {predict.model_spec}, scope {predict._scope.value!r}")
    predict._run.native.click()  # the Segment button

    def segmented() -> bool:  # the job, the timing after it, and the layers (added one by one)
        return not predict._runner.queue.busy() and not predict.busy

    wait_until(
        segmented,
        args.timeout,
        "segmentation (all depths) and the pruning timing (one job at a time)",
    )
    names = [layer.name for layer in viewer.layers]
    log(f"layers: {names}")
    missing = [
        n
        for n in ("em sample UNet++ L1", "em sample UNet++ L4", "em sample UNet++ labels")
        if n not in names
    ]
    if missing:
        log(f"missing layers {missing}; status: {predict._status.value}")
        return 1
    viewer.layers["em sample labels"].visible = False  # show the prediction, not the truth
    shown = [
        layer
        for layer in viewer.layers
        if layer.name.startswith("em sample UNet++ L") and layer.visible
    ]  # the depth the labels came from (the Depth slider's)
    viewer.layers.selection.active = shown[0]
    viewer.dims.set_point(0, viewer.dims.range[0].start + viewer.dims.range[0].step)
    viewer.window._qt_window.resizeDocks([predict_dock], [420], Qt.Horizontal)
    settle(1)
    scroll_to_top(predict)
    close_notifications(viewer)
    viewer.reset_view()  # after the layout settled, so the image fits the canvas
    settle(2)
    save_small(
        viewer.screenshot(canvas_only=False, flash=False), OUT / "predict_widget.png", args.max_kb
    )

    # ------------------------------------------------------------------ pruning slider
    predict.pruning._depth.value = 2
    wait_until(
        lambda: predict.pruning.pruned is not None and predict.pruning.pruned.depth == 2,
        args.timeout,
        "pruning to L2",
    )
    predict.pruning._apply.native.click()
    wait_until(segmented, args.timeout, "segmentation at L2")
    log(f"pruning readout: {predict.pruning._readout.value!r}")
    log(f"status: {predict._status.value!r}")
    settle(1)
    save_small(grab_widget(predict), OUT / "pruning_slider.png", args.max_kb)

    # ------------------------------------------------------------------ train
    predict_dock.setVisible(False)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train / fine-tune UNet++", area="right")
    train._image.value = viewer.layers["em sample"]
    train._labels_box.value = viewer.layers["em sample labels"]
    log(f"label mode {train._label_mode.value}: {train._label_reason.value}")
    train._start_from.value = "scratch"
    train._show_advanced.value = True
    train._custom_widths.value = "4 8 16"
    train._depth.value = 2
    train._iterations.value = args.iterations
    train._patch.value = 64
    train._batch.value = 2
    train._validate_every.value = 10
    train._device.value = "cpu"
    train._output.value = work / "runs"
    train._start.native.click()  # the Start button, as a user presses it
    wait_until(
        lambda: train._runner.running or train.last_checkpoint is not None, 30, "training start"
    )
    wait_until(lambda: not train._runner.running, args.timeout, "training")
    log(f"train status: {train._status.value!r}")
    if train.last_checkpoint is None:
        log("training produced no checkpoint")
        return 1
    log(f"plot: {len(train._plot.steps)} steps, {len(train._plot.val_steps)} validations")
    settle(2.5)  # the plot redraws at most once a second
    save_small(grab_widget(train), OUT / "train_widget.png", args.max_kb)

    viewer.close()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
