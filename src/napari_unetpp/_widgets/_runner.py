"""Run engine generators off the GUI thread, and report their errors.

Every long engine job (``Trainer.run``, ``inference.predict``...) is a generator of
events that returns its result. :class:`JobRunner` drives one such generator in a
``napari.qt.threading.thread_worker`` (so the viewer never freezes), routes its
events to the widget on the GUI thread, and can ask the job to stop cleanly (the
engine's stopper: the job returns what it has, a training saves ``last/``) or also
drop its callbacks (the widget is closing: the job still ends as a stopped one).
``JobRunner(inline=True)`` (or ``RUN_INLINE = True`` / ``NAPARI_UNETPP_INLINE=1``)
runs the *same* generator synchronously, as stardist-napari does, for deterministic
tests and debugging.

Example
-------
>>> runner = JobRunner(inline=True)
>>> def job():
...     yield "half way"
...     return 42
>>> seen = []
>>> runner.start(job(), on_yield=seen.append, on_return=seen.append)
>>> seen
['half way', 42]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from typing import Any

from ._jobs import JobQueue, Ticket

__all__ = ["RUN_INLINE", "USER_ERRORS", "EngineRuntimeError", "JobRunner", "report_error"]

logger = logging.getLogger(__name__)

#: Default for new runners: run jobs synchronously on the calling thread (tests, debugging).
RUN_INLINE: bool = os.environ.get("NAPARI_UNETPP_INLINE", "") == "1"
#: Errors that are the user's to fix: shown as their message only (CheckpointError is a ValueError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

Callback = Callable[..., Any] | None


class EngineRuntimeError(Exception):
    """A ``RuntimeError`` raised inside a job, re-raised under another type.

    superqt's workers treat a ``RuntimeError`` as "the worker was deleted" and
    swallow it with a warning; torch reports most failures (CUDA errors, shape
    errors) as ``RuntimeError``, so they would vanish without this wrapper.
    """


def _relay(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Drive ``gen`` inside the worker thread (a generator *function* for ``thread_worker``)."""
    try:
        return (yield from gen)
    except RuntimeError as exc:
        raise EngineRuntimeError(str(exc)) from exc


def report_error(exc: BaseException) -> None:
    """Tell the user what went wrong, in a napari notification.

    User errors (bad input, missing files, bad checkpoints) show their message
    only; anything else shows its type and message, and its traceback goes to
    the log (not to the user).
    """
    from napari.utils.notifications import show_error

    cause = exc.__cause__ if isinstance(exc, EngineRuntimeError) and exc.__cause__ else exc
    if isinstance(cause, USER_ERRORS):
        show_error(str(cause))
        return
    logger.error("napari-unetpp job failed", exc_info=cause)
    show_error(f"{type(cause).__name__}: {cause}")


class JobRunner:
    """A widget's handle on its jobs: at most one at a time, run by a shared queue.

    Give every runner of a viewer that viewer's queue (:func:`._jobs.queue_for`)
    so that no two torch jobs ever run at once; ``owner`` names the kind of job
    ("segment", "train", "prune", "preview") for the queue's ``busy(owner)``.
    Without a queue the runner has its own (scripts, tests).

    Parameters
    ----------
    inline
        Run jobs synchronously on the calling thread; ``None`` uses :data:`RUN_INLINE`.
    """

    def __init__(
        self, inline: bool | None = None, queue: JobQueue | None = None, owner: str = "job"
    ) -> None:
        self.inline = RUN_INLINE if inline is None else inline
        self.queue = queue if queue is not None else JobQueue()
        self.owner = owner
        self._ticket: Ticket | None = None

    @property
    def running(self) -> bool:
        """Whether a job was started (queued or running) and has not finished or been quit."""
        return self._ticket is not None and self._ticket.state != "done"

    @property
    def queued(self) -> bool:
        """Whether the job waits for another job of the viewer to finish."""
        return self._ticket is not None and self._ticket.state == "pending"

    @property
    def worker(self) -> Any:
        """The thread worker of the running job (None inline, queued or idle)."""
        return self._ticket.worker if self.running and self._ticket is not None else None

    def attach(self, native: Any) -> None:
        """Quit the job when ``native`` (a QWidget) is destroyed or the app quits."""
        from qtpy.QtWidgets import QApplication

        native.destroyed.connect(lambda *_: self.quit())
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.quit)

    def start(
        self,
        gen: Generator[Any, Any, Any],
        *,
        on_yield: Callback = None,
        on_return: Callback = None,
        on_error: Callback = None,
        on_finish: Callable[[bool], None] | None = None,
        stop: Callable[[], None] | None = None,
        where: str = "",
    ) -> Any:
        """Queue ``gen``; callbacks run on the GUI thread. Returns the worker (None inline
        or while queued).

        ``on_error`` (if given) runs before the error is shown to the user;
        ``on_finish`` runs last in every case (returned, failed, stopped, or stopped
        before it started), but not after :meth:`quit`, with whether the job ran (False:
        stopped while it waited for another job; no other callback came). ``stop`` asks the
        engine to stop cleanly (e.g. ``Trainer.stop``); :meth:`request_stop` and :meth:`quit`
        call it.
        ``where``: the folder its results go to (see :attr:`._jobs.Ticket.where`).
        """
        if self.running:
            raise ValueError("a job is already running: stop it first, or wait until it ends")
        ticket = Ticket(
            self.owner, gen, self.inline, on_yield, on_return, on_error, on_finish, stop, where
        )
        self._ticket = ticket
        self.queue.submit(ticket)
        return self.worker

    def request_stop(self) -> None:
        """Ask the job to stop at its next check (it still returns its result); a queued
        job is taken off the queue."""
        if self._ticket is not None:
            self.queue.cancel(self._ticket, drop=False)

    def quit(self) -> None:
        """Stop the job and drop it: no more callbacks (its widget closes or replaces it).

        A job started with ``stop`` runs on to its stopped end (a training saves
        ``last/`` and ``best/``); one without is quit at its next event. The queue
        starts the next job only after this one's thread has ended.
        """
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self.queue.cancel(ticket, drop=True)
