"""Small Qt touches the docks' rows share: long text never widens a dock, and job
progress and results never freeze the viewer.

Why: napari docks sit beside the canvas on laptop screens; a long run path, model
name or layer name in a label or combo box would otherwise push the dock wider
than the screen. And every GUI-thread moment a job's progress takes is a moment
the viewer does not pan or paint (issue 16). Where a dock sits and when it was
closed is :mod:`._dock`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from magicgui.widgets import ComboBox, Label, ProgressBar

R = TypeVar("R")

#: Pause between two steps of :func:`spread` (Qt paints and serves input meanwhile).
SPREAD_PAUSE_MS = 20


class _Note(Label):
    """A Label that takes no row while its text is empty (a QLabel has no change signal,
    so ``changed`` cannot tell)."""

    hides_when_empty = False  # set once made: a parentless QLabel shown is a window

    def set_value(self, value: Any) -> None:
        super().set_value(value)
        if self.hides_when_empty and (not value or self.native.parent() is not None):
            self.visible = bool(value)


def wrapped(text: str = "") -> Label:
    """A Label whose long text wraps instead of widening the dock; empty, it takes no row
    (an empty note under the Labels box left a gap in the Train dock: issue 16)."""
    from qtpy.QtWidgets import QSizePolicy

    label = _Note(value=text, visible=None if text else False)
    label.hides_when_empty = True
    label.native.setWordWrap(True)
    # a wrapping QLabel still asks for the width of its longest line; ignoring that
    # request keeps the dock (and the live plot beside it, which redraws on every
    # resize) from jumping wider and back as the status text changes each step
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    return label


def narrow(box: ComboBox, chars: int = 12) -> None:
    """Let a combo box shrink below its longest item (the list still shows it whole)."""
    from qtpy.QtWidgets import QComboBox

    box.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.native.setMinimumContentsLength(chars)


def set_progress(bar: ProgressBar, percent: int) -> None:
    """Set ``bar`` to ``percent`` without QProgressBar's immediate repaint.

    Why: ``QProgressBar.setValue`` repaints synchronously, and in napari's window (an
    OpenGL canvas, composed in software on many machines) each immediate repaint
    flushes the window: ~50 ms of the GUI thread per update while a job runs
    (issue 16, measured). With updates off during the change, the bar is repainted in
    the next paint pass, together with the status text.
    """
    native = bar.native
    native.setUpdatesEnabled(False)
    try:
        bar.value = percent
    finally:
        native.setUpdatesEnabled(True)  # schedules the repaint (QWidget.update)


def spread(
    steps: Generator[Any, Any, R],
    done: Callable[[R | None], Any],
    inline: bool,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Run ``steps`` one step per event-loop turn, then call ``done`` with its return value
    (None if a step failed: the error is shown to the user).

    ``alive`` is asked before each step: once False (the dock or the viewer was closed
    meanwhile) the remaining steps are dropped and ``done`` is not called, so a closed
    dock adds no layers later and nothing touches its deleted Qt widgets.

    Why: each step builds, inserts or shows one napari layer (napari's insert alone,
    its controls and its canvas node, is 50-100 ms of the GUI thread here); all of a
    run's layers at once froze the viewer for the sum (issue 16). Between two steps Qt
    paints and serves input. ``inline`` (tests,
    scripts): all steps now, as :class:`._runner.JobRunner` runs jobs inline. Meanwhile
    the old objects are kept out of garbage collection, as during a job (a full
    collection of napari's objects, which a layer add can trigger, took ~0.3 s: see
    :mod:`._workers`).
    """
    from qtpy.QtCore import QTimer

    from ..events import drive
    from ._workers import freeze_new_objects, freeze_old_objects, thaw_old_objects

    if inline:
        done(drive(steps))
        return

    def finish(value: R | None) -> None:
        freeze_new_objects()  # the layers' objects, while a job (a training) still runs
        thaw_old_objects()
        done(value)

    def step() -> None:
        from ._runner import report_error

        if not alive():
            steps.close()
            thaw_old_objects()
            return
        try:
            next(steps)
        except StopIteration as end:
            finish(end.value)
            return
        except Exception as exc:  # shown like a job's error; the dock is unlocked
            report_error(exc)
            finish(None)
            return
        # not 0 ms: a zero timer ran the next step before due timers and paints (measured)
        QTimer.singleShot(SPREAD_PAUSE_MS, step)

    freeze_old_objects()
    step()
