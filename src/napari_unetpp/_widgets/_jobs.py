"""One queue of torch jobs per viewer, and knowing when a dock was closed.

Why one queue: two torch jobs running at once (two pruning timings racing, or a
timing beside a segmentation) froze napari for good when the GUI thread entered
its activity dialog meanwhile (issue 16). So every job of every dock of a viewer
(segment, train, pruning timing, preview) goes through that viewer's
:class:`JobQueue`, which starts a job only after the previous one has *finished*:
a job that is replaced or cancelled is asked to stop (one that can stop cleanly runs
to its end, saving what its stop saves), its callbacks are dropped, and the next job
waits until its thread has really ended. Never two at once.

Why the old objects are frozen while a job runs (``gc.freeze``): a full garbage
collection walks every object of the process, and napari's (its Qt wrappers, models,
events) took 0.3-0.45 s to walk, on whichever thread allocated last: one or two such
pauses of the GUI thread per training run, the largest stalls left (issue 16,
measured). Frozen objects are skipped by collections (a full one then walks only what
the job made: ~0.1 s); they are thawed when the last job of the process ends (and a
dock has added its result layers: :func:`._ui.spread`), so garbage among them (a layer
deleted meanwhile) is collected later, never leaked. The cost: the next full
collection, soon after the job, walks everything again (0.4-0.67 s, measured right
after a segmentation's layers): one pause after the job instead of one or two in it.

Why the dock-close watcher: napari's close button does not delete a dock's
widget (it only takes it out of the window), so ``destroyed`` never fires and a
closed dock's job would keep running and add layers later. :func:`on_dock_closed`
calls back once the widget no longer belongs to the viewer's window.
"""

from __future__ import annotations

import atexit
import functools
import gc
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

__all__ = ["JobQueue", "Ticket", "queue_for", "on_dock_closed", "in_background"]

Callback = Callable[..., Any] | None


class _Quit(Exception):
    """Raised into an inline job whose callbacks were dropped."""


@dataclass(eq=False)
class Ticket:
    """One job in a queue: its generator, its callbacks and where it stands."""

    owner: str
    gen: Generator[Any, Any, Any]
    inline: bool
    on_yield: Callback = None
    on_return: Callback = None
    on_error: Callable[[BaseException], None] | None = None
    on_finish: Callback = None
    stop: Callable[[], None] | None = None
    where: str = ""  # where its results go (a reopened dock names a closed one's run)
    state: str = "pending"  # pending -> running -> done
    dropped: bool = False  # callbacks are ignored from now on
    worker: Any = field(default=None, repr=False)
    froze: bool = False  # holds a share of :func:`freeze_old_objects`

    def call(self, callback: Callback, *args: Any) -> None:
        if not self.dropped and callback is not None:
            callback(*args)


class JobQueue:
    """Runs the jobs of one viewer one after the other (see the module docstring).

    ``changed`` is emitted whenever a job starts or ends, so a dock (also one
    reopened meanwhile) can show whether a job of its kind is queued or running.
    """

    changed = Signal()

    def __init__(self) -> None:
        self._pending: list[Ticket] = []
        self.current: Ticket | None = None
        self._quit_hooked = False

    # ------------------------------------------------------------------ queries

    def busy(self, owner: str | None = None) -> bool:
        """Whether a job (of ``owner``, if given) is running or waiting."""
        tickets = ([self.current] if self.current else []) + self._pending
        return any(owner is None or t.owner == owner for t in tickets)

    # ------------------------------------------------------------------ control

    def submit(self, ticket: Ticket) -> None:
        """Queue ``ticket``; it starts when every earlier job has finished."""
        self._hook_app_quit()
        self._pending.append(ticket)
        self._pump()

    def cancel(self, ticket: Ticket, *, drop: bool) -> None:
        """Stop ``ticket``: a waiting one never starts; a running one is asked to stop.

        ``drop``: ignore its callbacks from now on (its owner went away or
        replaced it). A dropped job with a ``stop`` still runs to its own end, so
        what its stop saves is saved (a training's ``last/`` and ``best/``, as the
        CLI's Ctrl-C): quit at its next event, a closed Train dock's run kept
        nothing since its last validation. A job without one is quit at its next
        event. The next job starts only when a running one has finished.
        """
        if ticket.state == "pending" and ticket in self._pending:
            self._pending.remove(ticket)
            ticket.state = "done"
            if not drop:
                ticket.call(ticket.on_finish)
            ticket.dropped = ticket.dropped or drop
            self.changed.emit()
            return
        if ticket.state != "running":
            return
        if ticket.stop is not None:
            ticket.stop()
        if drop:
            ticket.dropped = True
            if ticket.worker is not None:
                ticket.worker.quit()  # a job without a clean stop: left at its next event

    def cancel_all(self) -> None:
        """Drop every job (the application quits)."""
        for ticket in [*self._pending, *([self.current] if self.current else [])]:
            self.cancel(ticket, drop=True)

    # ------------------------------------------------------------------ running

    def _pump(self) -> None:
        while self.current is None and self._pending:
            ticket = self._pending.pop(0)
            self.current, ticket.state = ticket, "running"
            self.changed.emit()
            if ticket.inline:
                self._run_inline(ticket)
            else:
                self._start_thread(ticket)

    def _finished(self, ticket: Ticket) -> None:
        if ticket.froze:
            ticket.froze = False
            thaw_old_objects()
        ticket.state = "done"
        if self.current is ticket:
            self.current = None
        ticket.call(ticket.on_finish)
        self.changed.emit()
        self._pump()

    def _failed(self, ticket: Ticket, exc: BaseException) -> None:
        from ._runner import report_error

        if ticket.dropped:
            return
        ticket.call(ticket.on_error, exc)
        report_error(exc)

    def _start_thread(self, ticket: Ticket) -> None:
        from napari.qt.threading import thread_worker

        from ._runner import _relay

        # errors go to _failed (one message in the dock); without ignore_errors superqt
        # also re-raises them on the GUI thread (a second traceback, or an abort with no hook)
        worker = thread_worker(
            _relay, start_thread=False, ignore_errors=True, worker_class=_stopping_worker()
        )(ticket.gen)
        worker.clean_stop = ticket.stop
        worker.yielded.connect(lambda event: ticket.call(ticket.on_yield, event))
        worker.returned.connect(lambda result: ticket.call(ticket.on_return, result))
        worker.errored.connect(lambda exc: self._failed(ticket, exc))

        def warned(args: tuple[Any, ...]) -> None:
            if not ticket.dropped:
                _show_warning(args)

        worker.warned.connect(warned)
        worker.finished.connect(lambda: self._finished(ticket))
        worker.finished.connect(lambda: _LIVE_WORKERS.discard(worker))
        ticket.worker = worker
        _LIVE_WORKERS.add(worker)  # alive until its thread ends, whatever closes meanwhile
        freeze_old_objects()
        ticket.froze = True
        worker.start()

    def _run_inline(self, ticket: Ticket) -> None:
        from ..events import drive
        from ._runner import _relay

        def each(event: Any) -> None:
            ticket.call(ticket.on_yield, event)
            if ticket.dropped and ticket.stop is None:
                raise _Quit

        try:
            result = drive(_relay(ticket.gen), each)
        except _Quit:
            pass
        except Exception as exc:  # reported to the user, like the threaded path
            self._failed(ticket, exc)
        else:
            ticket.call(ticket.on_return, result)
        self._finished(ticket)

    def _hook_app_quit(self) -> None:
        if self._quit_hooked:
            return
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.cancel_all)
            self._quit_hooked = True


@functools.cache
def _stopping_worker() -> type[Any]:
    """napari's generator worker, whose ``quit`` stops a job that can stop cleanly (its
    ``clean_stop``) instead of leaving it at its next event.

    Why a worker class: napari registers every worker with its window and quits them all
    when the window closes (superqt, when the application quits), through the worker's
    own ``quit``. A training left at its next event never reached the save of a stopped
    run: closing the viewer (or the Train dock) mid-training kept no ``last/``.
    """
    from napari.qt.threading import GeneratorWorker

    class StoppingWorker(GeneratorWorker):  # type: ignore[misc]
        clean_stop: Callable[[], None] | None = None

        def quit(self) -> None:
            if self.clean_stop is not None:
                self.clean_stop()  # the job returns after its current step
            else:
                super().quit()

    return StoppingWorker


def _show_warning(showwarning_args: tuple[Any, ...]) -> None:
    """A job's ``warnings.warn`` (NaN pixels filled, a flat image...) as a napari notification.

    Why here: superqt's worker catches the warnings of its thread and emits ``warned``;
    napari's relay of that signal sits in a mixin whose ``__init__`` never runs (its
    ``QRunnable`` base does not chain it: napari 0.6-0.9), so the engine's warnings
    vanished. ``receive_warning`` shows each distinct warning once, so a napari whose
    relay works does not show it twice. Deprecation warnings (superqt shows every
    warning, "always") are for developers, not for the person segmenting.
    """
    from napari.utils.notifications import notification_manager

    if issubclass(showwarning_args[1], (DeprecationWarning, PendingDeprecationWarning)):
        return
    notification_manager.receive_warning(*showwarning_args)


#: Threaded jobs of the process that hold the old objects frozen (see the module docstring).
_freezers = 0


def freeze_old_objects() -> None:
    """Take every object alive now out of garbage collection until :func:`thaw_old_objects`.

    Counted: the first job of the process freezes, the last one to end thaws (two
    viewers may each run a job).
    """
    global _freezers
    if _freezers == 0:
        gc.freeze()
    _freezers += 1


def thaw_old_objects() -> None:
    """Give the frozen objects back to the collector when no job needs them frozen."""
    global _freezers
    _freezers = max(_freezers - 1, 0)
    if _freezers == 0:
        gc.unfreeze()


_queues: dict[int, JobQueue] = {}

#: Every started worker until its thread has finished. A closed viewer drops its queue (and
#: with it the running ticket); had that freed the worker, its Qt signals would be deleted
#: under the still-running thread, and its last ``finished.emit`` aborts Python.
_LIVE_WORKERS: set[Any] = set()
#: How long Python's exit waits for live workers' threads (a dock's ``import torch`` takes
#: 2-3 s; a job stopped by the quit ends after its current step).
EXIT_WAIT_MS = 30_000


@atexit.register
def _wait_for_live_workers() -> None:
    """At Python's exit, let live workers' threads end before the module's globals go.

    Why: freed with :data:`_LIVE_WORKERS` under a running thread, a worker's signals were
    deleted and its last ``finished.emit`` aborted Python ("wrapped C/C++ object ... has
    been deleted"; exit status 134): napari quit within seconds of opening the Segment
    dock, while torch was still loading.
    """
    if _LIVE_WORKERS:
        from qtpy.QtCore import QThreadPool

        for queue in list(_queues.values()):  # a script that ends without closing napari
            queue.cancel_all()
        pool = QThreadPool.globalInstance()
        if pool is not None:  # None only once Qt itself is gone
            pool.waitForDone(EXIT_WAIT_MS)


def in_background(
    func: Callable[[], Any],
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    inline: bool = False,
) -> Any:
    """Run ``func`` (no torch compute: an import, a file read) in a thread of its own,
    outside the viewer's queue; ``on_return`` / ``on_error`` run on the GUI thread.

    Why not the queue: a dock's first ``import torch`` (2-3 s of Python) must not wait
    behind a training job, nor stall the GUI thread. ``inline`` runs it here (tests).
    Returns the worker (None inline).
    """
    if inline:
        try:
            result = func()
        except Exception as exc:
            on_error(exc)
        else:
            on_return(result)
        return None
    from napari.qt.threading import create_worker

    worker = create_worker(func, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.finished.connect(lambda: _LIVE_WORKERS.discard(worker))
    _LIVE_WORKERS.add(worker)
    worker.start()
    return worker


def unproxied(viewer: Any) -> Any:
    """The viewer behind napari's ``PublicOnlyProxy`` (each plugin dock gets its own proxy,
    and everything reached through it is proxied too, so identity checks fail on it)."""
    for _ in range(8):  # proxies of proxies; bounded, whatever the object says
        inner = getattr(viewer, "__wrapped__", None)  # a dunder: no private-access warning
        if inner is None or inner is viewer:
            break
        viewer = inner
    return viewer


def queue_for(viewer: Any) -> JobQueue:
    """The job queue of ``viewer`` (created on first use, forgotten with the viewer).

    The queue belongs to the viewer behind the docks' proxies: every dock shares it.
    """
    viewer = unproxied(viewer)
    key = id(viewer)
    queue = _queues.get(key)
    if queue is None:
        queue = _queues[key] = JobQueue()
        try:
            weakref.finalize(viewer, _queues.pop, key, None)
        except TypeError:  # not weak-referenceable: kept for the session (a few bytes)
            pass
    return queue


def on_dock_closed(native: Any, viewer: Any, callback: Callable[[], None]) -> Any:
    """Call ``callback`` (a bound method) once when ``native`` leaves ``viewer``'s window
    (its dock was closed) or is deleted.

    The window is the real one behind the dock's proxy of the viewer: through the proxy
    it is a proxy too, never a parent of ``native``, and the dock's close went unseen.

    Hidden docks (tabbed, collapsed) still belong to the window and do not count.
    Only weak references are kept, so the watcher never keeps a closed dock (or the
    viewer) alive. Returns the event filter (parented to ``native``).
    """
    from qtpy.QtCore import QEvent, QObject, QTimer

    state = {"fired": False, "seen": False}
    window = unproxied(viewer).window._qt_window
    window_ref, native_ref = weakref.ref(window), weakref.ref(native)
    method = weakref.WeakMethod(callback)  # type: ignore[arg-type]

    def fire() -> None:
        target = method()
        if not state["fired"] and target is not None:
            state["fired"] = True
            try:
                target()
            except RuntimeError:  # some Qt objects are already gone (the application quits)
                pass

    def belongs() -> bool:
        """Whether ``native`` sits inside the window; False once its Qt objects are deleted."""
        widget, target = native_ref(), window_ref()
        try:
            while widget is not None:
                if widget is target:
                    return True
                widget = widget.parent()
        except RuntimeError:  # a parent's C++ object is gone (the viewer is closing)
            return False
        return False

    def check() -> None:
        inside = belongs()
        state["seen"] = state["seen"] or inside
        if state["seen"] and not inside:
            fire()

    class _Watcher(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
            kind = event.type()
            if not state["seen"]:  # until it is docked, any event may be the first inside
                state["seen"] = belongs()
            elif kind == QEvent.Type.ParentChange:
                check()  # the new parent is set: a removed dock stops before any callback
            elif kind == QEvent.Type.Hide:
                QTimer.singleShot(0, check)  # an ancestor may be on its way out
            return False

    watcher = _Watcher(native)
    native.installEventFilter(watcher)
    native.destroyed.connect(lambda *_: fire())
    return watcher
