"""Issue 16: one torch job at a time per viewer, and jobs that stop with their dock.

Threaded (the real path): a tiny UNet++ checkpoint, an EM crop. The freeze of
issue 16 (napari hung for good in its activity dialog while two pruning timings
ran torch at once) is replayed: open the Segment dock, move the depth slider,
open an image file at once. A pytest-timeout turns a hang into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from napari_unetpp import pruning
from napari_unetpp._widgets import _runner
from napari_unetpp._widgets import train as train_module
from napari_unetpp._widgets.predict import PredictWidget
from napari_unetpp._widgets.train import TrainWidget
from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
from napari_unetpp.config import DataConfig
from napari_unetpp.model import UNetPlusPlus

pytestmark = pytest.mark.gui
WAIT_MS = 120_000
#: A hard limit that also works when a deadlock holds the GIL (then pytest-timeout's thread
#: cannot run: on the code before the fix, the freeze test hung until killed from outside).
HARD_LIMIT_S = 280


@pytest.fixture(autouse=True)
def watchdog() -> Any:
    """faulthandler's C thread dumps all stacks and exits the process on a hang."""
    import faulthandler

    faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=(4, 8, 16, 32), depth=3)
    info = CheckpointInfo(
        model=net.config, data=DataConfig(), metrics={"best_depth": 2, "score_name": "iou"}
    )
    return save_checkpoint(tmp_path / "tiny", net, info)


@pytest.fixture
def threaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_runner, "RUN_INLINE", False)
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path / "no-zoo"))


def _segment_dock(viewer: Any, qtbot: Any, checkpoint: Path, tmp_path: Path, image: np.ndarray):
    """A docked Segment widget with the tiny model loaded (its timing done), segmenting
    ``image`` in a thread; returns the widget and its dock."""
    w = PredictWidget(viewer)
    dock = viewer.window.add_dock_widget(w)
    w._device.value, w._output.value, w._tile.value = "cpu", tmp_path / "runs", 64
    w.load_model(checkpoint)
    qtbot.waitUntil(lambda: not w._runner.queue.busy(), timeout=WAIT_MS)
    w._image.value = viewer.add_image(image, name="stack")
    w.segment()
    return w, dock


class Concurrency:
    """Counts torch jobs running at once (wrapping the pruning timing)."""

    def __init__(self) -> None:
        self.active = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def wrap(self, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> float:
            with self.lock:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            try:
                time.sleep(0.3)  # a slow machine: long enough for the race to show
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.active -= 1

        return timed


@pytest.mark.timeout(300, method="thread")
def test_slider_then_open_never_overlaps_or_freezes(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = Concurrency()
    monkeypatch.setattr(pruning, "measure_ms_per_mpx", seen.wrap(pruning.measure_ms_per_mpx))
    image_file = tmp_path / "em.tif"
    tifffile.imwrite(image_file, np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8))
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w._device.value = "cpu"
    w.load_model(checkpoint)  # a model is picked: its recommended depth is timed
    for depth in (1, 3, 2, 3, 1):  # a user dragging the slider
        w.pruning._depth.value = depth
        qtbot.wait(50)
    viewer.open(str(image_file))  # within ~2 s: napari's activity dialog adds a progress bar
    qtbot.waitUntil(
        lambda: w.pruning.ms_per_mpx is not None and not w.pruning._runner.running, timeout=WAIT_MS
    )
    print(f"timings run: {seen.calls}, most at once: {seen.peak}")
    assert seen.peak == 1, "two torch jobs ran at once"
    assert seen.calls <= 2  # the debounced slider timed the depth it rested at, not each move
    assert "L1" in w.pruning._readout.value and "ms per megapixel" in w.pruning._readout.value
    assert "em" in viewer.layers


@pytest.mark.timeout(300, method="thread")
def test_the_flop_count_runs_off_the_gui_thread(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pruning readout's exact GFLOP/Mpx: its first count in a process took 2-3.5 s
    (torch's FLOP counter warming up) on the GUI thread, inside opening the Segment dock."""
    threads: list[str] = []
    original = pruning.gflop_per_mpx

    def counted(*args: Any, **kwargs: Any) -> float:
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(pruning, "gflop_per_mpx", counted)
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w._device.value = "cpu"
    w.load_model(checkpoint)
    qtbot.waitUntil(lambda: "GFLOP/Mpx (" in w.pruning._readout.value, timeout=WAIT_MS)
    assert threads and threading.main_thread().name not in threads


@pytest.mark.timeout(300, method="thread")
def test_closed_segment_dock_adds_no_layers(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    viewer = make_napari_viewer()
    w, dock = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:6, :128, :128])
    qtbot.waitUntil(lambda: w._runner.worker is not None, timeout=WAIT_MS)
    worker = w._runner.worker
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    qtbot.waitUntil(lambda: not w._runner.queue.busy(), timeout=WAIT_MS)
    qtbot.wait(500)
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert not worker.is_running

    again = PredictWidget(viewer)  # reopened: ready to segment
    viewer.window.add_dock_widget(again)
    assert again._run.enabled and not again._cancel.enabled


@pytest.mark.timeout(300, method="thread")
def test_a_dock_closed_while_its_layers_are_added_adds_no_more(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """The run has returned and its layers go in one per event-loop turn: closing the dock
    then must stop them too (they were all added, into a viewer that may be closing)."""
    viewer = make_napari_viewer()
    w, dock = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:2, :64, :64])
    qtbot.waitUntil(lambda: w._showing, timeout=WAIT_MS)
    added = len(viewer.layers)
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(1000)
    assert len(viewer.layers) == added < 7  # the image, at most one result layer


@pytest.mark.timeout(300, method="thread")
def test_check_and_estimate_wait_while_a_results_layers_are_added(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_segment_dock: Any,
) -> None:
    """Check this image (or Estimate size) clicked while a run's layers went in started a job
    whose status replaced the run's 'done ... saved in'; it now waits, as Segment does."""
    told: list[str] = []
    patch_segment_dock("show_info", told.append)
    viewer = make_napari_viewer()
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:2, :64, :64])
    # the job's 'returned' and 'finished' are two signals: on a loaded machine the layers
    # started going in (returned) a moment before the job counted as finished
    qtbot.waitUntil(lambda: w._showing and not w._runner.running, timeout=WAIT_MS)
    w.check_image()
    w.estimate_size()
    assert not w._runner.running and len(told) == 2 and "running" in told[0]
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert w._status.value.startswith("done")


@pytest.mark.timeout(300, method="thread")
def test_an_image_removed_while_segmented_gets_no_layers(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Seven result layers appeared for an image no longer in the viewer (as the Train
    dock's preview did before it was fixed); and the job ran on to its end, holding the
    viewer's queue for a result nobody would see: it is stopped when its image goes."""
    viewer = make_napari_viewer()
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:4, :128, :128])
    qtbot.waitUntil(lambda: w._runner.worker is not None, timeout=WAIT_MS)
    viewer.layers.remove("stack")
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    qtbot.wait(300)
    assert len(viewer.layers) == 0
    assert w._status.value == "stopped: the image 'stack' was removed", w._status.value
    assert w._run.enabled and not (w.last_run_dir / "labels.tif").exists()


def _start_long_training(
    viewer: Any,
    w: Any,
    crop: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    qtbot: Any,
    preview: bool,
) -> tuple[Any, list[int]]:
    """Dock ``w`` (a TrainWidget), start a 5000-step training on ``crop`` (image, membranes)
    and wait for its third step; returns the dock and the steps the dock has been told of."""
    from napari_unetpp._widgets.train import TrainWidget

    viewer.add_image(crop[0].copy(), name="em")
    viewer.add_labels(crop[1].astype(np.uint8), name="membranes")
    dock = viewer.window.add_dock_widget(w)
    w._custom_widths.value, w._depth.value, w._iterations.value = "4 8 16", 2, 5000
    w._patch.value, w._batch.value, w._device.value = 64, 2, "cpu"
    w._output.value, w._preview.value = tmp_path, preview
    steps: list[int] = []
    original = TrainWidget._on_event
    monkeypatch.setattr(
        TrainWidget, "_on_event", lambda self, e: (steps.append(e.step), original(self, e))
    )
    w._on_start()
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=WAIT_MS)
    return dock, steps


@pytest.mark.timeout(300, method="thread")
@pytest.mark.parametrize("given", ["viewer", "proxy"])
def test_closed_train_dock_stops_training(
    make_napari_viewer: Any,
    qtbot: Any,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
) -> None:
    """Also as napari's plugin menu makes the dock: given a PublicOnlyProxy of the viewer
    (through which the window is a proxy too: the close went unseen)."""
    from napari.utils._proxies import PublicOnlyProxy

    errors: list[str] = []
    monkeypatch.setattr(train_module, "show_error", errors.append)
    viewer = make_napari_viewer()
    crop = (em_stack[0][:2, :128, :128], em_stack[1][:2, :128, :128])
    w = TrainWidget(PublicOnlyProxy(viewer) if given == "proxy" else viewer)
    dock, steps = _start_long_training(viewer, w, crop, tmp_path, monkeypatch, qtbot, preview=True)
    assert not errors
    worker = w._runner.worker
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    qtbot.waitUntil(lambda: not w._runner.queue.busy(), timeout=WAIT_MS)
    seen = len(steps)
    qtbot.wait(500)
    assert not worker.is_running and len(steps) == seen and max(steps) < 100
    assert [layer.name for layer in viewer.layers] == ["em", "membranes"]  # no preview later
    _assert_saved_stopped(w.last_run_dir)  # before the fix: run.json, command.sh, data/ only

    again = TrainWidget(viewer)  # reopened: Start enabled, Stop disabled, nothing running
    viewer.window.add_dock_widget(again)
    assert again._start.enabled and not again._stop.enabled and not again._runner.running


@pytest.mark.timeout(120, method="thread")
def test_old_objects_are_frozen_while_a_threaded_job_runs(qtbot: Any, threaded: None) -> None:
    """No full garbage collection walks the objects that were alive when a threaded job
    started (0.3-0.6 s stalls of the GUI thread, issue 16); they are thawed after it."""
    import gc

    from napari_unetpp._widgets._jobs import JobQueue

    seen: dict[str, int] = {}

    def job() -> Any:
        seen["frozen"] = gc.get_freeze_count()
        yield 1
        return 2

    before = gc.get_freeze_count()
    runner = _runner.JobRunner(queue=JobQueue())
    results: list[Any] = []
    runner.start(job(), on_return=results.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_MS)
    assert results == [2]
    assert seen["frozen"] > before and gc.get_freeze_count() == before


def test_a_threaded_jobs_warnings_reach_the_user(qtbot: Any, threaded: None) -> None:
    """The engine warns (NaN pixels filled, a flat image) inside the worker thread; the
    user must see it as a notification (it vanished: napari's relay never connected)."""
    import warnings

    from napari.utils.notifications import notification_manager

    from napari_unetpp._widgets._jobs import JobQueue

    def job() -> Any:
        warnings.warn("the image has 7 non-finite pixels (test_widget_jobs)", stacklevel=1)
        warnings.warn("a library's 7 deprecated calls", DeprecationWarning, stacklevel=1)
        yield 1
        return 2

    shown: list[str] = []

    def note(notification: Any) -> None:
        shown.append(str(notification.message))

    notification_manager.notification_ready.connect(note)
    try:
        runner = _runner.JobRunner(queue=JobQueue())
        runner.start(job())
        qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_MS)
        qtbot.wait(100)
    finally:
        notification_manager.notification_ready.disconnect(note)
    assert sum("7 non-finite pixels" in message for message in shown) == 1, shown
    assert not any("deprecated" in message for message in shown), shown


def test_docks_given_proxies_of_one_viewer_share_its_queue(make_napari_viewer: Any) -> None:
    """napari hands each plugin dock its own PublicOnlyProxy of the viewer."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_unetpp._widgets._jobs import queue_for

    viewer = make_napari_viewer()
    first, second = PublicOnlyProxy(viewer), PublicOnlyProxy(viewer)
    assert first is not second
    assert queue_for(first) is queue_for(second) is queue_for(viewer)
    assert queue_for(make_napari_viewer()) is not queue_for(viewer)


@pytest.mark.timeout(300, method="thread")
def test_a_failing_threaded_job_is_reported_once_and_not_reraised(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An all-NaN image fails in the worker: one message, the status says so, and nothing
    is raised again on the GUI thread (pytest-qt fails a test on an exception there)."""
    shown: list[str] = []
    monkeypatch.setattr(
        "napari.utils.notifications.show_error", lambda message: shown.append(message)
    )
    viewer = make_napari_viewer()
    blank = np.full((64, 64), np.nan, np.float32)
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, blank)
    qtbot.waitUntil(lambda: not w._runner.queue.busy(), timeout=WAIT_MS)
    qtbot.wait(200)
    assert len(shown) == 1 and "no finite values" in shown[0]
    assert w._status.value.startswith("failed: ") and w._run.enabled


def _assert_saved_stopped(run_dir: Path) -> None:
    """A training stopped before its first validation saved ``last/`` (resumable: optimizer
    state) and ``best/``, both saying it stopped early, as the CLI's Ctrl-C does."""
    from napari_unetpp.checkpoint import read_info
    from napari_unetpp.resume import load_resume_state

    for name in ("last", "best"):
        provenance = read_info(run_dir / name).provenance
        assert provenance["stopped_early"] is True and 0 < provenance["iterations"] < 100
    state, _ = load_resume_state(run_dir / "last")
    assert state["step"] == read_info(run_dir / "last").provenance["iterations"]


@pytest.mark.timeout(300, method="thread")
def test_closing_the_viewer_mid_training_saves_the_run(
    make_napari_viewer: Any,
    qtbot: Any,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing the viewer at step 3 of a long training: the run folder held only run.json,
    command.sh and data/ (the job was quit, not stopped)."""
    import gc

    from napari_unetpp._widgets import _workers

    viewer = make_napari_viewer()
    crop = (em_stack[0][0, :96, :96], em_stack[1][0, :96, :96])
    w = TrainWidget(viewer)
    _start_long_training(viewer, w, crop, tmp_path, monkeypatch, qtbot, preview=False)
    worker, run_dir = w._runner.worker, w.last_run_dir
    viewer.close()
    w = viewer = None
    gc.collect()
    qtbot.waitUntil(lambda: worker not in _workers.LIVE_WORKERS, timeout=WAIT_MS)
    _assert_saved_stopped(run_dir)


@pytest.mark.timeout(300, method="thread")
def test_closing_the_viewer_while_a_job_runs_keeps_python_alive(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Closing the viewer drops its queue; the running worker must live until its thread
    ends (freed earlier, its last signal aborted Python: exit 134)."""
    import gc

    from napari_unetpp._widgets import _workers

    viewer = make_napari_viewer()
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:6, :128, :128])
    qtbot.waitUntil(lambda: w._runner.worker is not None, timeout=WAIT_MS)
    worker = w._runner.worker
    assert worker in _workers.LIVE_WORKERS
    viewer.close()
    w = viewer = None  # nothing of ours keeps the viewer, its queue or its dock alive
    gc.collect()
    qtbot.waitUntil(lambda: worker not in _workers.LIVE_WORKERS, timeout=WAIT_MS)
    qtbot.wait(300)  # its last signals were delivered without a crash


@pytest.mark.timeout(300, method="thread")
def test_a_dock_closed_between_a_layers_insert_and_show_leaves_it_shown(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """A result layer goes in hidden and is shown a turn later; a dock closed in between
    left the labels hidden for good: a reopened dock's re-run updates them in place, and
    its 'done' showed no labels (QA session 9)."""
    viewer = make_napari_viewer()
    w, dock = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:2, :64, :64])

    def close_at_labels(event: Any) -> None:
        if event.value.name == "stack UNet++ labels":  # inserted hidden, to be shown next turn
            viewer.window.remove_dock_widget(dock)

    viewer.layers.events.inserted.connect(close_at_labels)
    qtbot.waitUntil(lambda: "stack UNet++ labels" in viewer.layers, timeout=WAIT_MS)
    qtbot.wait(500)
    viewer.layers.events.inserted.disconnect(close_at_labels)
    assert w._closed and viewer.layers["stack UNet++ labels"].visible


@pytest.mark.timeout(300, method="thread")
def test_a_layer_selected_while_the_result_is_added_keeps_the_selection(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """The new labels are selected in the result's last turn; a layer the user selected
    after the first result layer went in (their own labels, to paint on) lost the
    selection to them, and the next brush stroke went into the result (QA session 9)."""
    viewer = make_napari_viewer()
    mine = viewer.add_labels(np.zeros((2, 64, 64), np.int32), name="mine")
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:2, :64, :64])

    def pick_mine(event: Any) -> None:
        if event.value.name == "stack UNet++ L1":  # the result's first layer: the user clicks
            viewer.layers.selection.active = mine

    viewer.layers.events.inserted.connect(pick_mine)
    qtbot.waitUntil(lambda: "stack UNet++ label here next" in viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    viewer.layers.events.inserted.disconnect(pick_mine)
    assert viewer.layers.selection.active is mine
    assert viewer.layers["stack UNet++ labels"].visible

    viewer.layers.remove("stack UNet++ labels")  # a new labels layer, nothing picked meanwhile
    w.segment()
    qtbot.waitUntil(lambda: "stack UNet++ labels" in viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert viewer.layers.selection.active is viewer.layers["stack UNet++ labels"]


@pytest.mark.timeout(300, method="thread")
def test_an_image_removed_while_its_result_is_added_gets_no_more_layers(
    make_napari_viewer: Any,
    qtbot: Any,
    checkpoint: Path,
    threaded: None,
    em_stack: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Removed before its result came, an image gets no layers; removed while they went
    in one per turn, it got the rest of them (labels over nothing) and 'done' (QA session 9)."""
    viewer = make_napari_viewer()
    w, _ = _segment_dock(viewer, qtbot, checkpoint, tmp_path, em_stack[0][:2, :64, :64])

    def remove_image(event: Any) -> None:
        if event.value.name == "stack UNet++ L1":
            viewer.layers.remove("stack")

    viewer.layers.events.inserted.connect(remove_image)
    qtbot.waitUntil(lambda: "stack UNet++ L1" in viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    viewer.layers.events.inserted.disconnect(remove_image)
    assert [layer.name for layer in viewer.layers] == ["stack UNet++ L1"]
    assert "'stack' was removed" in w._status.value and w._run.enabled


_EXIT_WHILE_LOADING = """
import time
from qtpy.QtWidgets import QApplication
app = QApplication([])
from napari_unetpp._widgets._workers import in_background
in_background(lambda: time.sleep(1.0), lambda _: None, lambda _: None)  # as torch loads
print("exiting", flush=True)
"""


def test_python_exits_cleanly_while_a_background_worker_runs() -> None:
    """napari quit within seconds of opening the Segment dock (torch still loading in a
    worker): Python's exit freed the worker under its running thread and aborted
    ("wrapped C/C++ object of type WorkerBaseSignals has been deleted", status 134)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WHILE_LOADING],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "exiting" in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0 and "has been deleted" not in done.stderr, done.stderr[-2000:]


def test_a_waiting_job_names_the_job_it_waits_for() -> None:
    """Segment on a new image said "waiting for another UNet++ job of this viewer" for
    seconds, the user having started none: the pruning panel was timing a depth; a dock
    reopened after closing one mid-run waits for that closed dock's job (QA session 13)."""
    from napari_unetpp._widgets._jobs import JobQueue, Ticket

    queue = JobQueue()
    assert queue.waiting_note() == "waiting for another UNet++ job of this viewer to finish..."
    queue.current = Ticket("prune", (x for x in ()), True)
    assert "(the pruning panel timing a depth on this computer)" in queue.waiting_note()
    queue.current = Ticket("segment", (x for x in ()), True)
    assert "(a segmentation in the Segment dock)" in queue.waiting_note()
    queue.current.dropped = True
    assert "(a segmentation of a closed dock, stopping)" in queue.waiting_note()


def test_on_finish_says_whether_the_job_ran() -> None:
    """Both docks told "stopped before it started" from "ended" by tracking their own
    returned/failed callbacks (the same lines twice); the runner now says it."""
    from napari_unetpp._widgets._jobs import JobQueue, Ticket

    queue = JobQueue()
    queue.current = Ticket("train", (x for x in ()), True)  # another job holds the queue
    finished: list[tuple[str, bool]] = []

    def job() -> Any:
        yield 1
        return 2

    waiting = _runner.JobRunner(inline=True, queue=queue)
    waiting.start(job(), on_finish=lambda ran: finished.append(("waiting", ran)))
    assert waiting.queued
    waiting.request_stop()  # Cancel while it waits: no other callback comes
    assert finished == [("waiting", False)] and not waiting.running
    queue.current = None
    results: list[Any] = []
    ran = _runner.JobRunner(inline=True, queue=queue)
    ran.start(job(), on_return=results.append, on_finish=lambda r: finished.append(("ran", r)))
    assert results == [2] and finished[-1] == ("ran", True)
