"""What every command shares: where output goes, flag merging, and progress bars.

Why progress bars are ``on_event`` callbacks: the engine's jobs are event
generators driven by :func:`napari_unetpp.events.drive` (the widgets and tests
drive the same ones); the CLI only supplies what to do with each event.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

PROG = "napari-unetpp"
#: The warnings shown for the image at hand (see :func:`warnings_once`); None: show all.
_shown: set[tuple[str, str]] | None = None


def _out(text: str = "") -> None:
    """The only place the CLI writes results (stdout), so tests and pipes see one stream."""
    print(text, file=sys.stdout, flush=True)


def _note(text: str) -> None:
    """Progress notes go to stderr, keeping stdout for tables and JSON."""
    print(text, file=sys.stderr, flush=True)


def _override(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy ``base`` with the flags the user actually gave (``None`` means not given)."""
    out = dict(base)
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


class ProgressBar:
    """A tqdm bar on stderr moved by engine events: the ``on_event`` callback of ``drive``.

    Disabled (quietly) under ``--quiet``. Events carry absolute ``step``/``total``, so
    a bar that misses events still shows the right position. The messages of the
    event kinds in ``notes`` (e.g. a CPU fallback) are written above the bar.
    """

    def __init__(
        self, desc: str, total: int = 0, enabled: bool = True, notes: tuple[str, ...] = ()
    ) -> None:
        from tqdm import tqdm

        self.notes = notes
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="it",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    def __call__(self, event: Any) -> None:
        kind: str = getattr(event, "kind", "")
        message: str = getattr(event, "message", "")
        if kind in self.notes and message:
            self.bar.write(f"{PROG}: {message}", file=sys.stderr)
        self.advance(event)

    def advance(self, event: Any) -> None:
        """Move the bar to the event's step (and its total, when that changed)."""
        total = getattr(event, "total", 0) or 0
        if total and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        step = getattr(event, "step", 0) or 0
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class TrainProgress(ProgressBar):
    """The training bar: the last loss and the best validation score beside the steps;
    the trainer's notes (e.g. "no validation: ...") go to stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        super().__init__("train", total, enabled)
        self.postfix: dict[str, str] = {}

    def __call__(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        if kind == "step" and getattr(event, "loss", None) is not None:
            self.postfix["loss"] = f"{float(event.loss):.4f}"
        elif kind == "validation" and getattr(event, "val_scores", None):
            scores = event.val_scores
            best = max(scores, key=lambda d: scores[d])
            self.postfix["val"] = f"{scores[best]:.3f}@L{best}"
        elif kind == "note" and getattr(event, "message", ""):
            _note(event.message)
        self.advance(event)
        if self.postfix:
            self.bar.set_postfix(self.postfix, refresh=False)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str = "",
    lineno: int = 0,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Engine warnings (NaN pixels filled, a flat image...) as one line, not a source line;
    inside :func:`warnings_once`, a warning already shown for this image is not repeated."""
    text = " ".join(str(message).split())
    if _shown is not None:
        # the probes of the image check (flipped, half size) warn again, about their own
        # resampled copy and with other counts: the same words without numbers is the same
        key = (category.__name__, re.sub(r"[-+.\d]+", "#", text))
        if key in _shown:
            return
        _shown.add(key)
    _note(f"warning: {text}")


@contextmanager
def warnings_once() -> Iterator[None]:
    """Within the block (one image's prediction and check), each warning is shown once.

    Python's own once-per-place memory is off in the block: a second flat image warns from
    the same line as the first, and must be told too.
    """
    global _shown
    outer, _shown = _shown, set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = show_warning
            yield
    finally:
        _shown = outer


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Errors about one input file name it: a batch (``predict a.tif b.tif ...``) stopped on
    "image has no finite values to normalise" without saying which image."""
    from ..files import UserError

    try:
        yield
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise UserError(f"{path}: {exc}") from exc
