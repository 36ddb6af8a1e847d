"""Small Qt touches the docks share, so that long text never widens a dock.

Why: napari docks sit beside the canvas on laptop screens; a long run path, model
name or layer name in a label or combo box would otherwise push the dock wider
than the screen.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Label, ProgressBar


def wrapped(text: str = "") -> Label:
    """A Label whose long text wraps instead of widening the dock."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=text)
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
