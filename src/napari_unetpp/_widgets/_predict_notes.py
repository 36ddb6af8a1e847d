"""What the Segment dock tells the user about a result and its image check.

Why apart from the dock (:mod:`.predict`): the words and notifications of a finished
run (the check's warning, its remedies as a hint, Cancel during the check), of the
Check button's verdict, of the object-size estimate and of the scale step a run took
(:func:`scale_note`) are one policy (a warning's report already holds the hints and
the depth advice, so neither is told twice); the dock only puts the returned lines in
its status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info, show_warning

if TYPE_CHECKING:
    from ..config import ModelConfig

__all__ = ["check_status", "estimate_status", "notify_check", "result_notes", "scale_note"]


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
    from ..scale import AUTO_MIN_OBJECTS

    if diameter is None:  # as 'auto object size' says it (scale.auto_rescale)
        return (
            f"fewer than {AUTO_MIN_OBJECTS} objects found, {AUTO_MIN_OBJECTS} needed to "
            "measure their size: the diameter is left as it was"
        )
    if not still_chosen:  # another image was chosen meanwhile
        return (
            f"median object diameter {diameter:.1f} px of {image_name!r}, no longer the "
            "chosen image: the diameter is left as it was"
        )
    return (
        f"median object diameter {diameter:.1f} px; Segment rescales to the model's training size"
    )


def scale_note(probs: Any, model: ModelConfig | None = None) -> str | None:
    """What the scale step did (zoom, measured size), or None when it did nothing.

    A run of a model that records its training pixel size on an image without one says
    so: a plain tif of a CT at 0.98 mm ran as if at the zoo model's 3 mm (liver Dice 0.45
    instead of 0.92) while the status said nothing (the command line notes it).
    """
    scale = getattr(probs, "scale", None)
    if not scale:
        if model is None or not model.pixel_size:
            return None
        trained = f"{' x '.join(f'{s:g}' for s in model.pixel_size)} {model.pixel_unit}".strip()
        return (
            f"no pixel size: segmented as if at the model's {trained}; type the image's in "
            "'Pixel size' (Your image panel) if it differs"
        )
    zooms = scale.get("zoom", ())
    zoom = " x ".join(f"{z:.2f}" for z in zooms)
    measured = scale.get("measured_diameter")
    done = (
        "already at the model's scale"
        if all(abs(z - 1) < 0.005 for z in zooms)
        else f"resampled by {zoom} to the model's scale"
    )
    return (
        done
        + (f" (objects ~{measured:.0f} px)" if measured else "")
        + (f"; {scale['note']}" if scale.get("note") else "")
    )
