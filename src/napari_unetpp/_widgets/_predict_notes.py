"""What the Segment dock tells the user about a result and its image check.

Why apart from the dock (:mod:`.predict`): the words and notifications of a finished
run (the check's warning, its remedies as a hint, Cancel during the check), of the
Check button's verdict and of the object-size estimate are one policy (a warning's
report already holds the hints and the depth advice, so neither is told twice); the
dock only puts the returned lines in its status.
"""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_info, show_warning

__all__ = ["check_status", "estimate_status", "notify_check", "result_notes"]


def result_notes(check: Any, image_name: str, check_stopped: bool) -> tuple[bool, list[str]]:
    """Whether the image was called unlike the training data (a warning was shown), and
    the status line's notes on a finished run's check (``check_stopped``: Cancel was
    pressed on a run to be checked: its labels are complete, but not checked)."""
    warned = _warn_unlike_training(check, image_name)
    hints = [] if warned else _hints(check, image_name)
    if check_stopped and check is None:  # else "done" hid that Cancel did anything
        hints.append("cancelled while checking the result: labels complete, not checked")
    return bool(warned), [*warned, *hints]


def _hints(check: Any, image_name: str) -> list[str]:
    """The check's remedies when the image passed it (objects larger than in training,
    a depth...): told once, as the status line's note; a warning's report has them."""
    if check is None or not check.remedies:
        return []
    hint = "hint: " + "; ".join(check.remedies_for("dock"))
    show_info(f"{image_name}: {hint}")
    return [hint]


def _warn_unlike_training(check: Any, image_name: str) -> list[str]:
    """A warning notification when the check says the image is unlike the training data;
    the status line's note (empty when the image looks like it, or was not checked)."""
    if check is None or not check.unlike_training:
        return []
    show_warning(f"{image_name}: {check.report('dock').removeprefix('WARNING: ')}")
    return ["WARNING: this image looks unlike the training data (see the notification)"]


def check_status(check: Any, image_name: str) -> tuple[str, str]:
    """The Check button's verdict as one status line, and as the notification's report
    (named: another image may be chosen by now, as in the Segment check's words)."""
    report = f"{image_name}: {check.report('dock').removeprefix('WARNING: ')}"
    warning = "WARNING: " if check.unlike_training else ""
    # one line: the report's indented reasons and remedies as "; "-separated items
    return warning + "; ".join(line.strip() for line in report.splitlines()), report


def notify_check(check: Any, report: str) -> None:
    """The Check button's notification (napari heads a warning with "WARNING" already)."""
    (show_warning if check.unlike_training else show_info)(report)


def estimate_status(diameter: float | None, image_name: str, still_chosen: bool) -> str:
    """What an object-size estimate says: the diameter now in the panel, or why not."""
    if diameter is None:
        return "no objects found: the diameter is left as it was"
    if not still_chosen:  # another image was chosen meanwhile
        return (
            f"median object diameter {diameter:.1f} px of {image_name!r}, no longer the "
            "chosen image: the diameter is left as it was"
        )
    return (
        f"median object diameter {diameter:.1f} px; Segment rescales to the model's training size"
    )
