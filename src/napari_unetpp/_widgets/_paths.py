"""The one folder or file a magicgui ``FileEdit`` holds.

Why: magicgui types every ``FileEdit.value`` as ``Path | tuple[Path, ...] | None``
(the tuple is for multi-file mode); the docks' single-path edits need a ``Path``,
and a user-facing error (shown by the dock) rather than a crash when there is none.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["chosen_path"]


def chosen_path(value: Path | tuple[Path, ...] | None, what: str) -> Path:
    """``value`` as one ``Path``; ``ValueError("choose one <what>")`` otherwise.

    An emptied field reads as ``Path(".")``: that is no choice either (a run would land in
    whatever folder napari was started from, often a data folder).

    >>> chosen_path(Path("runs"), "output folder").name
    'runs'
    """
    if isinstance(value, Path) and str(value) not in ("", "."):
        return value
    raise ValueError(f"choose one {what}")
