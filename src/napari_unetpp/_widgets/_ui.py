"""Small Qt touches the docks share, so that long text never widens a dock.

Why: napari docks sit beside the canvas on laptop screens; a long run path, model
name or layer name in a label or combo box would otherwise push the dock wider
than the screen.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Label


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
