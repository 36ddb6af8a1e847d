"""Progress events, a driver for event generators, a stop flag and an ETA clock.

Every long engine job (training, inference, evaluation) is a generator that
yields :class:`Event` objects and *returns* its result. The same generator then
drives a napari progress bar (through ``thread_worker``), a CLI progress bar and
a test (through :func:`drive`), so there is one code path for all three.
Cancellation is cooperative: the engine checks a :class:`Stopper` at every yield.

Example
-------
>>> def job(n, stopper=None):
...     for i in range(n):
...         if stopper is not None and stopper.stopped:
...             return "stopped"
...         yield Event("step", i + 1, n)
...     return "done"
>>> seen = []
>>> drive(job(3), seen.append)
'done'
>>> [e.step for e in seen]
[1, 2, 3]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Event", "drive", "Stopper", "EtaClock"]

R = TypeVar("R")


@dataclass
class Event:
    """One progress report of an engine job.

    ``step`` / ``total`` are absolute (not increments), so a consumer that
    misses events (a GUI thread that is busy) still shows the right position.
    Subclasses (``TrainEvent``, ``PredictEvent``) add job-specific fields, all
    with defaults.
    """

    kind: str
    step: int
    total: int
    message: str = ""
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        """Progress in ``[0, 1]`` (0 when ``total`` is unknown, i.e. <= 0)."""
        if self.total <= 0:
            return 0.0
        return min(max(self.step / self.total, 0.0), 1.0)


def drive(gen: Generator[Any, Any, R], callback: Callable[[Any], Any] | None = None) -> R:
    """Run an event generator to the end and return its return value.

    Each yielded event goes to ``callback`` (if given). If the callback (or the
    caller, e.g. on Ctrl-C) raises, the generator is closed first, so the job's
    ``finally`` blocks (closing files, freeing GPU memory) run before the error
    propagates.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(event)
    except BaseException:
        gen.close()
        raise


class Stopper:
    """A thread-safe stop flag shared between a GUI/CLI and an engine loop.

    The GUI thread calls :meth:`stop`; the worker checks :attr:`stopped` at every
    yield and returns cleanly (with what it has so far) instead of being killed
    mid-write. Deliberately not truthy/falsy: ``if stopper:`` must keep meaning
    "a stopper was given".
    """

    def __init__(self) -> None:
        self._flag = threading.Event()

    def stop(self) -> None:
        """Ask the job to stop at its next check (idempotent, any thread)."""
        self._flag.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called since creation or the last :meth:`reset`."""
        return self._flag.is_set()

    def reset(self) -> None:
        """Clear the flag so the same stopper can serve the next job."""
        self._flag.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped or ``timeout`` seconds pass; return :attr:`stopped`.

        Useful as an interruptible ``sleep`` in polling loops.
        """
        return self._flag.wait(timeout)

    def __repr__(self) -> str:
        return f"Stopper(stopped={self.stopped})"


class EtaClock:
    """Estimate the seconds left from the steps done so far.

    The rate is measured from the *first* update, not from construction: the
    first step of a job often includes one-off costs (CUDA context, cuDNN
    autotuning, loading data) that would make early estimates far too long.

    Parameters
    ----------
    clock
        Time source in seconds; injectable so tests need not sleep.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start: tuple[float, int] | None = None

    def reset(self) -> None:
        """Forget the reference point (e.g. after a pause or between phases)."""
        self._start = None

    def update(self, step: int, total: int) -> float | None:
        """Record that ``step`` of ``total`` steps are done; return seconds left.

        ``None`` until a rate can be measured (first call, or no progress yet).
        """
        now = self._clock()
        if self._start is None:
            self._start = (now, step)
            return None
        t0, s0 = self._start
        done = step - s0
        if done <= 0:
            return None
        remaining = max(total - step, 0)
        return (now - t0) / done * remaining
