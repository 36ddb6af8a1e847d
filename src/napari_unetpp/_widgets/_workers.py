"""The threads behind the docks' jobs: napari workers that outlive their docks, the
old objects frozen out of garbage collection while one runs, and a job's warnings.

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

The jobs themselves run one at a time through each viewer's queue (:mod:`._jobs`);
:func:`in_background` is for work that must not wait in it (an import, a file read).
"""

from __future__ import annotations

import atexit
import functools
import gc
from collections.abc import Callable
from typing import Any

__all__ = [
    "LIVE_WORKERS",
    "freeze_new_objects",
    "freeze_old_objects",
    "in_background",
    "show_job_warning",
    "stopping_worker",
    "thaw_old_objects",
]


@functools.cache
def stopping_worker() -> type[Any]:
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


def show_job_warning(showwarning_args: tuple[Any, ...]) -> None:
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


def freeze_new_objects() -> None:
    """While objects are frozen, freeze those made since too (a layer's canvas visual and
    controls: thousands of objects, all alive as long as the layer).

    Why: made on the GUI thread during a training (its first preview layer), they stayed
    in the collected generations, and the training thread's full collections walked them:
    154-279 ms each with the GIL held, late ticks of 0.13-0.44 s (issue 16, measured).
    """
    if _freezers:
        gc.freeze()


def thaw_old_objects() -> None:
    """Give the frozen objects back to the collector when no job needs them frozen."""
    global _freezers
    _freezers = max(_freezers - 1, 0)
    if _freezers == 0:
        gc.unfreeze()


#: Every started worker until its thread has finished. A closed viewer drops its queue (and
#: with it the running ticket); had that freed the worker, its Qt signals would be deleted
#: under the still-running thread, and its last ``finished.emit`` aborts Python.
LIVE_WORKERS: set[Any] = set()
#: How long Python's exit waits for live workers' threads (a dock's ``import torch`` takes
#: 2-3 s; a job stopped by the quit ends after its current step).
EXIT_WAIT_MS = 30_000


@atexit.register
def _wait_for_live_workers() -> None:
    """At Python's exit, let live workers' threads end before the module's globals go.

    Why: freed with :data:`LIVE_WORKERS` under a running thread, a worker's signals were
    deleted and its last ``finished.emit`` aborted Python ("wrapped C/C++ object ... has
    been deleted"; exit status 134): napari quit within seconds of opening the Segment
    dock, while torch was still loading.
    """
    if LIVE_WORKERS:
        from qtpy.QtCore import QThreadPool

        from ._jobs import cancel_every_queue

        cancel_every_queue()  # a script that ends without closing napari
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
    worker.finished.connect(lambda: LIVE_WORKERS.discard(worker))
    LIVE_WORKERS.add(worker)
    worker.start()
    return worker
