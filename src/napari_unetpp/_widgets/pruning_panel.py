"""The pruning panel of the predict widget: pick a depth, see its cost and score, use it.

Moving the slider rebuilds the network as ``model.prune(d)`` (only the nodes
``i + j <= d`` and head ``d``: exact, smaller, faster) and times one forward pass
on a 256 x 256 dummy (64^3 for 3D models) on the chosen device, in a worker so the
viewer stays live. The timing waits until the slider has rested for
:data:`TIMING_DELAY_MS` and runs in the viewer's job queue: a newer depth replaces
a timing that has not finished, and never runs beside it (issue 16's freeze).
The panel shows the parameters (full and pruned), that time per
megapixel, and the validation (or, for shipped models, held-back) score of depth ``d``
from the checkpoint's metrics.
"Apply" emits :attr:`PruningPanel.apply_requested` with the depth: the owner re-segments
with ``PredictConfig(pruned_depth=d)`` (the fast path). "Save pruned model" writes the
pruned network with :func:`napari_unetpp.export.export_pruned` (the CLI's export too) and
registers it, so it appears under "just trained" and can be shared or used from the CLI.

The panel knows nothing of its owner: the owner hands it the model (``set_model``), the
device (``set_device``) and the output folder (``set_output_folder``), and listens to
``apply_requested``.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, PushButton, Slider
from napari.utils.notifications import show_error, show_info
from psygnal import Signal

from . import _state
from ._runner import JobRunner
from ._ui import wrapped

#: The slider must rest this long before its depth is timed (a drag times once).
TIMING_DELAY_MS = 400

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo
    from ..disagreement import DepthAdvice
    from ..model import UNetPlusPlus
    from ._jobs import JobQueue


def prune_job(
    model: UNetPlusPlus, depth: int, device: str
) -> Generator[Any, None, tuple[UNetPlusPlus, float, tuple[float, float]]]:
    """Build the depth-``depth`` network, count its GFLOP per megapixel (and the deepest's)
    and measure its ms per megapixel on ``device``.

    The count runs here, not on the GUI thread: its first call in a process (torch's FLOP
    counter on the meta device warming up) took 2-3.5 s, frozen into opening the dock.
    """
    from ..devices import resolve_device
    from ..events import Event
    from ..pruning import gflop_per_mpx, measure_ms_per_mpx

    yield Event("prune", 0, 2, f"building the L{depth} network")
    pruned = model.prune(depth).eval()
    gflop = gflop_per_mpx(model, depth), gflop_per_mpx(model, model.depth)
    yield Event("prune", 1, 2, f"timing L{depth}")
    ms = measure_ms_per_mpx(pruned, depth, device=resolve_device(device))
    return pruned, ms, gflop


class PruningPanel(Container):
    """Depth slider, cost/score readout, Apply and Save for the model the owner hands it.

    ``queue`` is the viewer's job queue, shared with the owner's jobs (one torch job at a
    time); ``apply_requested(depth)`` asks the owner to segment with the pruned network.
    """

    apply_requested = Signal(int)

    def __init__(self, queue: JobQueue | None = None) -> None:
        super().__init__(label="Pruning")
        self._runner = JobRunner(queue=queue, owner="prune")
        self.device = "auto"
        self.saved: Path | None = None  # the last pruned model saved from here
        self.output_folder = Path("~/napari-unetpp/predictions")
        self.model_name = "model"
        self.source = ""  # "zoo:<name>" or a checkpoint path: the saved model's provenance
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(TIMING_DELAY_MS)
        self._timer.timeout.connect(self._time_depth)
        self.model: UNetPlusPlus | None = None
        self.info: CheckpointInfo | None = None
        self.pruned: UNetPlusPlus | None = None
        self.ms_per_mpx: float | None = None
        self._gflop: dict[int, tuple[float, float]] = {}  # depth -> its and the deepest's
        self._busy = False  # the owner segments: slider and Apply stay locked
        self._depth = Slider(label="Depth", min=1, max=1, value=1, enabled=False)
        self._readout = wrapped("load a model to prune it")
        self.advice: DepthAdvice | None = None  # the depth advice of the last checked result
        self._advised_image = ""
        self._timing = ""
        self._apply = PushButton(text="Apply (segment at this depth)", enabled=False)
        self._save = PushButton(text="Save pruned model", enabled=False)
        # the buttons as rows of their own (buttons take no label column): in a nested
        # Container they sat behind an empty label column and made the dock 432 px wide
        self.extend([self._depth, self._readout, self._apply, self._save])
        self._depth.changed.connect(self._on_depth)
        self._apply.changed.connect(self.apply)
        self._save.changed.connect(lambda: self.save_pruned())

    def close_jobs(self) -> None:
        """Drop the timing (the dock was closed)."""
        self._timer.stop()
        self._runner.quit()

    @property
    def depth(self) -> int:
        """The depth the slider is at."""
        return int(self._depth.value)

    def set_model(
        self, model: UNetPlusPlus, info: CheckpointInfo, name: str = "model", source: str = ""
    ) -> None:
        """Show a newly loaded model (``name`` for saved folders, ``source`` for provenance);
        start at its recommended depth."""
        self.model, self.info, self.model_name, self.source = model, info, name, source
        self.advice = None  # another model's advice says nothing about this one
        self._gflop = {}
        heads = model.head_depths
        best = int(info.metrics.get("best_depth") or max(heads))
        with self._depth.changed.blocked():
            self._depth.min, self._depth.max = min(heads), max(heads)
            self._depth.value = best if best in heads else max(heads)
        self._save.enabled = True
        self.set_busy(self._busy)  # a model chosen mid-run leaves the slider locked
        self._on_depth()

    def set_device(self, device: str) -> None:
        """Time the pruned networks on ``device`` (the owner's choice) from now on."""
        self.device = str(device)

    def set_output_folder(self, folder: str | Path) -> None:
        """Where "Save pruned model" writes by default."""
        self.output_folder = Path(folder)

    def show_advice(self, advice: DepthAdvice | None, image_name: str) -> None:
        """Mark each depth with its agreement with the deepest on the last checked image
        (``disagreement.advise_depth``), and the depth that holds there."""
        self.advice, self._advised_image = advice, image_name
        if self.model is not None:
            self._text(self._timing)

    def _advice_line(self, d: int) -> str:
        """This depth on the user's image: how much of it labels as the deepest, and the
        depth to use there when the recommended one departs (one short line: the dock
        must fit a laptop screen)."""
        advice = self.advice
        if advice is None or d not in advice.agreement:
            return ""
        name = self._advised_image
        name = name if len(name) <= 24 else name[:23] + "\u2026"
        line = f"\non {name}: {100 * advice.agreement[d]:.1f}% as L{max(advice.agreement)}"
        if advice.departs:
            line += f"; use L{advice.suggested} here"
        return line

    def set_busy(self, busy: bool) -> None:
        """Disable Apply and the slider while the owner segments: the run's labels come
        from the depth it started with, and the slider must keep showing that depth."""
        self._busy = busy
        self._apply.enabled = not busy and self.model is not None
        heads = self.model.head_depths if self.model is not None else ()
        self._depth.enabled = not busy and len(heads) > 1

    def _score(self, depth: int) -> str:
        metrics = self.info.metrics if self.info is not None else {}
        row = (metrics.get("depths") or {}).get(str(depth)) or {}
        name = metrics.get("score_name", "iou")
        return "not measured" if row.get(name) is None else f"{name} {row[name]:.3f}"

    def _on_depth(self, _value: Any = None) -> None:
        if self.model is None:
            return
        self.pruned, self.ms_per_mpx = None, None
        self._text(f"L{self.depth}: timing on {self.device}...")
        self._runner.quit()  # a newer depth wins; the old timing is dropped (and waited for)
        if self._runner.inline:
            self._time_depth()
        else:
            self._timer.start()  # restarts: only the depth the slider rests at is timed

    def _time_depth(self) -> None:
        if self.model is None:
            return
        d, model = self.depth, self.model
        self._runner.quit()
        self._runner.start(
            prune_job(model, d, self.device),
            on_return=lambda result: self._on_pruned(d, result),
        )
        if self._runner.queued:  # a training (or segmenting) holds the viewer's torch jobs
            self._text(f"L{d}: timing waits for the UNet++ job running now")

    def _on_pruned(
        self, depth: int, result: tuple[UNetPlusPlus, float, tuple[float, float]]
    ) -> None:
        self._gflop[depth] = result[2]
        if depth != self.depth:  # the slider moved on meanwhile
            return
        self.pruned, self.ms_per_mpx = result[:2]
        self._text(f"{self.ms_per_mpx:.0f} ms per megapixel here")

    def _text(self, timing: str) -> None:
        assert self.model is not None
        self._timing = timing
        d, full = self.depth, self.model.num_parameters()
        pruned = self.model.num_parameters(d)
        metrics = self.info.metrics if self.info is not None else {}
        # shipped models are scored on held-back data, trained runs on their validation part
        # (never "held-back" for the user's data: a fine-tune's metrics carry no such split)
        split = (
            "held-back" if str(metrics.get("split", "")).startswith("held-back") else "validation"
        )
        score = self._score(d)
        if score == "not measured" and self._unvalidated():
            split, score = "no validation", "paint on more of the image for a score"
        self._readout.value = (
            f"L{d}: {pruned:,} of {full:,} parameters "
            f"({100 * pruned / full:.0f}%)\n{self._cost(d)}; {timing}\n"
            f"{split}: {score}{self._advice_line(d)}"
        )

    def _cost(self, d: int) -> str:
        """Exact GFLOP per megapixel of depth ``d`` (the same on every machine) and its share,
        once the timing job has counted them."""
        assert self.model is not None
        unit = "Mvoxel" if self.model.config.spatial_dims == 3 else "Mpx"
        if d not in self._gflop:
            return f"GFLOP/{unit}: counting"
        gflop, deepest = self._gflop[d]
        return f"{gflop:.1f} GFLOP/{unit} ({100 * gflop / deepest:.0f}% of L{self.model.depth})"

    def _unvalidated(self) -> bool:
        """Whether the model was trained with too few labels to validate on."""
        from ..train_data import NO_VALIDATION

        data = (self.info.provenance.get("data") or {}) if self.info is not None else {}
        return isinstance(data, dict) and data.get("validation") == NO_VALIDATION

    def apply(self, _value: Any = None) -> None:
        """Ask the owner to re-segment with the pruned network (labels layer only)."""
        self.apply_requested.emit(self.depth)

    def save_pruned(self, path: str | Path | None = None) -> Path | None:
        """Save the pruned network as a checkpoint (default: a new folder in the output
        folder) with :func:`export.export_pruned`; register it under "just trained"."""
        from ..export import export_pruned

        if self.model is None or self.info is None:
            show_error("load a model first")
            return None
        d = self.depth
        if path is None:
            base = self.output_folder.expanduser() / f"{self.model_name}-L{d}"
            path, n = base, 1
            while path.exists():
                path, n = base.with_name(f"{base.name}-{n}"), n + 1
        try:
            folder = export_pruned(self.model, self.info, d, path, source=self.source)
        except (ValueError, OSError) as exc:
            show_error(f"could not save the pruned model: {exc}")
            return None
        self.saved = folder  # the owner knows this registration for no training's
        _state.register_model(f"{self.model_name} L{d}", folder)
        show_info(f"pruned L{d} model saved to {folder}")
        return folder
