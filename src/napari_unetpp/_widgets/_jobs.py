"""One queue of torch jobs per viewer.

Why one queue: two torch jobs running at once (two pruning timings racing, or a
timing beside a segmentation) froze napari for good when the GUI thread entered
its activity dialog meanwhile (issue 16). So every job of every dock of a viewer
(segment, train, pruning timing, preview) goes through that viewer's
:class:`JobQueue`, which starts a job only after the previous one has *finished*:
a job that is replaced or cancelled is asked to stop (one that can stop cleanly runs
to its end, saving what its stop saves), its callbacks are dropped, and the next job
waits until its thread has really ended. Never two at once.

The threads themselves (napari's workers, kept alive until they end, the old objects
frozen out of garbage collection meanwhile, a job's warnings shown) are
:mod:`._workers`'; knowing when a dock was closed is :func:`._dock.on_dock_closed`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

from ._dock import unproxied
from ._workers import (
    LIVE_WORKERS,
    freeze_old_objects,
    show_job_warning,
    stopping_worker,
    thaw_old_objects,
)

__all__ = ["JobQueue", "Ticket", "cancel_every_queue", "queue_for"]

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
    on_finish: Callable[[bool], None] | None = None  # called with whether the job ran
    stop: Callable[[], None] | None = None
    where: str = ""  # where its results go (a reopened dock names a closed one's run)
    state: str = "pending"  # pending -> running -> done
    dropped: bool = False  # callbacks are ignored from now on
    worker: Any = field(default=None, repr=False)
    froze: bool = False  # holds a share of :func:`freeze_old_objects`

    def call(self, callback: Callback, *args: Any) -> None:
        if not self.dropped and callback is not None:
            callback(*args)


#: A running job in the words of a job waiting for it (by its runner's ``owner``).
JOB_WORDS = {
    "segment": "a segmentation in the Segment dock",
    "train": "a training in the Train dock",
    "prune": "the pruning panel timing a depth on this computer",
}


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

    def waiting_note(self) -> str:
        """What a job queued behind the running one says, naming that job.

        Why: Segment pressed on a freshly opened image said "waiting for another UNet++
        job of this viewer" for seconds, and the user had started none: it was the
        pruning panel timing the model's depth (QA session 13).
        """
        current = self.current
        what = JOB_WORDS.get(current.owner, "") if current is not None else ""
        if what and current is not None and current.dropped:  # its dock was closed
            what = f"{what.split(' in the ')[0]} of a closed dock, stopping"
        return "waiting for another UNet++ job of this viewer to finish" + (
            f" ({what})..." if what else "..."
        )

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
                ticket.call(ticket.on_finish, False)  # it never ran
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
        ticket.call(ticket.on_finish, True)
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
            _relay, start_thread=False, ignore_errors=True, worker_class=stopping_worker()
        )(ticket.gen)
        worker.clean_stop = ticket.stop
        worker.yielded.connect(lambda event: ticket.call(ticket.on_yield, event))
        worker.returned.connect(lambda result: ticket.call(ticket.on_return, result))
        worker.errored.connect(lambda exc: self._failed(ticket, exc))

        def warned(args: tuple[Any, ...]) -> None:
            if not ticket.dropped:
                show_job_warning(args)

        worker.warned.connect(warned)
        worker.finished.connect(lambda: self._finished(ticket))
        worker.finished.connect(lambda: LIVE_WORKERS.discard(worker))
        ticket.worker = worker
        LIVE_WORKERS.add(worker)  # alive until its thread ends, whatever closes meanwhile
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


_queues: dict[int, JobQueue] = {}


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


def cancel_every_queue() -> None:
    """Drop every job of every viewer (Python exits: see :mod:`._workers`)."""
    for queue in list(_queues.values()):
        queue.cancel_all()
